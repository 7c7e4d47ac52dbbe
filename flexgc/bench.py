"""`flexgc bench`: live clusters for a list of codes under identical seeded delay realizations.

For every scenario (r dead workers, unresponsive probability p) and every scheme (a code, or a code with
"+adapt": the master's --adapt speed), a real master and n worker processes run K iterations on loopback
with the same delay spec and seed, so every code faces the same per-worker delays (a pure function of
(seed, iteration, slot)). From each run log we report the outcomes (exact / approximate / failed
iterations), the time to a target loss (flexgc.targets: wall-clock seconds from the first iteration until
the full-batch loss first reaches it), mean / median / p90 iteration latency, mean load per worker,
vectors uploaded per worker and iteration, cancel latency, and the model's ideal latency for the very
same realization (`analysis.ideal_latencies_ms`, per plan for an adaptive run), with the ratio measured /
ideal. Schemes are ranked per scenario: those without approximate iterations first, then by time to target.

Every run keeps its directory, OUT/runs/r<r>-p<p>-<scheme>/ (a master's --out: `flexgc report` opens it),
with a parameter snapshot per iteration so that the full-batch loss of every scheme's parameters,
approximate ones included, is evaluated on the whole data. A previous bench's files in OUT move into
OUT/previous-<UTC time>/ first (nothing is deleted). An interrupted bench (SIGINT, SIGTERM) stops the run
in progress, writes the table, files and report of the runs it finished, and exits 130 (143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flexgc.common.codes import Code, parse_code
from flexgc.common.config import ADAPT_MODES, master_config
from flexgc.common.delays import dead_slots, parse_delay
from flexgc.common.errors import ConfigError
from flexgc.harness.local import LocalCluster
from flexgc.master.adapt import AdaptPolicy
from flexgc.master.rundir import check_out_dir
from flexgc.report import write_report_if_available
from flexgc.report.data import RunData, comparison_target
from flexgc.scenarios import SCENARIO_JOB, SCENARIO_SCHEMES, SCENARIOS, NamedScenario, named_scenarios
from flexgc.targets import rank_key

_log = logging.getLogger(__name__)

# the static codes and the adaptive one (the master's default is --adapt auto: a user's cluster may straggle by who)
FULL_CODES = ("nested:levels=0,1,2,3", "nested:levels=0,1,2,3,decoder=per-level", "crc:s=3", "frc:s=1",
              "nested-frc:groups=1,2", "uncoded", "ignore:s=3", "multimessage:smax=3", "nested:levels=0,1,2,3+adapt")
DEFAULT_WORKERS = 10
DEFAULT_DELAY = "shifted-exp:a=1,mu=1,unit_s=0.5"
QUICK_CODES = ("nested:levels=0,1,2,3", "nested:levels=0,1,2,3,decoder=per-level", "crc:s=3", "uncoded",
               "nested:levels=0,1,2,3+adapt")
ADAPT_SUFFIX = "+adapt"
DEFAULT_SPLIT = AdaptPolicy().split  # the master's --adapt-split default
RUNS = "runs"
SLOTS_PER_PROCESS = 8
# what a bench writes in OUT: a new bench moves a previous one's aside
BENCH_FILES = (RUNS, "bench.csv", "bench.json", "report.html", "latency_vs_dead_p*.png", "latency_cdf_p*.png")


@dataclass(frozen=True)
class Scenario:
    """r dead workers and an unresponsive probability p on the bench's base delay, or a named scenario
    (flexgc.scenarios: its own n, delay and iterations)."""

    dead: tuple[int, ...]
    p: float
    named: NamedScenario | None = None

    @property
    def label(self) -> str:
        return self.named.name if self.named is not None else f"r={len(self.dead)},p={self.p:g}"


@dataclass(frozen=True)
class Scheme:
    """A code and whether the master adapts its placement (--adapt)."""

    code: Code
    adapt: str = "off"

    @property
    def label(self) -> str:
        return self.code.spec + (ADAPT_SUFFIX if self.adapt != "off" else "")


def parse_schemes(texts: list[str], n: int, adapt: str, split: int) -> list[Scheme]:
    """`--code` entries: a code spec, or SPEC+adapt for that code with --adapt speed (`adapt` applies to the
    others). With any adaptive scheme every code runs on the same finer partitions (split=M, as the master's
    --adapt does), so every scheme trains on the same rows (synthetic data is drawn per partition)."""
    parsed = []
    for text in texts:
        spec, plus, suffix = text.partition("+")
        if plus and "+" + suffix != ADAPT_SUFFIX:
            raise ConfigError(f"code={text!r}: the only suffix is {ADAPT_SUFFIX} (that code with --adapt speed)")
        parsed.append((spec, "speed" if plus else adapt))
    adaptive = any(mode != "off" for _, mode in parsed)
    schemes = []
    for spec, mode in parsed:
        code = parse_code(spec, n)  # fails early, naming the field
        if adaptive and split > 1 and code.k == n and "split=" not in spec:
            code = parse_code(code.spec + ("," if ":" in code.spec else ":") + f"split={split}", n)
        schemes.append(Scheme(code, mode))
    return schemes


def delay_spec(base: str, scenario: Scenario) -> str:
    spec = scenario.named.delay if scenario.named is not None else base
    if scenario.p > 0:
        spec += f",p={scenario.p:g}" if ":" in spec.split("/")[0] else f":p={scenario.p:g}"
    if scenario.dead:
        spec += "/dead:workers=" + "+".join(map(str, scenario.dead))
    return spec


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_")


def run_dir_name(scenario: Scenario, scheme: Scheme) -> str:
    """OUT/runs/<this>: the scenario and the scheme, readable and safe as a file name."""
    if scenario.named is not None:
        return f"{scenario.named.name}-{_slug(scheme.label)}"
    return f"r{len(scenario.dead)}-p{scenario.p:g}-{_slug(scheme.label)}"


def run_one(scheme: Scheme | str, n: int, delay: str, seed: int, iterations: int, deadline_s: float,
            workdir: Path, samples: int, features: int, name: str | None = None, **job: Any) -> dict[str, Any]:
    """One live run into workdir/`name` (default: the scheme and a digest of the delay spec), its row of
    figures; `job` holds further master options (model, data, optimizer, snapshot_every, ...)."""
    if isinstance(scheme, str):
        scheme = Scheme(parse_code(scheme, n))
    if name is None:
        name = f"{_slug(scheme.label)}-{hashlib.sha256(delay.encode()).hexdigest()[:8]}"
    return _live_run(scheme, n, delay, seed, iterations, deadline_s, workdir / name, samples, features, **job)[0]


def _live_run(scheme: Scheme, n: int, delay: str, seed: int, iterations: int, deadline_s: float, out: Path,
              samples: int, features: int, **job: Any) -> tuple[dict[str, Any], RunData]:
    """`run_one` into the run directory `out`: the row and the run read back."""
    cfg = master_config(host="127.0.0.1", port=0, workers=n, code=scheme.code.spec, iterations=iterations,
                        delay=delay, delay_seed=seed, out=str(out), samples=samples, features=features,
                        checkpoint_every=0, deadline_s=deadline_s, on_deadline="fail", adapt=scheme.adapt,
                        # new_run: a leftover run in `out` (a bench that crashed) moves aside, it is not resumed
                        **{"join_timeout_s": 60.0, "new_run": True, **job})
    with LocalCluster(cfg) as cluster:
        cluster.start_master()
        # beyond 16 slots, several slots per worker process (`flexgc worker --slots`): 32 Python processes
        # would spend a 2-core machine on their own wake-ups
        cluster.start_workers(per_process=1 if n <= 16 else SLOTS_PER_PROCESS)
        rc = cluster.wait_master(iterations * (deadline_s + 2) + 60)
    if rc != 0:
        raise RuntimeError(f"bench run {scheme.label} / {delay}: master exit code {rc}")
    run = RunData.open(out)
    if run.summary.get("interrupted"):  # a signal reached the master alone (Ctrl-C reaches every process)
        raise _Interrupted(str(run.summary.get("interrupted_by") or "SIGINT"))
    records = run.records
    ideal_ms = np.array([math.inf if x is None else x for x in run.ideal_ms], dtype=float)
    measured = np.array([r["latency_ms"] if r["outcome"] != "FAILED" else math.inf for r in records], dtype=float)
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
    outcomes = [r["outcome"] for r in records]
    return {
        "code": scheme.label, "decoder": scheme.code.decoder, "adapt": scheme.adapt, "delay": delay,
        "iterations": len(records), "exact": outcomes.count("EXACT"), "approximate": outcomes.count("APPROXIMATE"),
        "failed": outcomes.count("FAILED"), "plan_switches": len(run.plans),
        "first_switch": int(run.plans[0]["iteration"]) if run.plans else None,
        "mean_ms": float(finite.mean()) if finite.size else math.nan,
        "median_ms": float(np.median(finite)) if finite.size else math.nan,
        "p90_ms": float(np.percentile(finite, 90)) if finite.size else math.nan,
        "ideal_mean_ms": mean_ideal,
        "ideal_p90_ms": float(np.percentile(ideal_ms[ok], 90)) if ok.any() else math.nan,
        "measured_over_ideal": mean_meas / mean_ideal if ok.any() else math.nan,
        "mean_load": float(np.mean(loads)) if loads else math.nan,
        "uploads_per_worker_iteration": float(np.mean(uploads)) if uploads else math.nan,
        # None: no worker was ever cancelled (every one sent its whole task, flagged task_done)
        "cancel_latency_ms_median": float(np.median(cancel)) if cancel else None,
        "compute_ms_per_partition_median": float(np.median(compute)) if compute else math.nan,
        "compute_share": float(np.mean(shares)) if shares else math.nan,
        "latencies_ms": [float(x) for x in finite],
        "out": str(out),
    }, run


class _Interrupted(Exception):
    """A signal stopped the bench (SIGTERM, raised in the main thread like KeyboardInterrupt for SIGINT) or
    the master of the run in progress; args[0] names it."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Interrupted("SIGTERM")


def _move_previous_bench(out: Path) -> Path | None:
    """Move a previous bench's files in OUT (it wrote OUT/bench.json) into OUT/previous-<UTC time>/, nothing
    deleted; its path."""
    if not (out / "bench.json").exists():
        return None
    held = sorted({p for pattern in BENCH_FILES for p in out.glob(pattern)})
    aside = out / f"previous-{datetime.datetime.now(datetime.UTC):%Y%m%dT%H%M%S.%fZ}"
    aside.mkdir()
    for p in held:
        p.rename(aside / p.name)
    return aside


def run_bench(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    split = args.adapt_split or DEFAULT_SPLIT
    base = args.delay or DEFAULT_DELAY
    job: dict[str, Any] = {k: getattr(args, k, None) for k in ("model", "data", "optimizer", "replan_every")}
    if args.scenario:
        given = [flag for flag, value in (("--delay", args.delay), ("--dead", args.dead), ("--p", args.p),
                                          ("--workers", args.workers), ("--quick", args.quick or None)) if value]
        if given:
            raise ConfigError(f"bench: --scenario sets its own workers, delay and dead workers; drop {', '.join(given)}"
                              f" (or drop --scenario for the r x p grid on --delay)")
        named = named_scenarios(args.scenario)
        scenarios = [Scenario(dead_slots(sc.n, sc.dead, "random", args.seed), 0.0, sc) for sc in named]
        texts = args.code or list(SCENARIO_SCHEMES)
        job = {**SCENARIO_JOB, **{k: v for k, v in job.items() if v}}
    else:
        n = args.workers or DEFAULT_WORKERS
        rs = [int(x) for x in args.dead.split(",")] if args.dead else ([0, 2] if args.quick else [0, 1, 2, 3])
        ps = [float(x) for x in args.p.split(",")] if args.p else ([0.0] if args.quick else [0.0, 0.1])
        parse_delay(base).check_slots(n)
        scenarios = [Scenario(dead_slots(n, r, "random", args.seed), p) for p in ps for r in rs]
        texts = args.code or list(QUICK_CODES if args.quick else FULL_CODES)
    # every scenario's schemes, parsed for its n before anything runs (a bad spec fails at once)
    schemes_of = {sc: parse_schemes(texts, _n(sc, args), args.adapt, split) for sc in scenarios}
    for sc in scenarios:
        parse_delay(delay_spec(base, sc)).check_slots(_n(sc, args))
    out = Path(args.out)
    check_out_dir(out)
    aside = _move_previous_bench(out)
    if aside is not None:
        print(f"a previous bench's files in {out} moved to {aside}")
    job = {k: v for k, v in job.items() if v}
    if args.adapt_split:
        job["adapt_split"] = args.adapt_split
    if not args.no_snapshots:
        job["snapshot_every"] = 1  # the full-batch loss of every step, approximate ones included
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    total = sum(len(schemes) for schemes in schemes_of.values())
    interrupted: str | None = None
    current: Path | None = None
    try:
        previous_term: Any = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: SIGTERM keeps its handler
        previous_term = None
    try:
        with tqdm(total=total, unit="run", disable=args.no_progress) as bar:
            for sc in scenarios:
                delay, n = delay_spec(base, sc), _n(sc, args)
                iterations = args.iterations or (sc.named.iterations if sc.named is not None
                                                 else 10 if args.quick else 30)
                for scheme in schemes_of[sc]:
                    bar.set_postfix_str(f"{sc.label} {scheme.label}")
                    if len(sc.dead) > scheme.code.s_max:
                        row: dict[str, Any] = {"code": scheme.label, "decoder": scheme.code.decoder, "delay": delay,
                                               "skipped": f"tolerates {scheme.code.s_max} < r={len(sc.dead)}: "
                                                          f"never decodes"}
                    else:
                        current = out / RUNS / run_dir_name(sc, scheme)
                        row, run = _live_run(scheme, n, delay, args.seed, iterations, args.deadline_s, current,
                                             args.samples, args.features, **job)
                        row["_run"] = run  # for the time to target, once every run is in
                        current = None
                    row.update(scenario=sc.label, r=len(sc.dead), p=sc.p, n=n)
                    rows.append(row)
                    bar.update(1)
    except KeyboardInterrupt:
        interrupted = "SIGINT"
    except _Interrupted as exc:
        interrupted = str(exc.args[0])
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
    wall = time.perf_counter() - started
    target, rule = _rank(rows, args.target_loss)
    runs = [row.pop("_run") for row in rows if "_run" in row]
    report = write_report_if_available([run.path for run in runs], out / "report.html", args.target_loss)
    _write(out, rows, wall, args, target, rule, interrupted)
    _print_table(rows, target, rule)
    print(f"\nwrote {out / 'bench.csv'}, {out / 'bench.json'} and plots in {out}; run directories in {out / RUNS}; "
          f"{wall:.0f} s")
    if report is not None:
        print(f"report: {report} (every run on one page: flexgc report)")
    if interrupted is not None:
        left = f"; the unfinished run's files stay in {current}" if current is not None else ""
        skipped = sum("skipped" in r for r in rows)
        done = f"{len(rows) - skipped} of {total} runs" + (f" ({skipped} more skipped: they cannot decode)"
                                                            if skipped else "")
        print(f"bench interrupted ({interrupted}) after {done}: the table, files and report above are theirs{left}")
        return 128 + int(signal.Signals[interrupted])
    return 0


def _n(sc: Scenario, args: argparse.Namespace) -> int:
    return sc.named.n if sc.named is not None else args.workers or DEFAULT_WORKERS


def _rank(rows: list[dict[str, Any]], target_loss: float | None) -> tuple[float | None, str]:
    """Add each run's time to target and its rank within its scenario; the target and how it was set."""
    runs = [row["_run"] for row in rows if "_run" in row]
    target, rule = comparison_target(runs, target_loss)
    for row in rows:
        if "_run" in row and target is not None:
            row.update(row["_run"].time_to_target(target).as_dict())
    for scenario in dict.fromkeys(row["scenario"] for row in rows):
        ranked = sorted((row for row in rows if row["scenario"] == scenario and "skipped" not in row),
                        key=lambda row: rank_key(row["approximate"] > 0, row.get("time_to_target_s"), row["mean_ms"]))
        for k, row in enumerate(ranked, start=1):
            row["rank"] = k
    return target, rule


_COLUMNS = ("scenario", "n", "r", "p", "rank", "code", "decoder", "iterations", "exact", "approximate", "failed",
            "time_to_target_s",
            "target_iterations", "target_loss", "best_full_batch_loss", "run_s", "mean_ms", "median_ms", "p90_ms",
            "ideal_mean_ms", "ideal_p90_ms", "measured_over_ideal", "mean_load", "uploads_per_worker_iteration",
            "cancel_latency_ms_median", "compute_ms_per_partition_median", "compute_share", "plan_switches", "out",
            "skipped")


def _write(out: Path, rows: list[dict[str, Any]], wall: float, args: argparse.Namespace, target: float | None,
           rule: str, interrupted: str | None) -> None:
    with (out / "bench.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            # losses keep every digit (two schemes' losses differ in the 5th); the rest 4 decimals
            w.writerow({k: (round(v, 4) if isinstance(v, float) and "loss" not in k else v) for k, v in row.items()})
    meta = {"workers": args.workers or DEFAULT_WORKERS, "delay": args.delay or DEFAULT_DELAY, "seed": args.seed,
            "wall_s": round(wall, 1), "quick": args.quick, "adapt": args.adapt, "target_loss": target,
            "target_rule": rule, "runs": str(out / RUNS), "interrupted": interrupted,
            "scenarios": {name: dataclasses.asdict(SCENARIOS[name]) for name in dict.fromkeys(
                row["scenario"] for row in rows) if name in SCENARIOS},
            "winners": winners(rows), "load_average": list(os.getloadavg())}
    (out / "bench.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _log.warning("matplotlib missing: no plots (pip install 'flexgc[plot]')")
        return
    named = [r for r in rows if r["scenario"] in SCENARIOS]
    if named:
        _plot_time_to_target(plt, named, out / "time_to_target.png")
    for p in sorted({r["p"] for r in rows if r not in named}):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for spec in dict.fromkeys(r["code"] for r in rows):
            pts = sorted((r["r"], r["mean_ms"]) for r in rows if r["code"] == spec and r["p"] == p
                         and "mean_ms" in r and r not in named)
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=spec)
        _save(plt, fig, ax, "dead workers r", "mean iteration latency (ms, live)",
              f"flexgc bench, n={args.workers}, {args.delay}, p={p:g}", out / f"latency_vs_dead_p{p:g}.png")
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for row in rows:
            if row["p"] == p and row["r"] == 0 and row.get("latencies_ms") and row not in named:
                xs = np.sort(row["latencies_ms"])
                ax.step(xs, np.arange(1, xs.size + 1) / xs.size, where="post", label=row["code"])
        _save(plt, fig, ax, "iteration latency (ms, live)", "CDF", f"latency CDF, r=0, p={p:g}",
              out / f"latency_cdf_p{p:g}.png")


def _plot_time_to_target(plt: Any, rows: list[dict[str, Any]], path: Path) -> None:
    """Grouped bars: each scenario's time to target per scheme (never: a hatched bar at the longest run)."""
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    schemes = list(dict.fromkeys(r["code"] for r in rows))
    width = 0.8 / max(len(schemes), 1)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.4 * len(scenarios)), 4.5))
    cap = max((r.get("run_s") or 0.0 for r in rows), default=1.0) or 1.0
    for j, spec in enumerate(schemes):
        xs, ys, never = [], [], []
        for i, name in enumerate(scenarios):
            row = next((r for r in rows if r["scenario"] == name and r["code"] == spec), None)
            if row is None or "skipped" in row:
                continue
            seconds = row.get("time_to_target_s")
            xs.append(i + (j - (len(schemes) - 1) / 2) * width)
            ys.append(seconds if seconds is not None else cap)
            never.append(seconds is None)
        bars = ax.bar(xs, ys, width=width, label=("≈ " if spec.startswith("ignore") else "") + spec)
        for bar, hatch in zip(bars, never):
            if hatch:
                bar.set_hatch("//")
                bar.set_alpha(0.4)
    ax.set_xticks(range(len(scenarios)), scenarios)
    _save(plt, fig, ax, "scenario", "time to target (s, live; hatched: never)",
          "flexgc bench --scenario: wall-clock seconds to the target loss", path)


TIE = 0.03
"""Times to target within this fraction of the winner's are a tie (one iteration's noise on a shared machine)."""


def winners(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per scenario: the scheme that reached the target first among those without approximate iterations,
    its time, the schemes within TIE of it, how that compares with the runner-up and with uncoded (what users
    run today), and the adaptive schemes that got there before their first re-plan (so adapting took no part)."""
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["scenario"] for r in rows):
        ranked = sorted((r for r in rows if r["scenario"] == name and "rank" in r), key=lambda r: r["rank"])
        exact = [r for r in ranked if not r["approximate"] and r.get("time_to_target_s") is not None]
        if not exact:
            continue
        best = exact[0]
        entry: dict[str, Any] = {"scheme": best["code"], "time_to_target_s": best["time_to_target_s"]}
        if len(exact) > 1:
            entry["runner_up"] = exact[1]["code"]
            entry["over_runner_up"] = best["time_to_target_s"] / exact[1]["time_to_target_s"]
            tied = best["time_to_target_s"] * (1 + TIE)
            entry["tie"] = [r["code"] for r in exact[1:] if r["time_to_target_s"] <= tied]
        entry["before_first_replan"] = [
            r["code"] for r in ranked if r["adapt"] != "off" and r.get("target_iterations") is not None
            and (r.get("first_switch") is None or r["target_iterations"] <= r["first_switch"])]
        uncoded = next((r for r in ranked if r["code"].partition(":")[0] == "uncoded" and r["adapt"] == "off"), None)
        if uncoded is not None and uncoded is not best:
            seconds = uncoded.get("time_to_target_s")
            entry["over_uncoded"] = best["time_to_target_s"] / seconds if seconds else 0.0
        out[name] = entry
    return out


def _save(plt: Any, fig: Any, ax: Any, xlabel: str, ylabel: str, title: str, path: Path) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _print_table(rows: list[dict[str, Any]], target: float | None, rule: str) -> None:
    head = (f"{'r':>2} {'p':>4} {'#':>2}  {'code':44s} {'exact':>5} {'approx':>6} {'failed':>6} {'target s':>8} "
            f"{'mean':>7} {'median':>7} {'p90':>7} {'ideal':>7} {'ideal90':>7} {'meas/ideal':>10} {'load':>6} "
            f"{'uploads':>7} {'cancel':>7}")
    if target is not None:
        print(f"target s: wall-clock seconds from the first iteration until the full-batch loss first reached "
              f"{target:.6g}; never: not within the run (target {rule})")
    else:
        print(f"target s: no target ({rule})")
    print("#: rank within the scenario (schemes without approximate iterations first, then by time to target); "
          "≈: approximate gradients (ignore:s), whose loss is measured on their own parameters")
    print("exact / approx / failed: iterations; mean, median, p90, cancel: ms, live; ideal, ideal90: the model's mean "
          "and p90 on the same delays (ms); load: fraction of the data per worker; uploads: coded vectors per worker "
          "and iteration")
    print(head)
    print("-" * len(head))
    scenarios = dict.fromkeys(r["scenario"] for r in rows)
    for scenario in scenarios:
        group = [r for r in rows if r["scenario"] == scenario]
        if scenario in SCENARIOS:
            sc = SCENARIOS[scenario]
            print(f"-- {scenario} (n={sc.n}, {sc.delay}{f', {sc.dead} dead' if sc.dead else ''}): {sc.about}")
        for r in sorted(group, key=lambda r: r.get("rank", math.inf)):
            if "skipped" in r:
                print(f"{r['r']:>2} {r['p']:>4g} {'':>2}  {r['code']:44s} skipped: {r['skipped']}")
                continue
            name = ("≈ " if r["approximate"] else "") + r["code"]
            seconds = r.get("time_to_target_s")
            cell = "-" if target is None else "never" if seconds is None else f"{seconds:.2f}"
            print(f"{r['r']:>2} {r['p']:>4g} {r['rank']:>2}  {name:44s} {r['exact']:5d} {r['approximate']:6d} "
                  f"{r['failed']:6d} {cell:>8} {r['mean_ms']:7.1f} {r['median_ms']:7.1f} {r['p90_ms']:7.1f} "
                  f"{r['ideal_mean_ms']:7.1f} {r.get('ideal_p90_ms', math.nan):7.1f} {r['measured_over_ideal']:10.3f} "
                  f"{r['mean_load']:6.3f} "
                  f"{r['uploads_per_worker_iteration']:7.2f} {_num(r['cancel_latency_ms_median'], 7, 2)}")
    won = winners(rows)
    if won and target is not None:
        print("\nwinner per scenario (first to the target without approximate iterations):")
        for name, w in won.items():
            if w.get("tie"):
                vs = [f"a tie: within {TIE:.0%} of it, {', '.join(w['tie'])}"]
            else:
                vs = [f"{w['over_runner_up']:.2f}x the runner-up {w['runner_up']}"] if "runner_up" in w else []
            if "over_uncoded" in w:
                vs.append(f"{w['over_uncoded']:.2f}x uncoded's time" if w["over_uncoded"]
                          else "uncoded never got there")
            print(f"  {name}: {w['scheme']} in {w['time_to_target_s']:.2f} s" + (f" ({'; '.join(vs)})" if vs else ""))
            for code in w["before_first_replan"]:
                print(f"    note: {code} reached the target before its first re-plan: adapting took no part "
                      f"(run more --iterations to see it)")


def _num(x: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:{width}.{digits}f}"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bench", help="live clusters for several codes on identical delay realizations",
        description="For every scenario (r dead workers, unresponsive probability p) and code, a master and n "
        "worker processes on loopback run the same job on the same delays. The table ranks the schemes per "
        "scenario by time to target: wall-clock seconds from the first iteration until the full-batch loss "
        "first reaches the target loss, failed iterations counting their time; schemes with approximate "
        "iterations (ignore:s, marked ≈) rank after the exact ones, their loss measured on the parameters "
        "their approximate steps reached (a snapshot per iteration, evaluated on the whole data). Every run's "
        "directory stays in OUT/runs/ (flexgc report opens it); Ctrl-C or SIGTERM keeps the runs finished so "
        "far, writes their table and exits 130 (143).")
    p.add_argument("--scenario", action="append", metavar="NAME",
                   help=f"a named straggling scenario instead of the r x p grid (repeatable; all: every one): "
                   f"{', '.join(SCENARIOS)}; each sets n, the delay, dead workers and iterations, and by default "
                   f"compares {', '.join(SCENARIO_SCHEMES)} on softmax regression on sklearn:digits "
                   f"(docs/traces.md, BENCHMARKS.md §11)")
    p.add_argument("--quick", action="store_true", help="a short run (< 3 min on 2 cores)")
    p.add_argument("--workers", type=int, default=None, help=f"(default: {DEFAULT_WORKERS})")
    p.add_argument("--code", action="append",
                   help=f"code spec, or SPEC{ADAPT_SUFFIX} for that code with the master's --adapt speed "
                   "(repeatable; default: the full comparison)")
    p.add_argument("--adapt", choices=ADAPT_MODES, default="off",
                   help=f"the master's --adapt for every code without its own {ADAPT_SUFFIX}; with any adaptive "
                   f"scheme every code runs on split=M partitions (--adapt-split) so all train on the same rows")
    p.add_argument("--replan-every", type=int, default=None, help="the master's --replan-every (adaptive runs)")
    p.add_argument("--adapt-split", type=int, default=None,
                   help=f"the master's --adapt-split M (default {DEFAULT_SPLIT})")
    p.add_argument("--target-loss", type=float, default=None, metavar="X",
                   help="the loss of the time-to-target column (default: 90%% of the way from the initial loss to "
                   "the lowest full-batch loss any run without approximate iterations reached; printed above the "
                   "table and in bench.json)")
    p.add_argument("--no-snapshots", action="store_true",
                   help="keep no parameter snapshot per iteration (then only exact iterations' losses count, so "
                   "an always-approximate scheme never reaches the target)")
    p.add_argument("--delay", default=None,
                   help=f"base delay spec; r dead workers and p are added per scenario (default: {DEFAULT_DELAY})")
    p.add_argument("--dead", default=None, help="comma-separated dead-worker counts r (default 0,1,2,3)")
    p.add_argument("--p", default=None, help="comma-separated unresponsive probabilities (default 0,0.1)")
    p.add_argument("--iterations", type=int, default=None,
                   help="iterations per run (default 30; quick 10; a named scenario's own, 40 or 100)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--deadline-s", type=float, default=5.0, help="per-iteration deadline (then FAILED)")
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--features", type=int, default=50)
    p.add_argument("--model", default=None, help="model spec (default logistic; e.g. jax-cnn, needs flexgc[jax])")
    p.add_argument("--data", default=None, help="data source (default synthetic; e.g. sklearn:digits)")
    p.add_argument("--optimizer", default=None, help="optimizer spec (default gd)")
    p.add_argument("--out", default="runs/bench",
                   help="the folder for bench.csv, bench.json, plots, report.html and runs/ (one directory per run)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=run_bench)
