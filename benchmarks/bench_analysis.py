"""Benchmark of the Monte Carlo latency analysis and of CRC construction decisions (not a test).

    .venv/bin/python benchmarks/bench_analysis.py [--section small|scale|refusal|conditioning|all]

* ``small`` (the default; issue 2): `simulate` of nested n = 10, s_max = 4 under model A (a = mu = 1), 200,000
  trials per decoding policy; each repeat builds a fresh `Code` (cold decoder cache) with its own seed.
  Target: 200,000 trials of the per-level nested code in under 2 s.
* ``scale`` (issue 15): `simulate` of ``nested-frc:groups=1,2,4,8,16,32`` at n = 256, 20,000 trials, per-level
  and any-span. Target: 10 s each.
* ``refusal`` (issue 15): how long `parse_code` takes to refuse ``crc:s=4`` at n = 64 (a cold construction
  cache per repeat). Target: 1 s.
* ``conditioning``: worst cond(B_F) of unit-circle Vandermonde codes against nested FRC (docs/codes.md).

Timings are the median of ``--repeats`` runs, as wall time and as CPU time (user + system of this process),
with the load average before and after: the development VM is 2 vCPUs shared with other sessions. The
script uses only APIs every version has, so ``PYTHONPATH=OLD_CHECKOUT`` times an older checkout with it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from flexgc.common import codes as codes_module

try:  # CRC rows moved to their own module; a "before" tree run for comparison has them in codes.py
    from flexgc.common import crc as crc_module
except ImportError:
    crc_module = None  # type: ignore[assignment]
from flexgc.common.analysis import SimResult, simulate
from flexgc.common.codes import parse_code
from flexgc.common.delays import parse_delay
from flexgc.common.errors import CodeConstructionError

SMALL_CASES = ("nested:smax=4,decoder=per-level", "nested:smax=4", "nested:levels=0,2,4", "crc:s=3",
               "multimessage:smax=4")
SCALE_CODE = "nested-frc:groups=1,2,4,8,16,32"
SCALE_N = 256


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(run: Callable[[int], Any], repeats: int) -> tuple[list[float], list[float], Any]:
    """Wall and CPU seconds of `run(repeat)` per repeat, and the last result."""
    walls, cpus, result = [], [], None
    for repeat in range(repeats):
        wall, cpu = time.perf_counter(), cpu_s()
        result = run(repeat)
        walls.append(time.perf_counter() - wall)
        cpus.append(cpu_s() - cpu)
    return walls, cpus, result


def line(label: str, walls: list[float], cpus: list[float], extra: str = "") -> dict[str, Any]:
    print(f"{label:44s} wall median {statistics.median(walls):7.3f} s (min {min(walls):.3f}, max {max(walls):.3f})"
          f"  CPU median {statistics.median(cpus):7.3f} s  {extra}", flush=True)
    return {"case": label, "wall_s": walls, "cpu_s": cpus, "note": extra}


def small(args: argparse.Namespace) -> list[dict[str, Any]]:
    model = parse_delay("shifted-exp:a=1,mu=1")
    print(f"small: trials={args.trials or 200_000}, n=10, delay={model.spec}")
    out = []
    for spec in SMALL_CASES:
        parse_code(spec, 10)  # warm the construction cache; not part of the timing

        def run(repeat: int, spec: str = spec) -> SimResult:
            return simulate(parse_code(spec, 10), model, args.trials or 200_000, seed=repeat)

        walls, cpus, result = timed(run, args.repeats)
        out.append(line(spec, walls, cpus, f"mean latency {result.mean:.4f}"))
    return out


def scale(args: argparse.Namespace) -> list[dict[str, Any]]:
    model = parse_delay("shifted-exp:a=1,mu=1")
    trials = args.trials or 20_000
    print(f"scale: {SCALE_CODE} at n={SCALE_N}, trials={trials}, delay={model.spec}")
    out = []
    for policy in args.policies.split(","):

        def run(repeat: int, policy: str = policy) -> SimResult:
            return simulate(parse_code(SCALE_CODE, SCALE_N), model, trials, seed=repeat, policy=policy)

        walls, cpus, result = timed(run, args.repeats)
        out.append(line(f"{policy} ({trials} trials)", walls, cpus, f"mean latency {result.mean:.4f}"))
    return out


def refusal(args: argparse.Namespace) -> list[dict[str, Any]]:
    print("refusal: parse_code('crc:s=4', 64), construction caches cleared before each repeat")

    def refuse(_: int) -> str:
        for module in (codes_module, crc_module):  # the "before" tree has them in codes.py
            for cached in ("crc_rows", "cyclic_mds_rows"):  # cyclic_mds_rows is new with the cached table
                if module is not None and hasattr(module, cached):
                    getattr(module, cached).cache_clear()
        try:
            parse_code("crc:s=4", 64)
        except CodeConstructionError as exc:
            return str(exc)
        return "built"

    walls, cpus, message = timed(refuse, args.repeats)
    print(f"  {message}")
    return [line("crc:s=4 at n=64 refused", walls, cpus)]


# -- conditioning of unit-circle Vandermonde codes ----------------------------------------------


def cyclic_rows(n: int, s: int, complex_field: bool) -> np.ndarray:
    """Rows of the cyclic-MDS gradient code (Raviv et al., arXiv 1707.03858): row i is the vector of the
    code V supported on the window {i, ..., i+s}; V is spanned by n - s consecutive frequencies around 0 of
    the n-th roots of unity (complex), or by the real trigonometric polynomials (codes.py's construction)."""
    if not complex_field:
        rows = crc_module or codes_module
        return rows.rows_from_space(rows._trig_space(n, n - s), s)
    t = np.arange(n)
    freqs = np.arange(n - s) - (n - s - 1) // 2
    G = np.exp(2j * np.pi * np.outer(freqs, t) / n)
    B = np.zeros((n, n), dtype=complex)
    for i in range(n):
        outside = [j for j in range(n) if (j - i) % n > s]
        _, _, vt = np.linalg.svd(G[:, outside].T)
        row = vt[-1].conj() @ G
        row[outside] = 0
        B[i] = row / np.linalg.norm(row)
    return B


def contiguous_decode(B: np.ndarray, s: int) -> tuple[float, float]:
    """(cond(B_F), relative float64 error of the decoded sum of random partial gradients) with the s
    contiguous slots 0..s-1 straggling."""
    n = B.shape[0]
    BF = B[s:]
    sv = np.linalg.svd(BF, compute_uv=False)
    G = np.random.default_rng(0).standard_normal((n, 16))
    a = np.linalg.lstsq(BF.T, np.ones(n), rcond=None)[0]
    g = a @ (BF @ G)
    err = float(np.linalg.norm(g - G.sum(axis=0)) / np.linalg.norm(G.sum(axis=0)))
    return float(sv[0] / sv[-1]), err


def rotation_embedding(M: np.ndarray) -> np.ndarray:
    """The real embedding of a complex matrix, each entry x + iy as the 2x2 rotation block [[x, -y], [y, x]]
    (Ramamoorthy and Tang, arXiv 1910.06515): same singular values as M, each twice."""
    return np.block([[M.real, -M.imag], [M.imag, M.real]])


def nested_frc_worst(n: int, groups: tuple[int, ...], samples: int) -> float:
    """Worst cond (over the rank, as the decoder reports it) of every row of the alive slots of nested FRC,
    over seeded random sets of s_max = groups[-1] - 1 stragglers and the contiguous ones."""
    code = parse_code("nested-frc:groups=" + ",".join(map(str, groups)), n)
    rows = code.B.reshape(code.n_messages, n)
    rng = np.random.default_rng(1)
    s = code.s_max
    sets = [tuple(range(t, t + s)) for t in range(0, n - s, max(1, s))]
    sets += [tuple(rng.choice(n, s, replace=False)) for _ in range(samples)]
    worst = 1.0
    for dead in sets:
        alive = [m for m in range(code.n_messages) if m % n not in dead]
        sv = np.linalg.svd(rows[alive], compute_uv=False)
        sv = sv[sv > 1e-10 * sv[0]]
        worst = max(worst, float(sv[0] / sv[-1]))
    return worst


def conditioning(args: argparse.Namespace) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    print("conditioning: cond(B_F) with s contiguous stragglers (the worst set of a cyclic-MDS code) and the "
          "float64 relative error of decoding sum_j g_j there")
    for n, s, field in [(64, 1, "real"), (64, 3, "real"), (64, 5, "real"), (64, 7, "real"), (64, 9, "real"),
                        (128, 16, "real"), (64, 8, "complex"), (128, 8, "complex"), (128, 16, "complex")]:
        if field == "real" and (n - s) % 2 == 0:
            continue
        B = cyclic_rows(n, s, field == "complex")
        cond, err = contiguous_decode(B, s)
        extra = ""
        if field == "complex":
            emb = np.linalg.svd(rotation_embedding(B[s:]), compute_uv=False)
            extra = f"  rotation embedding cond {emb[0] / emb[-1]:.3g}"
        print(f"  {field:7s} cyclic-MDS n={n:3d} s={s:2d} (s/n={s / n:.3f})  cond {cond:9.3g}  float64 rel err "
              f"{err:9.3g}{extra}", flush=True)
        out.append({"case": f"{field} cyclic-mds n={n} s={s}", "cond": cond, "rel_err": err})
    for n, groups in [(64, (1, 2, 4, 8)), (256, (1, 2, 4, 8, 16, 32)), (1024, (1, 2, 4, 8, 16, 32, 64, 128))]:
        if n > args.max_frc_n:
            continue
        worst = nested_frc_worst(n, groups, samples=50 if n <= 256 else 5)
        print(f"  nested-frc n={n:4d} groups={','.join(map(str, groups))}  worst cond over rank {worst:.3g} "
              f"(all levels of the alive slots, s_max={groups[-1] - 1} stragglers)", flush=True)
        out.append({"case": f"nested-frc n={n}", "cond": worst})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", default="small", choices=("small", "scale", "refusal", "conditioning", "all"))
    parser.add_argument("--trials", type=int, default=0, help="trials (default: 200000 small, 20000 scale)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--policies", default="per-level,any-span", help="scale: policies to time")
    parser.add_argument("--max-frc-n", type=int, default=256, help="conditioning: largest nested-FRC n")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    print(f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
          f"repeats={args.repeats}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    sections = {"small": small, "scale": scale, "refusal": refusal, "conditioning": conditioning}
    chosen = list(sections) if args.section == "all" else [args.section]
    results = {name: sections[name](args) for name in chosen}
    load = os.getloadavg()
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in load)}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"load_end": load, **results}, fh, indent=1,
                      default=lambda x: None if isinstance(x, float) and not math.isfinite(x) else x)


if __name__ == "__main__":
    main()
