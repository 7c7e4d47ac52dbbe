"""Per-iteration coordination overhead with zero injected delay (issue 6, item 4).

    .venv/bin/python benchmarks/bench_overhead.py [--n 4,8,16,32] [--d 1000,1000000] [--json F]

For every (d, n) a real LocalCluster job runs (master and n workers as separate processes on
loopback, `delay=none`, code `uncoded` by default: every worker computes one partition and sends one
vector, the master waits for all n). The model is least squares with `features=d` and one sample per
partition, so the compute is negligible; vectors travel as float32 (d + 1 elements with the loss).
From the master's run log, after `--warmup` iterations:

    overhead = median(latency_ms) - median(compute_ms)

where compute_ms of an iteration is the largest per-worker partial-gradient time (the critical path).
Goals: d = 10^3: <= 2 ms at n = 8 and <= 5 ms at n = 32. d = 10^6: within 1.5x of the time the
iteration's bytes (params down + results up, from the run log) take at the raw loopback TCP rate,
measured in the same run (`bench_limits.tcp_rates`, 64 MiB transfers).

Also reported: the median of the slowest worker's task_sent_ms (the task waits for a worker's Ready: its
CancelAck, or its previous task_done chunk when it finished the whole task), first_byte_ms and last result_arrival_ms,
decode_ms, and the CPU time all processes spent per measured iteration (from /proc/<pid>/stat), so
what n worker processes cost on this machine's cores is visible.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from bench_limits import machine, set_malloc_env, tcp_rates

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_CTX = mp.get_context("spawn")


# ---------------------------------------------------------------------------------------------
# process accounting from /proc


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process (its threads included), or None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # fields 14 and 15 of proc(5)


def status(pid: int) -> dict[str, int] | None:
    """VmRSS, VmHWM (peak RSS) in kB and Threads of a live process."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = int(value.split()[0])
    return out


@dataclass
class ProcessWatch:
    """Latest /proc/<pid>/status of each live process, and the largest VmHWM (peak RSS) seen."""

    pids: dict[str, int]
    last: dict[str, dict[str, int]] = field(default_factory=dict)

    def sample(self) -> None:
        for name, pid in self.pids.items():
            s = status(pid)
            if s is None or "VmRSS" not in s:  # gone, or exiting (a zombie has no memory map)
                continue
            prev = self.last.get(name)
            if prev is not None:
                s["VmHWM"] = max(s.get("VmHWM", 0), prev.get("VmHWM", 0))
            self.last[name] = s

    def cpu(self) -> dict[str, float]:
        return {name: c for name, pid in self.pids.items() if (c := cpu_seconds(pid)) is not None}


def _lines(path: Path) -> int:
    try:
        with path.open("rb") as fh:
            return sum(1 for _ in fh)
    except OSError:
        return 0


# ---------------------------------------------------------------------------------------------
# one job


@dataclass
class Job:
    n: int
    d: int
    code: str
    records: list[dict[str, Any]]
    startup_s: float
    cpu_s_per_iteration: dict[str, float]      # master, workers (sum), wall
    memory: dict[str, dict[str, int]]          # process name -> VmRSS, Threads at the end of the measured
                                               # iterations; VmHWM: the peak seen over the job


def run_job(n: int, d: int, iterations: int, warmup: int, code: str = "uncoded", poll_s: float = 0.02,
            sample_s: float = 0.5, timeout_s: float = 1800.0, slots_per_process: int = 1, adapt: str = "off",
            rows_per_slot: int = 1) -> Job:
    """Run one LocalCluster job and watch its processes; returns the run log and the process figures.
    With `slots_per_process` > 1 the n slots run in ceil(n / K) `flexgc worker --slots K` processes."""
    import subprocess
    import sys

    from flexgc.common.config import master_config
    from flexgc.harness.local import LocalCluster
    from flexgc.master.accounting import read_run_log

    with tempfile.TemporaryDirectory(prefix="flexgc-overhead-") as tmp:
        runlog = Path(tmp) / "run.jsonl"
        cfg = master_config(host="127.0.0.1", port=0, workers=n, code=code, iterations=iterations,
                            model="least-squares", samples=n * rows_per_slot, features=d, dtype="float32",
                            out=tmp, checkpoint_every=0, delay="none", deadline_s=120.0, on_deadline="fail",
                            join_timeout_s=timeout_s, adapt=adapt)
        started = time.monotonic()
        procs: list[subprocess.Popen[bytes]] = []
        with LocalCluster(cfg) as cluster:
            cluster.start_master(timeout_s=120.0)
            if slots_per_process > 1:
                counts = [min(slots_per_process, n - j) for j in range(0, n, slots_per_process)]
                procs = [subprocess.Popen([sys.executable, "-m", "flexgc", "worker", "--master", cluster.target,
                                           "--worker-id", f"p{j}", "--slots", str(k), "--log-level", "WARNING"])
                         for j, k in enumerate(counts)]
            else:
                cluster.start_workers()
            assert cluster.master is not None and cluster.master.pid is not None
            pids = {"master": cluster.master.pid, **{f"worker-{s}": p.pid for s, p in cluster.workers.items()
                                                      if p.pid is not None},
                    **{f"workers-{j}": p.pid for j, p in enumerate(procs)}}
            watch = ProcessWatch(pids)
            first_record_s = None
            steady: dict[str, dict[str, int]] = {}
            begin: tuple[float, int, dict[str, float]] | None = None
            end: tuple[float, int, dict[str, float]] | None = None
            deadline = started + timeout_s
            # the run log lags two iterations behind (it waits for cancel acks), hence the -2
            next_sample = 0.0
            while cluster.master.is_alive() and time.monotonic() < deadline:
                lines = _lines(runlog)
                now = time.monotonic()
                if lines and first_record_s is None:
                    first_record_s = now - started
                if begin is None and lines >= warmup:
                    begin = (now, lines, watch.cpu())
                elif begin is not None and end is None and lines >= iterations - 2 and lines > begin[1]:
                    end = (now, lines, watch.cpu())
                    watch.sample()
                    steady = {k: dict(v) for k, v in watch.last.items()}  # every process still working
                if end is None and now >= next_sample:
                    watch.sample()
                    next_sample = now + sample_s
                cluster.master.join(poll_s)
            rc = cluster.wait_master(10.0)
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
            if rc != 0:
                raise RuntimeError(f"n={n} d={d}: master exit code {rc}")
        records = read_run_log(runlog)
    cpu: dict[str, float] = {}
    if begin is not None and end is not None and end[1] > begin[1]:
        done = end[1] - begin[1]
        common = [k for k in begin[2] if k in end[2]]
        cpu = {"master": (end[2]["master"] - begin[2]["master"]) / done,
               "workers": sum(end[2][k] - begin[2][k] for k in common if k != "master") / done,
               "wall": (end[0] - begin[0]) / done, "iterations": done}
    return Job(n, d, code, records, first_record_s or float("nan"), cpu, steady or watch.last)


# ---------------------------------------------------------------------------------------------
# floor: what one small message costs in grpc.aio on this machine


async def _echo_server(results: Any, stop: Any) -> None:
    import grpc

    from flexgc.common import transport

    async def echo(request_iterator: Any, context: Any) -> Any:
        async for data in request_iterator:
            yield data

    server = transport.aio_server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.stream_stream_rpc_method_handler(echo)}),))
    port = transport.bind(server, "127.0.0.1:0", transport.TlsConfig())
    await server.start()
    results.put(port)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, stop.wait, 600.0)
    await server.stop(1.0)


def _echo_server_main(results: Any, stop: Any) -> None:
    asyncio.run(_echo_server(results, stop))


async def _echo_client(port: int, rounds: int) -> tuple[list[float], float]:
    from flexgc.common import transport

    channel = transport.aio_channel(f"127.0.0.1:{port}", transport.TlsConfig())
    try:
        call = channel.stream_stream("/bench.Echo/Echo")()
        rtts = []
        cpu0 = time.process_time()
        for _ in range(rounds):
            t0 = time.perf_counter()
            await call.write(b"x" * 32)
            await call.read()
            rtts.append(time.perf_counter() - t0)
        cpu = time.process_time() - cpu0
        await call.done_writing()
        return rtts, cpu
    finally:
        await channel.close()


def grpc_pingpong(rounds: int) -> dict[str, float]:
    """One bidi stream, 32-byte messages echoed `rounds` times: round trip and CPU per message per side."""
    q, stop = _CTX.Queue(), _CTX.Event()
    server = _CTX.Process(target=_echo_server_main, args=(q, stop))
    server.start()
    try:
        port = q.get(timeout=60)
        assert server.pid is not None
        server_cpu0 = cpu_seconds(server.pid) or 0.0
        rtts, client_cpu = asyncio.run(_echo_client(port, rounds))
        server_cpu = (cpu_seconds(server.pid) or 0.0) - server_cpu0
    finally:
        stop.set()
        server.join(10)
        if server.is_alive():
            server.kill()
            server.join(5)
    # each side sends one message and receives one per round
    return {"rtt_us": statistics.median(rtts) * 1e6, "client_cpu_us_per_message": client_cpu / rounds / 2 * 1e6,
            "server_cpu_us_per_message": server_cpu / rounds / 2 * 1e6}


# ---------------------------------------------------------------------------------------------
# figures


def _q(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def figures(job: Job, warmup: int) -> dict[str, Any]:
    recs = [r for r in job.records if r["iteration"] >= warmup and r["outcome"] == "EXACT"]
    if not recs:
        raise RuntimeError(f"n={job.n} d={job.d}: no exact iteration after the warm-up")
    lat = [r["latency_ms"] for r in recs]
    sent = [r for r in recs if all(w["task_sent_ms"] is not None for w in r["workers"])]

    def worst(key: str) -> list[float]:
        # a coded job's cancelled workers may have sent nothing (first_byte_ms None)
        return [max((w[key] for w in r["workers"] if w[key] is not None), default=math.nan) for r in sent]

    compute = [max(sum(c for c in w["compute_ms"] if c is not None) for w in r["workers"]) for r in recs]
    arrivals = [max(x for w in r["workers"] for x in w["result_arrival_ms"] if x is not None) for r in recs]
    out = {
        "n": job.n, "d": job.d, "code": job.code, "iterations": len(recs),
        "latency_ms": statistics.median(lat), "latency_p10_ms": _q(lat, 10), "latency_p90_ms": _q(lat, 90),
        "compute_ms": statistics.median(compute),
        "overhead_ms": statistics.median(lat) - statistics.median(compute),
        "task_sent_max_ms": statistics.median(worst("task_sent_ms")) if sent else None,
        "first_byte_max_ms": statistics.median(worst("first_byte_ms")) if sent else None,
        "last_arrival_ms": statistics.median(arrivals),
        "decode_ms": statistics.median([r["decode_ms"] for r in recs]),
        "bytes": statistics.median([r["bytes_up"] + r["bytes_down"] for r in recs]),
        "startup_s": job.startup_s,
        "cpu_ms_per_iteration": {k: v * 1e3 for k, v in job.cpu_s_per_iteration.items() if k != "iterations"},
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="4,8,16,32", help="worker counts")
    parser.add_argument("--d", default="1000,1000000", help="gradient lengths")
    parser.add_argument("--code", default="uncoded")
    parser.add_argument("--iterations", type=int, default=0,
                        help="iterations per job (0: 200 for d <= 10^4, else 16)")
    parser.add_argument("--warmup", type=int, default=3, help="first iterations left out")
    parser.add_argument("--repeats", type=int, default=1,
                        help="jobs per (d, n); the row shown is the job with the median overhead")
    parser.add_argument("--tcp-repeats", type=int, default=5)
    parser.add_argument("--pingpong", type=int, default=2000, help="grpc.aio echo round trips (0: skip)")
    parser.add_argument("--malloc", choices=("on", "off"), default="on")
    parser.add_argument("--slots-per-process", type=int, default=1,
                        help="worker slots per worker process (flexgc worker --slots K; 1: a process each)")
    parser.add_argument("--adapt", default="off", help="the master's --adapt (BENCHMARKS.md §10: its CPU cost)")
    parser.add_argument("--rows-per-slot", type=int, default=1,
                        help="rows of the dataset per worker slot (>= 4 with --adapt: k = 4n partitions)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    ns = [int(x) for x in args.n.split(",")]
    ds = [int(x) for x in args.d.split(",")]
    set_malloc_env(args.malloc == "on")
    report: dict[str, Any] = {"machine": machine(), "args": vars(args), "rows": []}
    print(f"machine: {report['machine']}")
    if args.pingpong:
        floor = [grpc_pingpong(args.pingpong) for _ in range(3)]
        report["grpc_pingpong"] = {k: statistics.median(f[k] for f in floor) for k in floor[0]}
        f = report["grpc_pingpong"]
        print(f"grpc.aio floor (median of 3 x {args.pingpong} round trips, 32-byte messages): round trip "
              f"{f['rtt_us']:.0f} us; CPU per message sent+received: client {f['client_cpu_us_per_message']:.0f} us,"
              f" server {f['server_cpu_us_per_message']:.0f} us", flush=True)
    tcp_Bps = None
    if any(d > 10_000 for d in ds):
        tcp = [statistics.median(tcp_rates(64 << 20, 4)[1:]) for _ in range(args.tcp_repeats)]
        tcp_Bps = statistics.median(tcp)
        report["tcp_GBps"] = {"median": tcp_Bps / 1e9, "min": min(tcp) / 1e9, "max": max(tcp) / 1e9}
        print(f"raw loopback TCP: {tcp_Bps / 1e9:.2f} GB/s (median of {len(tcp)}, "
              f"{min(tcp) / 1e9:.2f}..{max(tcp) / 1e9:.2f})", flush=True)
    for d in ds:
        iterations = args.iterations or (200 if d <= 10_000 else 16)
        print(f"\nd={d} code={args.code} float32, {iterations} iterations, first {args.warmup} dropped")
        print(" n  latency_ms (p10..p90)  compute_ms  overhead_ms  goal          task_sent  first_byte  last_arr"
              "  decode  MB/it  cpu_ms/it master+workers (wall)  startup_s")
        for n in ns:
            rows = [figures(run_job(n, d, iterations, args.warmup, args.code,
                                    slots_per_process=args.slots_per_process, adapt=args.adapt,
                                    rows_per_slot=args.rows_per_slot), args.warmup)
                    for _ in range(args.repeats)]
            row = min(rows, key=lambda r: abs(r["overhead_ms"] - statistics.median(x["overhead_ms"] for x in rows)))
            row["repeats_overhead_ms"] = [x["overhead_ms"] for x in rows]  # the row shown is the median job
            if d > 10_000 and tcp_Bps:
                row["transfer_ms"] = row["bytes"] / tcp_Bps * 1e3
                row["goal_ms"] = 1.5 * row["transfer_ms"]
            elif d <= 10_000:
                row["goal_ms"] = {8: 2.0, 32: 5.0}.get(n)
            goal = row.get("goal_ms")
            row["goal_met"] = None if goal is None else row["overhead_ms"] <= goal
            report["rows"].append(row)
            cpu = row["cpu_ms_per_iteration"]
            goal_text = "-" if goal is None else f"<={goal:.1f} {'met' if row['goal_met'] else 'MISSED'}"
            print(f"{n:2d}  {row['latency_ms']:8.2f} ({row['latency_p10_ms']:.1f}..{row['latency_p90_ms']:.1f})"
                  f"  {row['compute_ms']:8.2f}  {row['overhead_ms']:10.2f}  {goal_text:13s}"
                  f"  {row['task_sent_max_ms'] or float('nan'):8.2f}  {row['first_byte_max_ms'] or float('nan'):9.2f}"
                  f"  {row['last_arrival_ms']:8.2f}  {row['decode_ms']:6.3f}  {row['bytes'] / 1e6:6.1f}"
                  f"  {cpu.get('master', float('nan')):7.1f} + {cpu.get('workers', float('nan')):7.1f}"
                  f" ({cpu.get('wall', float('nan')):.1f})  {row['startup_s']:6.1f}"
                  + (f"  overhead of {len(rows)} jobs: {min(row['repeats_overhead_ms']):.2f}.."
                     f"{max(row['repeats_overhead_ms']):.2f}" if len(rows) > 1 else "")
                  + f"  per worker-iteration: master {1e3 * cpu.get('master', float('nan')) / n:.0f} us, "
                    f"worker {1e3 * cpu.get('workers', float('nan')) / n:.0f} us", flush=True)
    report["machine"]["loadavg_1m_end"] = os.getloadavg()[0]
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
