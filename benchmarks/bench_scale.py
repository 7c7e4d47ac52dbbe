"""Scale: n = 64 worker processes on this machine (issue 6, item 5).

    .venv/bin/python benchmarks/bench_scale.py [--n 64] [--d 1000,1000000] [--json F]

Runs the same LocalCluster job as bench_overhead.py (uncoded, `delay=none`, least squares with
`features=d`, one sample per partition, float32 on the wire) with n workers, and reports the latency
overhead (median latency_ms - median compute_ms after the warm-up) next to the memory of every
process, read from /proc/<pid>/status while the job runs: VmRSS (resident now, sampled until the
process exits), VmHWM (peak resident) and Threads, for the master and per worker (median and max over
the n workers). Startup is the time from spawning the master to the first run-log record (n
processes importing numpy and grpc on the machine's cores, joining, building their partitions).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from typing import Any

from bench_limits import machine, set_malloc_env
from bench_overhead import figures, run_job


def memory_table(memory: dict[str, dict[str, int]]) -> dict[str, Any]:
    workers = [v for k, v in memory.items() if k.startswith("worker-")]
    master = memory.get("master", {})

    def col(key: str) -> dict[str, float]:
        values = [w[key] for w in workers if key in w]
        if not values:
            return {}
        return {"median": statistics.median(values), "max": max(values), "sum": sum(values)}

    return {"master": master, "workers_seen": len(workers), "worker_VmRSS_kB": col("VmRSS"),
            "worker_VmHWM_kB": col("VmHWM"), "worker_Threads": col("Threads")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="64")
    parser.add_argument("--d", default="1000,1000000")
    parser.add_argument("--iterations", type=int, default=0, help="0: 100 for d <= 10^4, else 10")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--malloc", choices=("on", "off"), default="on")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    set_malloc_env(args.malloc == "on")
    report: dict[str, Any] = {"machine": machine(), "args": vars(args), "rows": []}
    print(f"machine: {report['machine']}")
    print(" n        d  latency_ms (p10..p90)  overhead_ms  MB/it  cpu_ms/it master+workers (wall)  startup_s"
          "  master RSS/peak MB thr  worker RSS med/max MB  peak med/max MB  thr  workers total RSS MB")
    for n in (int(x) for x in args.n.split(",")):
        for d in (int(x) for x in args.d.split(",")):
            iterations = args.iterations or (100 if d <= 10_000 else 10)
            job = run_job(n, d, iterations, args.warmup)
            row = figures(job, args.warmup)
            row["memory"] = memory_table(job.memory)
            report["rows"].append(row)
            mem, cpu = row["memory"], row["cpu_ms_per_iteration"]
            master = mem["master"]
            rss, hwm, thr = mem["worker_VmRSS_kB"], mem["worker_VmHWM_kB"], mem["worker_Threads"]
            print(f"{n:2d} {d:8d}  {row['latency_ms']:8.2f} ({row['latency_p10_ms']:.1f}..{row['latency_p90_ms']:.1f})"
                  f"  {row['overhead_ms']:10.2f}  {row['bytes'] / 1e6:5.1f}"
                  f"  {cpu.get('master', float('nan')):7.1f} + {cpu.get('workers', float('nan')):7.1f}"
                  f" ({cpu.get('wall', float('nan')):.1f})  {row['startup_s']:8.1f}"
                  f"  {master.get('VmRSS', 0) / 1024:6.0f}/{master.get('VmHWM', 0) / 1024:5.0f}"
                  f" {master.get('Threads', 0):3d}"
                  f"  {rss.get('median', 0) / 1024:8.0f}/{rss.get('max', 0) / 1024:5.0f}"
                  f"  {hwm.get('median', 0) / 1024:8.0f}/{hwm.get('max', 0) / 1024:5.0f}"
                  f"  {thr.get('median', 0):3.0f}  {rss.get('sum', 0) / 1024:8.0f}"
                  f"  (seen {mem['workers_seen']})", flush=True)
    report["machine"]["loadavg_1m_end"] = os.getloadavg()[0]
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
