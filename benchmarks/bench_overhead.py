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

Also reported: the median of the slowest worker's task_sent_ms (the task waits for a worker's Ready,
which follows the previous iteration's Cancel/CancelAck), first_byte_ms and last result_arrival_ms,
decode_ms, and the CPU time all processes spent per measured iteration (from /proc/<pid>/stat), so
what n worker processes cost on this machine's cores is visible.
"""

from __future__ import annotations

import argparse
import json
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
            sample_s: float = 0.5, timeout_s: float = 1800.0) -> Job:
    """Run one LocalCluster job and watch its processes; returns the run log and the process figures."""
    from flexgc.cluster import LocalCluster
    from flexgc.common.config import master_config

    with tempfile.TemporaryDirectory(prefix="flexgc-overhead-") as tmp:
        runlog = Path(tmp) / "run.jsonl"
        cfg = master_config(host="127.0.0.1", port=0, workers=n, code=code, iterations=iterations,
                            model="least-squares", samples=n, features=d, dtype="float32", out=tmp,
                            checkpoint_every=0, delay="none", deadline_s=120.0, on_deadline="fail",
                            join_timeout_s=timeout_s)
        started = time.monotonic()
        with LocalCluster(cfg) as cluster:
            cluster.start_master(timeout_s=120.0)
            cluster.start_workers()
            assert cluster.master is not None and cluster.master.pid is not None
            pids = {"master": cluster.master.pid, **{f"worker-{s}": p.pid for s, p in cluster.workers.items()
                                                      if p.pid is not None}}
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
            if rc != 0:
                raise RuntimeError(f"n={n} d={d}: master exit code {rc}")
        records = [json.loads(line) for line in runlog.read_text().splitlines()]
    cpu: dict[str, float] = {}
    if begin is not None and end is not None and end[1] > begin[1]:
        done = end[1] - begin[1]
        common = [k for k in begin[2] if k in end[2]]
        cpu = {"master": (end[2]["master"] - begin[2]["master"]) / done,
               "workers": sum(end[2][k] - begin[2][k] for k in common if k != "master") / done,
               "wall": (end[0] - begin[0]) / done, "iterations": done}
    return Job(n, d, code, records, first_record_s or float("nan"), cpu, steady or watch.last)


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
        return [max(w[key] for w in r["workers"]) for r in sent]

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
                        help="iterations per job (0: 60 for d <= 10^4, else 16)")
    parser.add_argument("--warmup", type=int, default=3, help="first iterations left out")
    parser.add_argument("--tcp-repeats", type=int, default=5)
    parser.add_argument("--malloc", choices=("on", "off"), default="on")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    ns = [int(x) for x in args.n.split(",")]
    ds = [int(x) for x in args.d.split(",")]
    set_malloc_env(args.malloc == "on")
    report: dict[str, Any] = {"machine": machine(), "args": vars(args), "rows": []}
    print(f"machine: {report['machine']}")
    tcp_Bps = None
    if any(d > 10_000 for d in ds):
        tcp = [statistics.median(tcp_rates(64 << 20, 4)[1:]) for _ in range(args.tcp_repeats)]
        tcp_Bps = statistics.median(tcp)
        report["tcp_GBps"] = {"median": tcp_Bps / 1e9, "min": min(tcp) / 1e9, "max": max(tcp) / 1e9}
        print(f"raw loopback TCP: {tcp_Bps / 1e9:.2f} GB/s (median of {len(tcp)}, "
              f"{min(tcp) / 1e9:.2f}..{max(tcp) / 1e9:.2f})", flush=True)
    for d in ds:
        iterations = args.iterations or (60 if d <= 10_000 else 16)
        print(f"\nd={d} code={args.code} float32, {iterations} iterations, first {args.warmup} dropped")
        print(" n  latency_ms (p10..p90)  compute_ms  overhead_ms  goal          task_sent  first_byte  last_arr"
              "  decode  MB/it  cpu_ms/it master+workers (wall)  startup_s")
        for n in ns:
            row = figures(run_job(n, d, iterations, args.warmup, args.code), args.warmup)
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
                  f" ({cpu.get('wall', float('nan')):.1f})  {row['startup_s']:6.1f}", flush=True)
    report["machine"]["loadavg_1m_end"] = os.getloadavg()[0]
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
