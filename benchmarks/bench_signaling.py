"""Push against notify signaling under tbf rate limits on every worker's uplink (BENCHMARKS.md §2).

Needs root (network namespaces, tc). Each run is a real job across namespaces started from
the repository's compose.yaml (`flexgc.harness.cluster`), with every worker's uplink shaped by FLEXGC_TC_RATE, and the
same seeded delays for both signalings. Reports median / mean iteration latency and the bytes uploaded
per iteration.

    sudo .venv/bin/python benchmarks/bench_signaling.py [--rates 20mbit,100mbit,none] [--iterations 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from flexgc.harness.cluster import NetnsCluster
from flexgc.harness.topology import probe

COMPOSE = Path(__file__).resolve().parents[1] / "compose.yaml"


def run(signaling: str, rate: str, iterations: int, features: int, classes: int, unit_s: float) -> dict[str, float]:
    variables = {
        "FLEXGC_CODE": f"nested:levels=0,1,2,signaling={signaling}", "FLEXGC_ITERATIONS": str(iterations),
        "FLEXGC_MODEL": "softmax", "FLEXGC_FEATURES": str(features), "FLEXGC_SAMPLES": "2000",
        "FLEXGC_DTYPE": "float32", "FLEXGC_DELAY": f"shifted-exp:a=1,mu=1,unit_s={unit_s}",
        "FLEXGC_DEADLINE_S": "60",
    }
    worker_env = {"FLEXGC_TC_RATE": rate} if rate != "none" else {}
    with tempfile.TemporaryDirectory(prefix="fgc-bench-sig-") as tmp, \
            NetnsCluster(COMPOSE, variables=variables, env={"master": {"FLEXGC_CLASSES": str(classes),
                                                                    "FLEXGC_CHECKPOINT_EVERY": "0"}},
                               worker_env=worker_env, run_dir=Path(tmp) / "run", prefix="fgcbs") as cluster:
        cluster.start(timeout_s=90)
        rc = cluster.wait_master(timeout_s=600)
        records = cluster.run_log()
    if rc != 0:
        raise RuntimeError(f"{signaling} at {rate}: master exit code {rc}")
    lat = [r["latency_ms"] for r in records if r["outcome"] == "EXACT"]
    return {"median_ms": statistics.median(lat), "mean_ms": statistics.fmean(lat),
            "bytes_up_per_iteration_mb": statistics.fmean(r["bytes_up"] for r in records) / 1e6,
            "iterations": len(records)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="20mbit,100mbit,none")
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--features", type=int, default=2500, help="softmax features; d = features x classes")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--unit-s", type=float, default=1.0, help="seconds per model time unit")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    caps = probe()
    if caps.reason is not None:
        raise SystemExit(f"bench_signaling: network namespaces unavailable: {caps.reason}")
    d = args.features * args.classes
    print(f"n=4 nested:levels=0,1,2, d={d} float32 ({4 * d / 1e6:.1f} MB per coded vector), "
          f"delay shifted-exp:a=1,mu=1,unit_s={args.unit_s}, {args.iterations} iterations per run")
    print(f"{'uplink rate':>12} {'signaling':>9} {'median ms':>10} {'mean ms':>9} {'MB up/iter':>11}")
    results = []
    for rate in args.rates.split(","):
        for signaling in ("push", "notify"):
            r = run(signaling, rate, args.iterations, args.features, args.classes, args.unit_s)
            results.append({"rate": rate, "signaling": signaling, **r})
            print(f"{rate:>12} {signaling:>9} {r['median_ms']:10.1f} {r['mean_ms']:9.1f} "
                  f"{r['bytes_up_per_iteration_mb']:11.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
