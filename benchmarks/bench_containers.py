"""The claim table's core rows in containers (BENCHMARKS.md section 6): nested against CRC(3), r dead workers,
each run once as containers on the compose bridge network (`docker compose up`, one container per worker)
and once as processes on loopback (`flexgc bench`'s LocalCluster), on identical delay realizations, in one
session. Reports mean latency and measured/ideal, where ideal is the model's decode instant on exactly the
delays the run injected (`analysis.ideal_latencies_ms`).

Needs a Docker engine with Compose v2 and the image built first (`docker compose build`, or the offline
build of deploy/README.md); run from the repository root:

    .venv/bin/python benchmarks/bench_containers.py [--workers 10] [--iterations 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from flexgc.bench import run_one
from flexgc.common.analysis import ideal_latencies_ms
from flexgc.common.codes import parse_code
from flexgc.common.delays import dead_slots, parse_delay

ROOT = Path(__file__).resolve().parents[1]


def _compose(project: str, env: dict[str, str], *args: str, timeout_s: float = 600) -> str:
    argv = ["docker", "compose", "-p", project, "-f", str(ROOT / "compose.yaml"), "--env-file", os.devnull, *args]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr[-2000:]}")
    return result.stdout


def run_in_containers(code_spec: str, n: int, delay: str, seed: int, iterations: int, samples: int,
                      features: int, image: str) -> dict[str, Any]:
    """One job as n + 1 containers; the stats of its run log, as `run_one` computes them for processes."""
    project = f"fgcbc{secrets.token_hex(3)}"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("FLEXGC_", "COMPOSE_"))},
           "FLEXGC_IMAGE": image, "FLEXGC_WORKERS": str(n), "FLEXGC_CODE": code_spec,
           "FLEXGC_ITERATIONS": str(iterations), "FLEXGC_DELAY": delay, "FLEXGC_DELAY_SEED": str(seed),
           "FLEXGC_SAMPLES": str(samples), "FLEXGC_FEATURES": str(features), "FLEXGC_DEADLINE_S": "5",
           "FLEXGC_CHECKPOINT_EVERY": "0", "FLEXGC_GRPC_HOST_PORT": "", "FLEXGC_METRICS_HOST_PORT": ""}
    try:
        t0 = time.monotonic()
        _compose(project, env, "up", "--detach", "--no-build")
        (master,) = [json.loads(line)["ID"] for line in _compose(project, env, "ps", "-a", "--format", "json",
                                                                   "master").splitlines() if line.strip()]
        out = subprocess.run(["docker", "wait", master], capture_output=True, text=True, timeout=600, check=True)
        wall_s = time.monotonic() - t0
        if out.stdout.strip() != "0":
            raise RuntimeError(f"{code_spec} / {delay}: master exit code {out.stdout.strip()}")
        volume = subprocess.run(["docker", "volume", "inspect", f"{project}_runs", "--format", "{{.Mountpoint}}"],
                                capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        records = [json.loads(line) for line in (Path(volume) / "demo" / "run.jsonl").read_text().splitlines()]
    finally:
        _compose(project, env, "down", "--volumes", "--timeout", "5")
    records = sorted((r for r in records if "iteration" in r), key=lambda r: r["iteration"])
    code, model = parse_code(code_spec, n), parse_delay(delay)
    ideal = ideal_latencies_ms(code, model, seed, [r["iteration"] for r in records])
    measured = np.array([r["latency_ms"] if r["outcome"] != "FAILED" else math.inf for r in records])
    ok = np.isfinite(measured) & np.isfinite(ideal)
    return {"code": code.spec, "delay": delay, "iterations": len(records),
            "failed": int((~np.isfinite(measured)).sum()), "mean_ms": float(measured[np.isfinite(measured)].mean()),
            "ideal_mean_ms": float(ideal[ok].mean()),
            "measured_over_ideal": float(measured[ok].mean() / ideal[ok].mean()), "wall_s": round(wall_s, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--delay", default="shifted-exp:a=1,mu=1,unit_s=0.6")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--r", default="0,2", help="dead workers, comma-separated")
    parser.add_argument("--codes", default="nested:levels=0,1,2,3;crc:s=3", help="semicolon-separated")
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--image", default="flexgc:local")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    n, rows = args.workers, []
    print(f"n={n}, {args.iterations} iterations, delay {args.delay}, seed {args.seed}, "
          f"logistic {args.samples}x{args.features}")
    print(f"{'r':>2} {'code':<24} {'where':<11} {'mean ms':>8} {'ideal ms':>9} {'meas/ideal':>10} {'failed':>6}")
    with tempfile.TemporaryDirectory(prefix="flexgc-bench-containers-") as tmp:
        for r in (int(x) for x in args.r.split(",")):
            dead = dead_slots(n, r, "random", args.seed)
            delay = args.delay + (f"/dead:workers={'+'.join(map(str, dead))}" if dead else "")
            for spec in args.codes.split(";"):
                loopback = run_one(spec, n, delay, args.seed, args.iterations, 5.0, Path(tmp), args.samples,
                                   args.features)
                containers = run_in_containers(spec, n, delay, args.seed, args.iterations, args.samples,
                                               args.features, args.image)
                for where, row in (("loopback", loopback), ("containers", containers)):
                    keys = ("code", "delay", "iterations", "failed", "mean_ms", "ideal_mean_ms", "measured_over_ideal")
                    rows.append({"r": r, "where": where, **{k: row[k] for k in keys}})
                    print(f"{r:>2} {spec:<24} {where:<11} {row['mean_ms']:8.1f} {row['ideal_mean_ms']:9.1f} "
                          f"{row['measured_over_ideal']:10.3f} {row['failed']:>6}", flush=True)
    by = {(row["r"], row["code"], row["where"]): row["mean_ms"] for row in rows}
    for r in sorted({row["r"] for row in rows}):
        for where in ("loopback", "containers"):
            codes = [c for (rr, c, w) in by if rr == r and w == where]
            nested = [c for c in codes if c.startswith("nested")]
            crc = [c for c in codes if c.startswith("crc")]
            if nested and crc:
                below = 1 - by[(r, nested[0], where)] / by[(r, crc[0], where)]
                print(f"r={r} {where}: nested {100 * below:.0f}% below CRC(3)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
