"""Adaptive placement: a pure planner from measured worker speeds to a code (docs/design.md §2.10).

The planner never talks to a worker or a clock. Its inputs are what the master measured (per slot, the
seconds one unit of data took in each of the last W iterations: `SpeedTracker` in master/speeds.py) and
the code in use; its output is a `PlanChoice`: the best candidate code and the latency each code would
have needed on exactly those W measured iterations (decode instants from `analysis.decode_times`, as
for every other prediction of flexgc). The coordinator applies a chosen plan at an iteration boundary.

Candidates are `weighted` codes (`codes.weighted_code`): slot i's own block holds partitions in
proportion to its speed, so with no straggler every slot finishes its block at the same time (the
speed-proportional bound); each block is also held by s_max other slots (the ring), so any s_max
unresponsive slots still decode exactly, with rows that are indicators of disjoint blocks (weights 1/c
per copy, no solve). The
ring decides who backs up whom; the candidates are the rings by speed (fastest first and slowest
first) and the slot order (`RING_RULES`), and the out-of-sample prediction picks among them.

A measured matrix is per-unit seconds (``times[w, i]``: slot i's time for the whole dataset in the w-th
measured iteration, its time for a fraction x being x times that: model A). ``inf`` marks an iteration in
which the slot never answered; a slot with no finite measurement at all is treated as
`SLOW_FACTOR` times the slowest measured one, so it gets the smallest block.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from flexgc.common.analysis import decode_times
from flexgc.common.codes import Code, parse_code, weighted_code
from flexgc.common.errors import ConfigError

MIN_GAIN = 0.05
"""A plan replaces the code in use only if it is predicted to save at least this fraction (hysteresis)."""
MIN_T = 3.0
"""... and only if the saving is significant: the paired per-iteration differences (code in use minus plan,
out of sample) have a mean of at least MIN_T standard errors. The planner picks the best of three rings, so
its selection is optimistic: on 12 seeded homogeneous windows (n = 10, 30 iterations, X ~ Exp(1)) the largest
statistic was 1.6 with a 6% "gain"; on two-class windows it is 60-110."""
SLOW_FACTOR = 100.0


@dataclass(frozen=True)
class PlanChoice:
    """What the planner found: the best candidate, the predicted mean latency of it and of the code in use
    on the measured iterations (seconds), and whether the gain clears the threshold."""

    code: Code
    current_s: float
    predicted_s: float
    gain: float
    switch: bool
    t_stat: float                      # mean paired saving over its standard error (out of sample)
    speeds: tuple[float, ...]          # the per-unit seconds per slot the plan was sized for

    def as_dict(self) -> dict[str, object]:
        """The run log's view of the choice (the code by its spec, which round-trips through parse_code)."""
        return {"code": self.code.spec, "current_ms": _ms(self.current_s), "predicted_ms": _ms(self.predicted_s),
                "predicted_gain": round(self.gain, 4), "t_stat": round(self.t_stat, 2) if math.isfinite(self.t_stat)
                else None, "speeds_s": [round(s, 6) for s in self.speeds]}


def _ms(seconds: float) -> float | None:
    return round(seconds * 1e3, 3) if math.isfinite(seconds) else None


def chronic_speeds(times: np.ndarray) -> np.ndarray:
    """Per slot, the median of its finite measurements (per-unit seconds): the chronic speed, robust to one-off
    stalls. A slot never measured gets SLOW_FACTOR times the slowest measured slot."""
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 2 or times.shape[0] < 1:
        raise ConfigError(f"planner: measured times of shape {times.shape}; need (iterations >= 1, n)")
    finite = np.where(np.isfinite(times) & (times > 0), times, np.nan)
    known = ~np.all(np.isnan(finite), axis=0)
    out = np.full(times.shape[1], np.nan)
    if known.any():
        out[known] = np.nanmedian(finite[:, known], axis=0)
        out[~known] = SLOW_FACTOR * float(np.max(out[known]))
    else:
        out[:] = 1.0
    return out


def speed_blocks(k: int, speeds: np.ndarray, removed: frozenset[int] = frozenset()) -> tuple[int, ...]:
    """Integer block sizes (>= 1 each, 0 for `removed` slots, summing to k) that minimize the slowest slot's
    time max_i c_i * t_i, where t_i is slot i's per-unit time (greedy: each next partition goes where it
    ends soonest, optimal for this min-max)."""
    t = np.asarray(speeds, dtype=np.float64)
    n = len(t)
    active = [i for i in range(n) if i not in removed]
    if k < len(active) or not active:
        raise ConfigError(f"planner: k={k} partitions for {len(active)} slots; need k >= slots >= 1 (split=M gives "
                          f"k = M*n)")
    blocks = [0 if i in removed else 1 for i in range(n)]
    heap = [(2 * float(t[i]), i) for i in active]
    heapq.heapify(heap)
    for _ in range(k - len(active)):
        _, i = heapq.heappop(heap)
        blocks[i] += 1
        heapq.heappush(heap, ((blocks[i] + 1) * float(t[i]), i))
    return tuple(blocks)


def blocks_unchanged(current: Code, times: np.ndarray, removed: frozenset[int] = frozenset()) -> bool:
    """Whether the speed blocks for these measured times are the current code's level-0 loads: then no
    plan can follow speed better than the code in use does, and the planner need not run (a homogeneous
    cluster, where speed differences stay below the grain of 1/k)."""
    return speed_blocks(current.k, chronic_speeds(times), removed) == tuple(int(x) for x in current.prefix[0])


RING_RULES = ("fast-first", "slow-first", "slots")
"""Who backs up whom: the ring ordered by speed (fastest first or slowest first) or by slot."""


def candidate(rule: str, k: int, smax: int, speeds: np.ndarray, removed: frozenset[int] = frozenset()) -> Code:
    """The weighted code sized for `speeds` (per-unit seconds per slot) with the ring of `rule`; `removed`
    slots hold nothing (elastic membership)."""
    n = len(speeds)
    blocks = speed_blocks(k, speeds, removed)
    fast_first = tuple(int(i) for i in np.argsort(speeds, kind="stable"))
    ring = {"fast-first": fast_first, "slow-first": fast_first[::-1], "slots": tuple(range(n))}[rule]
    return weighted_code(blocks, ring, smax)


def durations_for(code: Code, times: np.ndarray) -> np.ndarray:
    """``(W, n, P)`` per-partition seconds of `code` on the measured iterations: slot i's partition takes
    times[w, i] / k (model A), inf where it never answered."""
    times = np.asarray(times, dtype=np.float64)
    P = max(len(o) for o in code.order)
    per_part = np.where(np.isfinite(times), times, np.inf) / code.k
    return np.repeat(per_part[:, :, None], P, axis=2)


def latencies(code: Code, times: np.ndarray) -> np.ndarray:
    """Decode instant of `code` in each measured iteration (seconds; inf where it never decodes)."""
    return decode_times(code, durations_for(code, times)).latency


def predicted_latency(code: Code, times: np.ndarray) -> float:
    """Mean decode instant of `code` over the measured iterations (seconds; inf if one never decodes)."""
    latency = latencies(code, times)
    return float(np.mean(latency)) if latency.size else math.inf


def plan(current: Code, times: np.ndarray, *, smax: int | None = None, min_gain: float = MIN_GAIN,
         min_t: float = MIN_T, iteration_s: float = 0.0, removed: frozenset[int] = frozenset()) -> PlanChoice:
    """The best weighted code for the measured per-unit times (``(W, n)`` seconds, W >= 2), against `current`.

    The plan keeps the job's k partitions (so no data is re-cut) and its tolerance s_max (default: the
    current code's). Its predicted latency is out of sample: the blocks are sized on the odd measured
    iterations and evaluated on the even ones, and the other way round, so blocks fitted to noise (a
    homogeneous cluster measured for a while always looks a little heterogeneous) predict no gain.
    `removed` slots get no block (their workers are gone: elastic membership).
    `switch` is True only when that prediction saves at least `min_gain` against the code in use, and
    significantly (`MIN_T`). The saving is a fraction of the iteration: of the code in use's predicted
    compute time, or of `iteration_s` (the measured mean iteration latency, communication included) when
    that is longer, so that a plan which saves 30% of a compute time that is 2% of the iteration is no gain.
    """
    times = np.asarray(times, dtype=np.float64)
    n, k = current.n, current.k
    if times.ndim != 2 or times.shape[1] != n or times.shape[0] < 2:
        raise ConfigError(f"planner: measured times of shape {times.shape}; need (iterations >= 2, n={n})")
    smax = current.s_max if smax is None else smax
    folds = (np.arange(0, len(times), 2), np.arange(1, len(times), 2))
    scores: dict[str, np.ndarray] = {}
    for rule in RING_RULES:
        out = np.empty(len(times))
        for fit, test in (folds, folds[::-1]):
            out[test] = latencies(candidate(rule, k, smax, chronic_speeds(times[fit]), removed), times[test])
        scores[rule] = out
    rule = min(RING_RULES, key=lambda r: float(np.mean(scores[r])))
    speeds = chronic_speeds(times)
    best = candidate(rule, k, smax, speeds, removed)
    if current.signaling != best.signaling:  # the plan keeps the job's signaling (push or notify)
        best = parse_code(f"{best.spec},signaling={current.signaling}", n)
    best_s = float(np.mean(scores[rule]))
    now = latencies(current, times)
    current_s = float(np.mean(now))
    if math.isfinite(current_s) and current_s > 0:
        gain = (current_s - best_s) / max(current_s, iteration_s)
        diff = now - scores[rule]
        se = float(np.std(diff, ddof=1)) / math.sqrt(len(diff)) if np.all(np.isfinite(diff)) else math.nan
        t_stat = float(np.mean(diff)) / se if se > 0 else (math.inf if np.mean(diff) > 0 else 0.0)
    else:
        gain = 1.0 if math.isfinite(best_s) else 0.0
        t_stat = math.inf if math.isfinite(best_s) else 0.0
    switch = gain >= min_gain and t_stat >= min_t and best.spec != current.spec
    return PlanChoice(best, current_s, best_s, gain, switch, t_stat, tuple(float(s) for s in speeds))


def membership_plan(current: Code, speeds: np.ndarray, removed: frozenset[int], smax: int) -> Code:
    """The plan for a changed membership (docs/design.md §2.10): `removed` slots hold nothing, the others
    share the k partitions by `speeds` (equal speeds: equal shares) with the tolerance `smax` over the
    slots that remain (capped below their number). Taken whatever its predicted latency: it restores the
    tolerance that gone workers were using up."""
    active = current.n - len(removed)
    code = candidate("fast-first", current.k, min(smax, active - 1), speeds, removed)
    if current.signaling != code.signaling:
        code = parse_code(f"{code.spec},signaling={current.signaling}", current.n)
    return code
