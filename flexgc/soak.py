"""`flexgc soak`: a long job with a random fault every few iterations, checking every gradient.

The master runs in verify mode (each decoded gradient is compared with a direct computation on the
same parameters), the faults are SIGKILL + restart, SIGSTOP ... SIGCONT, and a slow worker (restarted
with a large injected delay), at most one fault active at a time so the code (s_max >= 1) always has
enough workers. The master's thread count, open file descriptors and RSS are sampled at start and end.

With `adversary`, a hostile client runs beside the job the whole time (a thread, a bounded rate): Work
streams without the job's token each carrying a 15 MiB message, Joins under ever new ids that never open
a stream (slot squatting), and streams with the token but malformed first messages. Every one must be
refused with a status; the job's gradients stay exact and the master's resources bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from flexgc.common.config import master_config
from flexgc.harness.local import LocalCluster
from flexgc.master.accounting import read_run_log
from flexgc.master.rundir import RunDir, job_identity


def proc_stats(pid: int) -> dict[str, int]:
    """Threads, open fds and RSS (kB) of a process, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Threads", "VmRSS"):
            fields[key] = int(value.split()[0])
    return {"threads": fields.get("Threads", -1), "rss_kb": fields.get("VmRSS", -1),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def _records(out: Path) -> int:
    path = out / "run.jsonl"
    if not path.exists():
        return 0
    with path.open("rb") as fh:
        return sum(1 for _ in fh)


class Adversary(threading.Thread):
    """Hostile traffic against a master at `target` until stopped (module docstring); counts the statuses."""

    def __init__(self, target: str, token: str, seed: int, period_s: float = 0.05) -> None:
        super().__init__(name="adversary", daemon=True)
        self.target, self.token, self.period_s = target, token, period_s
        self.rng = random.Random(seed)
        self.halt = threading.Event()
        self.statuses: Counter[str] = Counter()
        self.error: BaseException | None = None

    def run(self) -> None:
        import grpc

        from flexgc.common import transport, wire
        from flexgc.v1 import coordinator_pb2 as pb
        from flexgc.v1 import coordinator_pb2_grpc as pb_grpc

        big = pb.WorkerMessage(result=pb.ResultChunk(iteration=0, slot=0, level=0, dtype="<f8",
                                                     total_elements=21, data=b"\0" * (15 << 20), last=True))
        garbage = [pb.WorkerMessage(), pb.WorkerMessage(ready=pb.Ready(after_iteration=-1)),
                   pb.WorkerMessage(hello=pb.Hello(slot=0, session_id="0" * 32, worker_id="eve"))]
        channel = grpc.insecure_channel(self.target, options=transport.channel_options(32 << 20))
        stub = pb_grpc.CoordinatorStub(channel)
        counter = 0
        try:
            while not self.halt.wait(self.period_s):
                counter += 1
                kind = self.rng.choice(("unauthenticated", "squat", "malformed"))
                try:
                    if kind == "unauthenticated":
                        for _ in stub.Work(iter([big]), timeout=10, metadata=wire.token_metadata("guess")):
                            pass
                    elif kind == "squat":
                        stub.Join(pb.JoinRequest(worker_id=f"squatter-{counter}", preferred_slot=-1), timeout=10,
                                  metadata=wire.token_metadata(self.token))
                    else:
                        first = self.rng.choice(garbage)
                        for _ in stub.Work(iter([first]), timeout=10, metadata=wire.token_metadata(self.token)):
                            pass
                    self.statuses[f"{kind}:OK"] += 1
                except grpc.RpcError as exc:
                    self.statuses[f"{kind}:{exc.code().name}"] += 1  # type: ignore[attr-defined]
        except BaseException as exc:  # reported to the caller, which fails the soak
            self.error = exc
        finally:
            channel.close()


def run_soak(iterations: int, n: int, code: str, out: Path, fault_every: int, seed: int,
             timeout_s: float, progress: bool = True, adversary: bool = False) -> dict[str, Any]:
    rng = random.Random(seed)
    token = f"soak-{seed}-{os.getpid()}"
    cfg = master_config(host="127.0.0.1", port=0, workers=n, code=code, iterations=iterations, out=str(out),
                        samples=2_000, features=20, verify=True, checkpoint_every=0, deadline_s=20.0,
                        on_deadline="fail", delay="shifted-exp:a=1,mu=5,unit_s=0.004", join_timeout_s=60.0,
                        token=token, linger=True)
    # linger: a worker the soak restarts as the job ends finds a master that says "finished" (and exits
    # 0) rather than a closed port it would retry; the soak ends the master once its workers are gone
    RunDir(out).clear_own_run(job_identity(cfg))  # a soak starts fresh, but never over another job's run
    hostile: Adversary | None = None
    faults: dict[str, int] = {"kill": 0, "stop": 0, "slow": 0}
    deadline = time.monotonic() + timeout_s
    with LocalCluster(cfg) as cluster:
        cluster.start_master()
        cluster.start_workers()
        assert cluster.master is not None and cluster.master.pid is not None
        while _records(out) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # the master writes the run log; polling it is the condition we wait on
        start_stats = proc_stats(cluster.master.pid)
        if adversary:
            hostile = Adversary(cluster.target, token, seed)
            hostile.start()
        next_fault = _records(out) + fault_every
        active: tuple[str, int, int] | None = None  # (kind, slot, heal at iteration)
        end_stats, shown = start_stats, -1
        summary_file = out / "summary.json"
        while cluster.master.is_alive() and not summary_file.exists() and time.monotonic() < deadline:
            done = _records(out)
            if hostile is not None and done >= iterations - 5 and hostile.is_alive():
                hostile.halt.set()  # done while the master still serves: every hostile call gets its status
                hostile.join(30)
            if done < iterations:  # the last sample taken while the job still runs
                try:
                    end_stats = proc_stats(cluster.master.pid)
                except OSError:
                    pass
            if progress and done != shown and done % 50 == 0:
                shown = done
                print(f"soak: {done}/{iterations} iterations, faults {faults}, master {end_stats}", file=sys.stderr)
            if active is not None and done >= active[2]:
                kind, slot, _ = active
                if kind == "stop":
                    cluster.signal_worker(slot, signal.SIGCONT)
                else:  # kill or slow: bring back a normal worker for the slot
                    cluster.signal_worker(slot, signal.SIGKILL)
                    cluster.workers[slot].join(10)
                    cluster.start_worker(slot)
                active = None
                next_fault = done + fault_every
            elif active is None and done >= next_fault:
                kind = rng.choice(("kill", "stop", "slow"))
                slot = rng.randrange(n)
                faults[kind] += 1
                if kind == "kill":
                    cluster.signal_worker(slot, signal.SIGKILL)
                elif kind == "stop":
                    cluster.signal_worker(slot, signal.SIGSTOP)
                else:
                    cluster.signal_worker(slot, signal.SIGKILL)
                    cluster.workers[slot].join(10)
                    cluster.start_worker(slot, delay="shifted-exp:a=1,mu=5,unit_s=0.004/slow:workers="
                                         f"{slot},factor=20")
                active = (kind, slot, done + rng.randint(1, 3))
            time.sleep(0.02)
        if active is not None and active[0] == "stop":
            cluster.signal_worker(active[1], signal.SIGCONT)
        if hostile is not None:
            hostile.halt.set()
            hostile.join(30)
        for process in cluster.workers.values():  # each told the job is over, by Shutdown or at its join
            process.join(max(0.0, deadline - time.monotonic()))
        if cluster.master.is_alive():
            cluster.signal_master(signal.SIGTERM)  # ends its linger
        rc = cluster.wait_master(60)
    summary = json.loads((out / "summary.json").read_text())
    records = read_run_log(out / "run.jsonl")
    errors = [r["verify_rel_err"] for r in records if r["verify_rel_err"] is not None]
    wrong = sum(e > 1e-9 for e in errors)
    return {"iterations": len(records), "exit_code": rc, "faults": faults, "master_start": start_stats,
            "master_end": end_stats, "wrong_gradients": wrong, "verified": len(errors),
            "max_verify_rel_err": max(errors) if errors else None,
            "outcomes": {k: sum(r["outcome"] == k for r in records) for k in ("EXACT", "APPROXIMATE", "FAILED")},
            "latency_ms_median": summary["latency_ms"]["median"], "wall_s": summary["wall_s"],
            "adversary": None if hostile is None else {"statuses": dict(hostile.statuses),
                                                       "error": None if hostile.error is None else
                                                       repr(hostile.error)}}


def register(sub: Any) -> None:
    p = sub.add_parser("soak", help="long job with random faults; every gradient verified")
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--code", default="nested:levels=0,1,2,3")
    p.add_argument("--fault-every", type=int, default=5, help="iterations between faults")
    p.add_argument("--seed", type=int, default=0, help="seed of the faults")
    p.add_argument("--timeout-s", type=float, default=3600.0, help="give up after this long")
    p.add_argument("--out", default="runs/soak", help="run directory")
    p.add_argument("--adversary", action="store_true",
                   help="run a hostile client beside the job (unauthenticated 15 MiB messages, squatting joins, "
                        "malformed streams)")
    p.set_defaults(handler=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    out = Path(args.out)
    result = run_soak(args.iterations, args.workers, args.code, out, args.fault_every, args.seed, args.timeout_s,
                      adversary=args.adversary)
    print(json.dumps(result, indent=2))
    return 0 if result["wrong_gradients"] == 0 and result["exit_code"] == 0 else 1
