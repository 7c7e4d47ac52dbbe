"""BENCHMARKS.md §10: why the ByteDance SE replay's 0.85x goal is out of reach for placement chosen before a step.

    .venv/bin/python benchmarks/se_trace_limits.py

On the shipped SE matrix itself (steps x ranks factors, no communication): the per-rank step-to-step
autocorrelation, shares sized on the previous step's factors (re-planned every step) against uncoded, and an
exact static code in which each slot computes its own block in M pieces and then its ring predecessor's
pieces in reverse order, one uncoded message per piece (owner and backup meet in the middle of a slow block),
decoded by `analysis.decode_times`.
"""

from __future__ import annotations

import numpy as np

from flexgc.common.analysis import decode_times
from flexgc.common.codes import Code, _finish
from flexgc.common.traces import load_factors


def meet_in_the_middle(n: int, pieces: int) -> Code:
    """Slot i: its own pieces forward, then slot i-1's pieces backward; one indicator row per piece."""
    order = [tuple([i * pieces + t for t in range(pieces)] + [((i - 1) % n) * pieces + t
                                                              for t in reversed(range(pieces))]) for i in range(n)]
    levels = 2 * pieces
    B = np.zeros((levels, n, n * pieces))
    prefix = np.zeros((levels, n), dtype=np.int64)
    for i in range(n):
        for level in range(levels):
            B[level, i, order[i][level]] = 1.0
            prefix[level, i] = level + 1
    return _finish("multimessage", n, tuple(range(levels)), order, prefix, B, ("identity",) * levels,
                   (1.0,) * levels)


def main() -> None:
    F = load_factors("bytedance-se")
    steps, n = F.shape
    uncoded = F.max(axis=1)
    lag1 = [np.corrcoef(F[:-1, i], F[1:, i])[0, 1] for i in range(n)]
    print(f"SE matrix: {steps} steps x {n} ranks; ideal (mean/max) {np.mean(F.mean(axis=1)) / uncoded.mean():.3f}")
    print(f"per-rank step-to-step autocorrelation: median {np.median(lag1):.3f}")
    shares = [np.max((1 / F[t - 1]) / np.sum(1 / F[t - 1]) * n * F[t]) for t in range(1, steps)]
    print(f"shares sized on the previous step / uncoded: {np.mean(shares) / uncoded[1:].mean():.3f}")
    for pieces in (2, 4, 8, 16, 32):
        code = meet_in_the_middle(n, pieces)
        times = decode_times(code, np.repeat((F / pieces)[:, :, None], 2 * pieces, axis=2))
        print(f"meet-in-the-middle code, M={pieces:2d} pieces: {times.latency.mean() / uncoded.mean():.3f} x uncoded")


if __name__ == "__main__":
    main()
