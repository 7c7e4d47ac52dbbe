"""`flexgc soak`: a long job with a random fault every few iterations, checking every gradient.

The master runs in verify mode (each decoded gradient is compared with a direct computation on the
same parameters), the faults are SIGKILL + restart, SIGSTOP ... SIGCONT, and a slow worker (restarted
with a large injected delay), at most one fault active at a time so the code (s_max >= 1) always has
enough workers. The master's thread count, open file descriptors and RSS are sampled at start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

from flexgc.common.config import master_config
from flexgc.harness.local import LocalCluster
from flexgc.master.accounting import read_run_log


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


def run_soak(iterations: int, n: int, code: str, out: Path, fault_every: int, seed: int,
             timeout_s: float, progress: bool = True) -> dict[str, Any]:
    rng = random.Random(seed)
    cfg = master_config(host="127.0.0.1", port=0, workers=n, code=code, iterations=iterations, out=str(out),
                        samples=2_000, features=20, verify=True, checkpoint_every=0, deadline_s=20.0,
                        on_deadline="fail", delay="shifted-exp:a=1,mu=5,unit_s=0.004", join_timeout_s=60.0)
    faults: dict[str, int] = {"kill": 0, "stop": 0, "slow": 0}
    deadline = time.monotonic() + timeout_s
    with LocalCluster(cfg) as cluster:
        cluster.start_master()
        cluster.start_workers()
        assert cluster.master is not None and cluster.master.pid is not None
        while _records(out) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # the master writes the run log; polling it is the condition we wait on
        start_stats = proc_stats(cluster.master.pid)
        next_fault = _records(out) + fault_every
        active: tuple[str, int, int] | None = None  # (kind, slot, heal at iteration)
        end_stats, shown = start_stats, -1
        while cluster.master.is_alive() and time.monotonic() < deadline:
            done = _records(out)
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
        rc = cluster.wait_master(60)
    summary = json.loads((out / "summary.json").read_text())
    records = read_run_log(out / "run.jsonl")
    errors = [r["verify_rel_err"] for r in records if r["verify_rel_err"] is not None]
    wrong = sum(e > 1e-9 for e in errors)
    return {"iterations": len(records), "exit_code": rc, "faults": faults, "master_start": start_stats,
            "master_end": end_stats, "wrong_gradients": wrong, "verified": len(errors),
            "max_verify_rel_err": max(errors) if errors else None,
            "outcomes": {k: sum(r["outcome"] == k for r in records) for k in ("EXACT", "APPROXIMATE", "FAILED")},
            "latency_ms_median": summary["latency_ms"]["median"], "wall_s": summary["wall_s"]}


def register(sub: Any) -> None:
    p = sub.add_parser("soak", help="long job with random faults; every gradient verified")
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--code", default="nested:levels=0,1,2,3")
    p.add_argument("--fault-every", type=int, default=5, help="iterations between faults")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout-s", type=float, default=3600.0)
    p.add_argument("--out", default="runs/soak")
    p.set_defaults(handler=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("run.jsonl", "checkpoint.npz"):
        (out / stale).unlink(missing_ok=True)
    result = run_soak(args.iterations, args.workers, args.code, out, args.fault_every, args.seed, args.timeout_s)
    print(json.dumps(result, indent=2))
    return 0 if result["wrong_gradients"] == 0 and result["exit_code"] == 0 else 1
