"""`flexgc analyze` (latency of codes under a delay model) and `flexgc codes check|table` (numerical quality)."""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flexgc.common.analysis import SimResult, simulate
from flexgc.common.codes import Code, parse_code
from flexgc.common.crc import validation_patterns, worst_condition
from flexgc.common.delays import DelayModel, dead_slots, parse_delay
from flexgc.common.errors import CodeConstructionError, ConfigError
from flexgc.common.quality import REL_ERR_MAX, RESIDUAL_MAX, check_code

_log = logging.getLogger(__name__)

DEFAULT_WORKERS = 10
DEFAULT_CODES = ("uncoded", "ignore:s=3", "frc:s=1", "crc:s=1,decoder=per-level", "crc:s=3,decoder=per-level",
                 "crc:s=3", "nested:levels=0,1,2,3,decoder=per-level", "nested:levels=0,1,2,3",
                 "multimessage:smax=3")
DEFAULT_DELAY = "shifted-exp:a=1,mu=1"
DEFAULT_TRIALS = 100_000
TABLE_WORKERS = (8, 16, 32, 64)
TABLE_TOLERANCES = (1, 2, 4, 8)


def register(sub: argparse._SubParsersAction) -> None:
    analyze = sub.add_parser("analyze", help="expected iteration latency of codes under a delay model",
                             description="Monte Carlo (and closed-form, where one exists) iteration latency "
                             "of each code under one delay model. Latencies are in model time units.")
    analyze.add_argument("--workers", "-n", type=int, default=DEFAULT_WORKERS, help="worker slots n (10)")
    analyze.add_argument("--code", action="append", metavar="SPEC",
                         help=f"code spec, repeatable (default: {' '.join(DEFAULT_CODES)})")
    analyze.add_argument("--delay", default=DEFAULT_DELAY, metavar="SPEC",
                         help=f"delay model spec (default {DEFAULT_DELAY})")
    analyze.add_argument("--trials", type=int, default=DEFAULT_TRIALS, help=f"({DEFAULT_TRIALS})")
    analyze.add_argument("--seed", type=int, default=0, help="(0)")
    analyze.add_argument("--json", action="store_true", help="print JSON instead of a table")
    analyze.add_argument("--plot", metavar="FILE.png",
                         help="also plot mean latency against the number of dead workers (needs the `plot` "
                              "extra: pip install 'flexgc[plot]')")
    analyze.add_argument("--dead-pattern", choices=("contiguous", "spread"), default="contiguous",
                         help="which slots are dead in the plot: 0..r-1 or spread evenly (contiguous)")
    analyze.set_defaults(handler=run_analyze)

    codes = sub.add_parser("codes", help="numerical quality of codes")
    codes_sub = codes.add_subparsers(dest="codes_command", metavar="SUBCOMMAND", required=True)
    check = codes_sub.add_parser("check", help="decode every straggler pattern a code claims to tolerate",
                                 description="Decodes every straggler pattern of up to s_max slots (all "
                                 "alive slots send every level), or a seeded sample when there are more than "
                                 "--max-exhaustive; exit 1 if any pattern fails.")
    check.add_argument("--workers", "-n", type=int, default=DEFAULT_WORKERS)
    check.add_argument("--code", action="append", metavar="SPEC", required=True, help="repeatable")
    check.add_argument("--json", action="store_true")
    check.add_argument("--max-exhaustive", type=int, default=20_000,
                       help="largest pattern count checked exhaustively")
    check.add_argument("--samples", type=int, default=2000, help="random patterns when sampling")
    check.add_argument("--dim", type=int, default=64, help="gradient length d of the random test g")
    check.add_argument("--seed", type=int, default=0)
    check.set_defaults(handler=run_check)

    table = codes_sub.add_parser("table", help="worst cond(B_F) of CRC, nested and FRC over a grid of n, s")
    table.add_argument("--markdown", action="store_true")
    table.add_argument("--workers-list", default=",".join(map(str, TABLE_WORKERS)), metavar="N,N,...")
    table.add_argument("--tolerances", default=",".join(map(str, TABLE_TOLERANCES)), metavar="S,S,...")
    table.set_defaults(handler=run_table)


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise ConfigError(f"{name}={value}; need an integer >= 1")
    return value


def _int_list(name: str, text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{name}={text!r}; need integers separated by ','") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{name}={text!r}; need one or more integers >= 1")
    return values


def _jsonable(value: Any) -> Any:
    """JSON has no inf/NaN: non-finite floats become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = False) -> None:
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join(" --- " for _ in header) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(h), *(len(r[c]) for r in rows)) for c, h in enumerate(header)]
    for cells in (header, ["-" * w for w in widths], *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(cells, widths)).rstrip())


def _num(x: float | None, fmt: str = ".4f") -> str:
    if x is None:
        return "-"
    return format(x, fmt) if math.isfinite(x) else "inf"


# ---------------------------------------------------------------------------------------------
# analyze


def run_analyze(args: argparse.Namespace) -> int:
    n = _positive("workers", args.workers)
    trials = _positive("trials", args.trials)
    model = parse_delay(args.delay, "delay")
    model.check_slots(n)
    if model.trace and model.loop:
        from flexgc.common.traces import load_factors

        steps = len(load_factors(model.trace))
        if trials > steps:
            _log.warning("the trace has %d rows and loop=1 repeats them over %d trials: the ± is not the "
                         "uncertainty of the trace's own figures (--trials %d analyzes each row once)", steps, trials,
                         steps)
    codes = [parse_code(spec, n, field_name="code") for spec in (args.code or DEFAULT_CODES)]
    if args.plot:
        _check_plot_file(args.plot)  # before the computation, not after it
    started = time.perf_counter()
    results = [simulate(code, model, trials, args.seed) for code in codes]
    elapsed_s = time.perf_counter() - started
    _log.debug("analyzed codes=%d trials=%d elapsed_s=%.2f", len(codes), trials, elapsed_s)
    if args.plot:
        _plot(args.plot, codes, model, trials, args.seed, args.dead_pattern)
    if args.json:
        payload = {"workers": n, "delay": model.spec, "trials": trials, "seed": args.seed,
                   "results": [r.as_dict() for r in results]}
        print(json.dumps(_jsonable(payload), indent=2, allow_nan=False))
        return 0
    print(f"n={n}  delay={model.spec}  trials={trials}  seed={args.seed}  (latency in model time units; "
          f"mean and CI over decodable trials)")
    header = ["code", "decoder", "mean ± 95% CI", "median", "p90", "P(excess)", "P(fail)", "load",
              "layer use %", "closed form"]
    rows = [[r.code, r.policy + (" (approx.)" if r.approximate else ""),
             f"{_num(r.mean)} ± {_num(r.ci95)}", _num(r.median), _num(r.p90), _num(r.p_excess),
             _num(r.p_fail), _num(r.mean_load, ".3f"), "/".join(f"{100 * u:.1f}" for u in r.layer_use),
             _num(r.closed_form)] for r in results]
    _print_table(header, rows)
    print("P(excess): more unresponsive or dead workers than s_max; P(fail): never decodable; load: mean "
          "fraction of the data computed per responsive worker at the decode instant")
    if args.plot:
        print(f"plot written to {args.plot}")
    return 0


def _check_plot_file(path: str) -> None:
    """ConfigError now, not after minutes of Monte Carlo: a known format, a folder that exists, the library."""
    from flexgc.plots import STATIC_FORMATS

    target = Path(path)
    fmt = target.suffix.lstrip(".").lower()
    if fmt not in (*STATIC_FORMATS, "html"):
        raise ConfigError(f"plot={path!r}: unknown format .{fmt or '(none)'}; allowed: "
                          + ", ".join("." + f for f in (*STATIC_FORMATS, "html")))
    if not target.parent.is_dir():
        raise ConfigError(f"plot={path!r}: the folder {str(target.parent)!r} does not exist; create it first")
    try:
        __import__("matplotlib" if fmt in STATIC_FORMATS else "plotly")
    except ImportError:
        extra = "plot" if fmt in STATIC_FORMATS else "report"
        raise ConfigError(f"plot={path!r} needs {'matplotlib' if extra == 'plot' else 'plotly'}: pip install "
                          f"'flexgc[{extra}]'") from None


def _plot(path: str, codes: list[Code], model: DelayModel, trials: int, seed: int, pattern: str) -> None:
    """Mean latency against dead workers, through the shared plotting module: .png/.pdf/.svg (matplotlib,
    for papers) or .html (interactive, Plotly)."""
    from flexgc.plots import Chart, Series, save

    n = codes[0].n
    r_max = max(code.s_max for code in codes)
    series = []
    for g, code in enumerate(codes):
        xs, ys = [], []
        for r in range(r_max + 1):
            result: SimResult = simulate(code, model.with_dead(dead_slots(n, r, pattern)), trials, seed)
            if math.isfinite(result.mean):
                xs.append(r)
                ys.append(result.mean)
        series.append(Series(code.spec, xs, ys, markers=True, group=g))
    save(Chart("dead", f"n={n}, {model.spec}, {trials} trials", f"dead workers r ({pattern} slots)",
               "mean iteration latency (model time)", series, integer_x=True), path)


# ---------------------------------------------------------------------------------------------
# codes check


def run_check(args: argparse.Namespace) -> int:
    n = _positive("workers", args.workers)
    for name in ("max_exhaustive", "samples", "dim"):
        _positive(name.replace("_", "-"), getattr(args, name))
    codes = [parse_code(spec, n, field_name="code") for spec in args.code]
    reports = [check_code(code, args.max_exhaustive, args.samples, args.dim, args.seed) for code in codes]
    ok = all(r["ok"] for r in reports)
    if args.json:
        print(json.dumps(_jsonable({"ok": ok, "codes": reports}), indent=2, allow_nan=False))
        return 0 if ok else 1
    header = ["code", "decoder", "straggler sets", "failed", "worst residual", "worst cond", "rel err f64",
              "rel err f32", "verdict"]
    rows = []
    for r in reports:
        if r["exhaustive"]:
            checked = f"exhaustive: all {r['patterns_checked']} sets of <= {r['s_max']} stragglers"
        else:
            checked = (f"sampled: {r['patterns_checked']} sets of {r['s_max']} of {r['patterns_claimed']} "
                       f"sets of <= {r['s_max']}")
        if r["empty_slots"]:
            checked += f" among {r['workers'] - r['empty_slots']} slots holding data ({r['empty_slots']} empty)"
        if r["approximate_decodes"]:
            checked += f" ({r['approximate_decodes']} approximate by design)"
        rows.append([r["code"], r["decoder"], checked, str(r["failed_sets"]), f"{r['worst_residual']:.2e}",
                     f"{r['worst_cond']:.3g}", f"{r['worst_rel_err_float64']:.2e}",
                     f"{r['worst_rel_err_float32']:.2e}", "ok" if r["ok"] else "FAIL"])
    _print_table(header, rows)
    print(f"limits: residual <= {RESIDUAL_MAX:g}, relative error <= {REL_ERR_MAX['float64']:g} (float64), "
          f"<= {REL_ERR_MAX['float32']:g} (float32); random g of length {args.dim}, seed {args.seed}")
    for r in reports:
        kinds: dict[str, list[dict[str, Any]]] = {}
        for failure in r["failures"]:
            kinds.setdefault(failure["kind"], []).append(failure)
        for kind, found in kinds.items():
            worst = max(found, key=lambda f: f["value"] or 0.0)
            value = f" (worst {worst['value']:.2e})" if worst["value"] is not None else ""
            print(f"FAIL {r['code']}: {kind}: {len(found)} straggler sets{value}, e.g. stragglers="
                  f"{worst['stragglers']}", file=sys.stderr)
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------------
# codes table


def _refusal(exc: CodeConstructionError) -> str:
    text = str(exc)
    found = re.search(r"crc s=(\d+).*?\(([^)]*)\) has worst cond\(B_F\)=([^ ]+) > max_cond=([^;]+)", text)
    if found:
        s, name, cond, limit = found.groups()
        return f"refused: level s={s} ({name}) cond {cond} > {limit}"
    found = re.search(r"crc s=(\d+).*?\(([^)]*)\) could only be checked on a sample of the C\(\d+,\d+\)=(\d+)", text)
    if found:
        s, name, total = found.groups()
        return f"refused: level s={s} ({name}) unproven, C(n,s)={int(total):.3g} sets too many to check"
    found = re.search(r"crc s=(\d+).*?n - s = \d+ is even.*?C\(\d+,\d+\)=(\d+)", text)
    if found:
        s, total = found.groups()
        return f"refused: level s={s} (n-s even: searched) unproven, C(n,s)={int(total):.3g} sets too many to check"
    found = re.search(r"crc s=(\d+).*?cyclic-MDS construction has cond\(B_F\)=([^ ]+) > max_cond=([^ ]+) already", text)
    if found:
        s, cond, limit = found.groups()
        return f"refused: level s={s} (cyclic-mds) cond >= {cond} > {limit} (contiguous stragglers)"
    return "refused: " + text.split(";")[0][:80]


TABLE_MAX_EXHAUSTIVE = 50_000
TABLE_SAMPLES = 2000
_BATCH = 2048


def table_patterns(n: int, s: int) -> tuple[list[tuple[int, ...]], str]:
    """Every set of s stragglers when there are at most TABLE_MAX_EXHAUSTIVE, else a seeded sample
    (contiguous, spread and random sets); with a note saying which."""
    total = math.comb(n, s)
    if total <= TABLE_MAX_EXHAUSTIVE:
        return list(itertools.combinations(range(n), s)), f"exhaustive ({total})"
    patterns = validation_patterns(n, s, TABLE_SAMPLES, seed=2024)
    return patterns, f"sampled ({len(patterns)} of {total})"


def worst_cond(B: np.ndarray, patterns: Sequence[tuple[int, ...]]) -> float:
    """Worst cond(B_F) over straggler sets of equal size (see `codes.worst_condition`)."""
    return worst_condition(B, list(patterns), over_rank=True)


def quality_rows(workers: Sequence[int], tolerances: Sequence[int]) -> list[list[str]]:
    """One row per (n, s): worst cond(B_F) of CRC(s), nested levels 0..s and FRC(s), checked over every
    straggler set of each level's size (or a sample), beside the construction and its own stated value."""
    level_cond: dict[tuple[int, int], float] = {}

    def checked(code: Code, level: int) -> float:
        key = (code.n, code.levels[level])
        if key not in level_cond:
            level_cond[key] = worst_cond(code.B[level], table_patterns(*key)[0])
        return level_cond[key]

    rows = []
    for n in workers:
        for s in tolerances:
            if s >= n:
                continue
            _log.info("quality n=%d s=%d", n, s)
            cells = [str(n), str(s)]
            try:
                crc = parse_code(f"crc:s={s}", n)
                cells += [crc.construction[0], f"{checked(crc, 0):.3g}", f"{crc.worst_cond[0]:.3g}"]
            except CodeConstructionError as exc:
                cells += [_refusal(exc), "-", "-"]
            try:
                nested = parse_code("nested:levels=" + ",".join(map(str, range(s + 1))), n)
                conds = [checked(nested, level) for level in range(nested.n_levels)]
                worst_level = int(np.argmax(conds))
                cells += [f"{max(conds):.3g}",
                          f"s={nested.levels[worst_level]} ({nested.construction[worst_level]})"]
            except CodeConstructionError as exc:
                cells += [_refusal(exc), "-"]
            frc = parse_code(f"frc:s={s}", n)
            cells += [f"{worst_cond(frc.B[0], table_patterns(n, s)[0]):.3g} ({frc.construction[0]})",
                      table_patterns(n, s)[1]]
            rows.append(cells)
    return rows


def run_table(args: argparse.Namespace) -> int:
    workers = _int_list("workers-list", args.workers_list)
    tolerances = _int_list("tolerances", args.tolerances)
    header = ["n", "s", "CRC(s) construction", "CRC(s) worst cond", "stated by codes.py",
              "nested 0..s worst cond", "nested worst level", "FRC(s) worst cond", "straggler sets of size s"]
    _print_table(header, quality_rows(workers, tolerances), markdown=args.markdown)
    return 0
