"""`flexgc bench`: live clusters for a list of codes under identical seeded delay realizations.

For every scenario (r dead workers, unresponsive probability p) and every code, a real master and n
worker processes run K iterations on loopback with the same delay spec and seed, so every code faces
the same per-worker delays (a pure function of (seed, iteration, slot)). From each run log we report
mean / median / p90 iteration latency, mean load per worker, vectors uploaded per worker and iteration,
cancel latency, and the model's ideal latency for the very same realization
(`analysis.ideal_latencies_ms`), with the ratio measured / ideal.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flexgc.common.analysis import ideal_latencies_ms
from flexgc.common.codes import parse_code
from flexgc.common.config import master_config
from flexgc.common.delays import dead_slots, parse_delay
from flexgc.harness.local import LocalCluster
from flexgc.master.accounting import read_run_log
from flexgc.master.rundir import check_out_dir
from flexgc.report import run_dirs_below, write_report_if_available

_log = logging.getLogger(__name__)

FULL_CODES = ("nested:levels=0,1,2,3", "nested:levels=0,1,2,3,decoder=per-level", "crc:s=3", "frc:s=1",
              "nested-frc:groups=1,2", "uncoded", "ignore:s=3", "multimessage:smax=3")
QUICK_CODES = ("nested:levels=0,1,2,3", "nested:levels=0,1,2,3,decoder=per-level", "crc:s=3", "uncoded")


@dataclass(frozen=True)
class Scenario:
    dead: tuple[int, ...]
    p: float

    @property
    def label(self) -> str:
        return f"r={len(self.dead)},p={self.p:g}"


def delay_spec(base: str, scenario: Scenario) -> str:
    spec = base
    if scenario.p > 0:
        spec += f",p={scenario.p:g}" if ":" in spec.split("/")[0] else f":p={scenario.p:g}"
    if scenario.dead:
        spec += "/dead:workers=" + "+".join(map(str, scenario.dead))
    return spec


def run_one(code_spec: str, n: int, delay: str, seed: int, iterations: int, deadline_s: float,
            workdir: Path, samples: int, features: int, **job: Any) -> dict[str, Any]:
    """One live run; `job` holds further master options (model, data, optimizer, snapshot_every, ...)."""
    code = parse_code(code_spec, n)
    out = workdir / f"{code_spec.replace(':', '_').replace(',', '_').replace('=', '')}-{abs(hash(delay)) % 10**8}"
    cfg = master_config(host="127.0.0.1", port=0, workers=n, code=code_spec, iterations=iterations, delay=delay,
                        delay_seed=seed, out=str(out), samples=samples, features=features, checkpoint_every=0,
                        deadline_s=deadline_s, on_deadline="fail", **{"join_timeout_s": 60.0, **job})
    with LocalCluster(cfg) as cluster:
        cluster.start_master()
        cluster.start_workers()
        rc = cluster.wait_master(iterations * (deadline_s + 2) + 60)
    if rc != 0:
        raise RuntimeError(f"bench run {code_spec} / {delay}: master exit code {rc}")
    records = read_run_log(out / "run.jsonl")
    model = parse_delay(delay)
    iters = [r["iteration"] for r in records]
    ideal_ms = ideal_latencies_ms(code, model, seed, iters)
    measured = np.array([r["latency_ms"] if r["outcome"] != "FAILED" else math.inf for r in records])
    ok = np.isfinite(measured) & np.isfinite(ideal_ms)
    loads = [w["load"] for r in records for w in r["workers"] if w["task_sent_ms"] is not None
             and w["partitions_done"] is not None]
    uploads = [sum(x is not None for x in w["result_arrival_ms"]) for r in records for w in r["workers"]]
    cancel = [r["cancel_latency_ms"] for r in records if r["cancel_latency_ms"] is not None]
    # compute time per partition, and the share of each iteration a worker spent computing
    compute = [ms for r in records for w in r["workers"] for ms in w["compute_ms"] if ms is not None]
    shares = [sum(x for x in w["compute_ms"] if x is not None) / r["latency_ms"] for r in records
              if r["outcome"] != "FAILED" and r["latency_ms"] for w in r["workers"] if w["task_sent_ms"] is not None]
    finite = measured[np.isfinite(measured)]
    mean_ideal = float(ideal_ms[ok].mean()) if ok.any() else math.nan
    mean_meas = float(measured[ok].mean()) if ok.any() else math.nan
    return {
        "code": code.spec, "decoder": code.decoder, "delay": delay, "iterations": len(records),
        "failed": int((~np.isfinite(measured)).sum()),
        "approximate": sum(r["outcome"] == "APPROXIMATE" for r in records),
        "mean_ms": float(finite.mean()) if finite.size else math.nan,
        "median_ms": float(np.median(finite)) if finite.size else math.nan,
        "p90_ms": float(np.percentile(finite, 90)) if finite.size else math.nan,
        "ideal_mean_ms": mean_ideal,
        "measured_over_ideal": mean_meas / mean_ideal if ok.any() else math.nan,
        "mean_load": float(np.mean(loads)) if loads else math.nan,
        "uploads_per_worker_iteration": float(np.mean(uploads)) if uploads else math.nan,
        # None: no worker was ever cancelled (every one sent its whole task, flagged task_done)
        "cancel_latency_ms_median": float(np.median(cancel)) if cancel else None,
        "compute_ms_per_partition_median": float(np.median(compute)) if compute else math.nan,
        "compute_share": float(np.mean(shares)) if shares else math.nan,
        "latencies_ms": [float(x) for x in finite],
        "out": str(out),
    }


def run_bench(args: argparse.Namespace) -> int:
    from tqdm import tqdm


    n = args.workers
    codes = args.code or (QUICK_CODES if args.quick else FULL_CODES)
    rs = [int(x) for x in args.dead.split(",")] if args.dead else ([0, 2] if args.quick else [0, 1, 2, 3])
    ps = [float(x) for x in args.p.split(",")] if args.p else ([0.0] if args.quick else [0.0, 0.1])
    iterations = args.iterations or (10 if args.quick else 30)
    for spec in codes:
        parse_code(spec, n)  # fail early, with the field named
    base = args.delay
    parse_delay(base).check_slots(n)
    scenarios = [Scenario(dead_slots(n, r, "random", args.seed), p) for p in ps for r in rs]
    out = Path(args.out)
    check_out_dir(out)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="flexgc-bench-") as tmp, \
            tqdm(total=len(scenarios) * len(codes), unit="run", disable=args.no_progress) as bar:
        for sc in scenarios:
            delay = delay_spec(base, sc)
            for spec in codes:
                bar.set_postfix_str(f"{sc.label} {spec}")
                code = parse_code(spec, n)
                if len(sc.dead) > code.s_max:
                    row: dict[str, Any] = {"code": code.spec, "decoder": code.decoder, "delay": delay,
                                           "skipped": f"tolerates {code.s_max} < r={len(sc.dead)}"}
                else:
                    job = {k: getattr(args, k, None) for k in ("model", "data", "optimizer")}
                    row = run_one(spec, n, delay, args.seed, iterations, args.deadline_s, Path(tmp),
                                  args.samples, args.features, **{k: v for k, v in job.items() if v})
                row.update(r=len(sc.dead), p=sc.p, n=n)
                rows.append(row)
                bar.update(1)
        report = write_report_if_available(run_dirs_below(Path(tmp)), out / "report.html")  # all runs, one page
    wall = time.perf_counter() - started
    _write(out, rows, wall, args)
    _print_table(rows)
    print(f"\nwrote {out / 'bench.csv'}, {out / 'bench.json'} and plots in {out}; {wall:.0f} s")
    if report is not None:
        print(f"report: {report} (every run on one page: flexgc report)")
    return 0


_COLUMNS = ("r", "p", "code", "decoder", "iterations", "failed", "mean_ms", "median_ms", "p90_ms", "ideal_mean_ms",
            "measured_over_ideal", "mean_load", "uploads_per_worker_iteration", "cancel_latency_ms_median",
            "compute_ms_per_partition_median", "compute_share", "skipped")


def _write(out: Path, rows: list[dict[str, Any]], wall: float, args: argparse.Namespace) -> None:
    with (out / "bench.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    meta = {"workers": args.workers, "delay": args.delay, "seed": args.seed, "wall_s": round(wall, 1),
            "quick": args.quick}
    (out / "bench.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _log.warning("matplotlib missing: no plots (pip install 'flexgc[plot]')")
        return
    for p in sorted({r["p"] for r in rows}):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for spec in dict.fromkeys(r["code"] for r in rows):
            pts = sorted((r["r"], r["mean_ms"]) for r in rows if r["code"] == spec and r["p"] == p
                         and "mean_ms" in r)
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=spec)
        _save(plt, fig, ax, "dead workers r", "mean iteration latency (ms, live)",
              f"flexgc bench, n={args.workers}, {args.delay}, p={p:g}", out / f"latency_vs_dead_p{p:g}.png")
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for row in rows:
            if row["p"] == p and row["r"] == 0 and row.get("latencies_ms"):
                xs = np.sort(row["latencies_ms"])
                ax.step(xs, np.arange(1, xs.size + 1) / xs.size, where="post", label=row["code"])
        _save(plt, fig, ax, "iteration latency (ms, live)", "CDF", f"latency CDF, r=0, p={p:g}",
              out / f"latency_cdf_p{p:g}.png")


def _save(plt: Any, fig: Any, ax: Any, xlabel: str, ylabel: str, title: str, path: Path) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _print_table(rows: list[dict[str, Any]]) -> None:
    head = (f"{'r':>2} {'p':>4}  {'code':42s} {'mean':>7} {'median':>7} {'p90':>7} {'ideal':>7} {'meas/ideal':>10} "
            f"{'load':>6} {'uploads':>7} {'cancel':>7} {'failed':>6}")
    print("mean, median, p90, ideal, cancel: ms; load: fraction of the data per worker; uploads: coded vectors"
          " per worker and iteration")
    print(head)
    print("-" * len(head))
    for r in rows:
        if "skipped" in r:
            print(f"{r['r']:>2} {r['p']:>4g}  {r['code']:42s} skipped: {r['skipped']}")
            continue
        print(f"{r['r']:>2} {r['p']:>4g}  {r['code']:42s} {r['mean_ms']:7.1f} {r['median_ms']:7.1f} {r['p90_ms']:7.1f} "
              f"{r['ideal_mean_ms']:7.1f} {r['measured_over_ideal']:10.3f} {r['mean_load']:6.3f} "
              f"{r['uploads_per_worker_iteration']:7.2f} {_num(r['cancel_latency_ms_median'], 7, 2)} {r['failed']:6d}")


def _num(x: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:{width}.{digits}f}"


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="live clusters for several codes on identical delay realizations")
    p.add_argument("--quick", action="store_true", help="a short run (< 3 min on 2 cores)")
    p.add_argument("--workers", type=int, default=10)
    p.add_argument("--code", action="append", help="code spec (repeatable; default: the full comparison)")
    p.add_argument("--delay", default="shifted-exp:a=1,mu=1,unit_s=0.5",
                   help="base delay spec; r dead workers and p are added per scenario")
    p.add_argument("--dead", default=None, help="comma-separated dead-worker counts r (default 0,1,2,3)")
    p.add_argument("--p", default=None, help="comma-separated unresponsive probabilities (default 0,0.1)")
    p.add_argument("--iterations", type=int, default=None, help="iterations per run (default 30; quick 10)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--deadline-s", type=float, default=5.0, help="per-iteration deadline (then FAILED)")
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--features", type=int, default=50)
    p.add_argument("--model", default=None, help="model spec (default logistic; e.g. jax-cnn, needs flexgc[jax])")
    p.add_argument("--data", default=None, help="data source (default synthetic; e.g. sklearn:digits)")
    p.add_argument("--optimizer", default=None, help="optimizer spec (default gd)")
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=run_bench)
