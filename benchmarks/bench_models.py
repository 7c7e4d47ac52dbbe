"""BENCHMARKS.md §8: a JAX CNN on scikit-learn's digits under injected delays, per code and dead workers r.

    ./dev.sh bench models [--iterations 30] [--workers 8] [--out runs/bench-models]

For each code (nested:levels=0..s_max, crc:s=s_max, uncoded) and r in {0, 2} dead workers, a live
cluster (`flexgc.bench.run_one`: a master and n worker processes on loopback, the same delay seed for
every code) trains ``jax-cnn`` (d = 85,066) on 80% of digits with Adam, keeping the parameters of every
iteration (``--snapshot-every 1``). From each run: the live mean latency against the model's ideal on
the same delays, the compute time of one partition (one jitted value_and_grad) and the share of an
iteration a worker spent computing, and time-to-accuracy: the first iteration whose parameters reach
the target accuracy on the held-out 20%, and the wall-clock seconds to it (snapshot file times, from the
start of iteration 0). Every code trains on exact gradients, so they reach the target at the same
iteration; the seconds differ. Also measured in process: one partition's gradient, i.e. the longest
a Cancel waits (a jitted gradient is one compute chunk).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from flexgc.bench import run_one
from flexgc.common.codes import parse_code
from flexgc.common.delays import dead_slots
from flexgc.common.models import DataSpec, accuracy, build_model, load_dataset

MODEL = "jax-cnn"           # channels=32, hidden=64: d = 85,066
OPTIMIZER = "adam:lr=3e-3"


def _split(workdir: Path, seed: int) -> tuple[Path, np.ndarray, np.ndarray]:
    X, y = load_dataset("sklearn:digits", MODEL)
    perm = np.random.default_rng(seed).permutation(y.size)
    test, train = perm[: y.size // 5], perm[y.size // 5:]
    path = workdir / "digits-train.npz"
    np.savez(path, X=X[train], y=y[train])
    return path, X[test], y[test]


def _partition_ms(train: Path, n: int, repeats: int = 20) -> dict[str, float]:
    """One partition's loss and gradient, in this process on one XLA thread: compile, then steady state."""
    with np.load(train) as f:
        X, y = f["X"], f["y"]
    spec = DataSpec(model=MODEL, source="master", samples=y.size, features=X.shape[1], classes=10, partitions=n)
    model = build_model(spec)
    a, b = spec.partition_bounds(0)
    w = model.init_params(0)
    t0 = time.perf_counter()
    model.loss_and_grad(w, X[a:b], y[a:b])
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.loss_and_grad(w, X[a:b], y[a:b])
        times.append((time.perf_counter() - t0) * 1e3)
    return {"rows": b - a, "d": model.d, "first_call_s": compile_s, "median_ms": statistics.median(times),
            "p90_ms": float(np.percentile(times, 90))}


def _time_to_accuracy(out: Path, records: list[dict[str, Any]], model: Any, X: np.ndarray, y: np.ndarray,
                      target: float) -> dict[str, Any]:
    snaps = sorted((out / "snapshots").glob("params-*.npy"))
    accs = [accuracy(model, np.load(p), X, y) for p in snaps]
    first = next((i for i, a in enumerate(accs) if a >= target), None)
    if first is None:
        return {"iterations_to_target": None, "seconds_to_target": None, "final_accuracy": accs[-1] if accs else None}
    # snapshot i holds the parameters after iteration i + 1; iteration 0 started latency_0 before snapshot 0
    t_start = snaps[0].stat().st_mtime - records[0]["latency_ms"] / 1e3
    return {"iterations_to_target": first + 1, "seconds_to_target": snaps[first].stat().st_mtime - t_start,
            "final_accuracy": accs[-1], "accuracy": [round(a, 4) for a in accs]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--smax", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--delay", default="shifted-exp:a=1,mu=1,unit_s=1")
    parser.add_argument("--dead", default="0,2")
    parser.add_argument("--target", type=float, default=0.95, help="test accuracy to reach")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="runs/bench-models")
    args = parser.parse_args()
    n, smax = args.workers, args.smax
    codes = [f"nested:levels={','.join(map(str, range(smax + 1)))}", f"crc:s={smax}", "uncoded"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="flexgc-bench-models-") as tmp:
        train, X_test, y_test = _split(Path(tmp), args.seed)
        single = _partition_ms(train, n)
        print(f"one partition ({single['rows']} rows, d={single['d']}): {single['median_ms']:.1f} ms median, "
              f"{single['p90_ms']:.1f} ms p90; first call (compile) {single['first_call_s']:.2f} s", flush=True)
        with np.load(train) as f:
            spec = DataSpec(model=MODEL, source="master", samples=f["y"].size, features=64, classes=10, partitions=n)
        model = build_model(spec)
        for r in (int(x) for x in args.dead.split(",")):
            dead = dead_slots(n, r, "random", args.seed)
            delay = args.delay + ("/dead:workers=" + "+".join(map(str, dead)) if dead else "")
            for spec_text in codes:
                if r > parse_code(spec_text, n).s_max:
                    rows.append({"code": spec_text, "r": r, "skipped": f"tolerates fewer than r={r} dead workers"})
                    continue
                started = time.perf_counter()
                row = run_one(spec_text, n, delay, args.seed, args.iterations, 30.0, Path(tmp), 20_000, 100,
                              model=MODEL, data=str(train), optimizer=OPTIMIZER, snapshot_every=1, init_seed=0,
                              join_timeout_s=600.0)  # n processes import JAX and compile on 2 cores first
                run_out = Path(row.pop("out"))
                records = [json.loads(line) for line in (run_out / "run.jsonl").read_text().splitlines()
                           if '"iteration"' in line]
                row.update(_time_to_accuracy(run_out, records, model, X_test, y_test, args.target))
                row.update(r=r, wall_s=time.perf_counter() - started)
                row.pop("latencies_ms", None)
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "accuracy"}), flush=True)
    meta = {"workers": n, "delay": args.delay, "iterations": args.iterations, "model": MODEL, "optimizer": OPTIMIZER,
            "target_accuracy": args.target, "single_partition": single, "python": sys.version.split()[0]}
    (out / "bench_models.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print()
    print(f"{'code':24s} {'r':>2} {'mean ms':>8} {'ideal':>7} {'meas/id':>7} {'part ms':>8} {'share':>6} "
          f"{'it->acc':>7} {'s->acc':>7} {'final':>6}")
    for row in rows:
        if "skipped" in row:
            print(f"{row['code']:24s} {row['r']:>2} skipped: {row['skipped']}")
            continue
        its, secs = row["iterations_to_target"], row["seconds_to_target"]
        print(f"{row['code']:24s} {row['r']:>2} {row['mean_ms']:8.1f} {row['ideal_mean_ms']:7.1f} "
              f"{row['measured_over_ideal']:7.2f} {row['compute_ms_per_partition_median']:8.1f} "
              f"{row['compute_share']:6.2f} {its if its else '-':>7} {f'{secs:.1f}' if secs else '-':>7} "
              f"{row['final_accuracy']:6.3f}")
    print(f"\nwrote {out / 'bench_models.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
