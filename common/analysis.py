"""Iteration latency of every code under a delay model: closed forms and vectorized Monte Carlo (docs/design.md §3).

The core is `decode_times`: given per-partition durations ``(trials, n, max_parts)`` in each slot's
order, message (level l, slot i) arrives when slot i has finished its first ``prefix[l, i]``
partitions, and the iteration latency is the earliest time at which the received messages are
decodable. Communication is not modeled (the live system measures it). The same function turns a live
run's recorded compute times into the ideal latency of exactly that realization (``trials = 1``).

Decodability is decided without linear algebra where the structure allows it:

* ``per-level`` is the rule of Maßny et al., arXiv 2212.08580 (docs/design.md §2.8): an MDS level
  (constructions ``identity``, ``cyclic-mds``, ``trig-phase:*``, ``random-orthonormal:*``) decodes once
  n - s_l of its messages have arrived, an order statistic; an FRC level once every group has one
  finisher (max over groups of min over members); the code at the minimum over levels. A level of any
  other construction falls back to the Decoder's per-level test.
* ``uncoded`` is the s = 0 MDS case; ``ignore:s=S`` takes the (n-S)-th arrival (approximate);
  ``multimessage`` decodes once every partition was sent by someone.
* ``any-span`` is exactly the shared Decoder: the all-ones row in the span of everything received.
  It mixes levels, and even within one level it may need fewer than n - s rows (the real cyclic-MDS
  rows of CRC(1) at even n are pairs (1, 1)/sqrt(2): every other worker suffices). Decodability is
  monotone in the received set, so each trial binary-searches the earliest prefix of its time-sorted
  message events between two bounds (the instant every partition is covered by some received row, and
  the per-level instant). Each probed set is a bitmask (one uint64 when n * L <= 64), deduplicated
  across trials with np.unique and checked through `Decoder(code, "any-span").solve`, whose answers are
  cached per mask. A probed set in which every sending slot's rows are independent over the
  partitions it computed is decided by coverage alone (exact; nested codes with levels 0, 1, ..., s
  are always in this case, which makes their any-span instants those of multimessage).
* ``any-span`` for FRC-structured codes (uncoded, FRC, nested FRC: every row the indicator of a block,
  the blocks nested or disjoint, `codes.Laminar`) needs neither search nor decoder. For nested FRC with
  group sizes m_0 | m_1 | ... | n, a level-l block is spanned once one of its member slots has sent its
  level-l row, or once all its level-(l-1) sub-blocks are spanned; 1 is in the span exactly when every
  top-level block is (docs/analysis.md, "Any-span on FRC-structured levels"). The decode instant is the
  min/max recursion T(block) = min(first own arrival, max over sub-blocks of T), T = max over the top
  blocks (`_laminar_times`), identical to the Decoder's search instant by instant (tests).

Memory: `simulate` samples in chunks of `chunk_trials(n, k)` trials and `decode_times` works through
blocks of about BLOCK_ELEMENTS per temporary, so 20,000 trials at n = 256 run in ~100 MB, not ~10 GB.
"""

from __future__ import annotations

import logging
import math
import weakref
from dataclasses import dataclass

import numpy as np

from flexgc.common.codes import DECODER_POLICIES, Code, Laminar, laminar_rows
from flexgc.common.decoder import Decoder
from flexgc.common.delays import DelayModel, realized_durations, sample_durations
from flexgc.common.errors import ConfigError

_log = logging.getLogger(__name__)

FRC_CONSTRUCTIONS = ("frc", "frc-unequal-groups")
CHUNK_TRIALS = 65536
"""`simulate` samples in chunks of at most this many trials (part of the seeding, see `chunk_trials`)."""
CHUNK_ELEMENTS = 1 << 25
"""A sampling chunk holds at most this many trials * n * k draws (model B draws ``(trials, n, k)``)."""
MIN_CHUNK_TRIALS = 64
BLOCK_ELEMENTS = 1 << 18
"""`decode_times` works through its trials in blocks of about this many ``trials * n * P`` elements, so
its temporaries stay at 2 MiB (cache-sized, and far below the allocator's mmap threshold: 20,000 trials at
n = 256 spent 35 s in the kernel when each temporary was 1.3 GB)."""


def chunk_trials(n: int, k: int) -> int:
    """Trials per sampling chunk of `simulate` at n slots and k partitions: CHUNK_TRIALS up to n = k = 22
    (so results at small n are those of every earlier version), then CHUNK_ELEMENTS / (n k). It depends on
    n and k only, so codes simulated with the same seed at the same n face the same draws."""
    return max(MIN_CHUNK_TRIALS, min(CHUNK_TRIALS, CHUNK_ELEMENTS // (n * k)))


# ---------------------------------------------------------------------------------------------
# closed forms (model A, p = 0)


def harmonic(m: int) -> float:
    """H_m = sum_{i=1..m} 1/i (H_0 = 0)."""
    if m < 0:
        raise ValueError(f"m={m}; need m >= 0")
    return math.fsum(1.0 / i for i in range(1, m + 1))


def expected_latency_crc(n: int, s: int, a: float, mu: float) -> float:
    """E[T_CRC(s)], model A, p = 0 (docs/design.md §3.3; Tandon et al., arXiv 1612.03301)."""
    if not 0 <= s < n:
        raise ValueError(f"s={s}; need 0 <= s < n={n}")
    # E[X_(n-s)] for i.i.d. Exp(mu) is (H_n - H_s)/mu
    return (s + 1) / n * (a + (harmonic(n) - harmonic(s)) / mu)


def expected_latency_frc(n: int, s: int, a: float, mu: float) -> float:
    """E[T_FRC(s)], model A, p = 0, (s+1) divides n (docs/design.md §3.3).

    Each of the n/(s+1) groups finishes with its fastest member, X_min ~ Exp((s+1) mu); the max of
    g i.i.d. Exp(lambda) has mean H_g / lambda.
    """
    if not 0 <= s < n:
        raise ValueError(f"s={s}; need 0 <= s < n={n}")
    if n % (s + 1):
        raise ValueError(f"s={s}: s+1={s + 1} does not divide n={n}; no closed form for unequal groups")
    return (s + 1) / n * (a + harmonic(n // (s + 1)) / ((s + 1) * mu))


def closed_form(code: Code, model: DelayModel, policy: str | None = None) -> float | None:
    """The closed-form E[T] of `code` under `model` and `policy` (default ``code.decoder``), or None
    where none exists: nested, multimessage, unequal FRC groups, any model but plain model A with
    p = 0, k != n, and CRC under ``any-span`` (the decoder may finish before n - s rows, see
    `decode_times`; the closed form is the per-level rule)."""
    if not model.is_model_a or code.k != code.n:
        return None
    n, a, mu = code.n, model.a, model.mu
    if code.family == "uncoded" or (code.family == "crc" and (policy or code.decoder) == "per-level"):
        return expected_latency_crc(n, code.levels[0], a, mu)
    if code.family == "ignore" and code.ignore_s is not None:
        # each worker computes 1/n; the master takes the (n-s)-th arrival
        return 1 / n * (a + (harmonic(n) - harmonic(code.ignore_s)) / mu)
    if code.family == "frc" and n % (code.levels[0] + 1) == 0:
        return expected_latency_frc(n, code.levels[0], a, mu)
    return None


# ---------------------------------------------------------------------------------------------
# decode instants


@dataclass(frozen=True, slots=True)
class DecodeTimes:
    """Per-trial outcome of `decode_times`.

    latency: ``(trials,)`` earliest decodable instant (model time, or the durations' unit); inf if never.
    level: ``(trials,)`` int, the level of the message whose arrival made the set decodable; -1 if never.
    load: ``(trials,)`` mean fraction of the dataset computed per responsive worker at the decode
        instant (a partially computed partition counts fractionally; all assigned work if never).
    approximate: True for ``ignore`` codes (rescaled, flagged gradients).
    """

    latency: np.ndarray
    level: np.ndarray
    load: np.ndarray
    approximate: bool = False


def decode_times(code: Code, durations: np.ndarray, policy: str | None = None) -> DecodeTimes:
    """Earliest decodable instant per trial.

    durations: ``(trials, n, P)`` (or ``(n, P)`` for one trial), P >= the longest order; entry
        ``[t, i, j]`` is slot i's time for the j-th partition of ``code.order[i]`` (inf: never).
        Columns beyond ``len(code.order[i])`` are ignored.
    policy: ``per-level`` or ``any-span``; default ``code.decoder``.
    """
    policy = policy or code.decoder
    if policy not in DECODER_POLICIES:
        raise ConfigError(f"decoder={policy!r}; allowed: {', '.join(DECODER_POLICIES)}")
    if policy == "per-level" and code.family == "multimessage":
        raise ConfigError("decoder=per-level is meaningless for multimessage; allowed: any-span")
    durations = np.asarray(durations, dtype=np.float64)
    if durations.ndim == 2:
        durations = durations[None]
    max_parts = max(len(o) for o in code.order)
    if durations.ndim != 3 or durations.shape[1] != code.n or durations.shape[2] < max_parts:
        raise ValueError(f"durations shape {durations.shape}; need (trials, n={code.n}, >= {max_parts})")
    trials, n, width = durations.shape
    if trials == 0:
        empty = np.zeros(0)
        return DecodeTimes(empty, np.zeros(0, dtype=np.int64), empty, code.family == "ignore")
    block = max(1, BLOCK_ELEMENTS // (n * width))
    if trials <= block:
        return _decode_block(code, durations, policy)
    parts = [_decode_block(code, durations[start:start + block], policy) for start in range(0, trials, block)]
    return DecodeTimes(np.concatenate([p.latency for p in parts]), np.concatenate([p.level for p in parts]),
                       np.concatenate([p.load for p in parts]), parts[0].approximate)


def _decode_block(code: Code, durations: np.ndarray, policy: str) -> DecodeTimes:
    """`decode_times` on one block of trials (each trial is independent of the others)."""
    if not np.all(durations >= 0):  # NaN fails the comparison too
        raise ValueError("durations must be >= 0 (inf allowed, NaN not)")
    finish = np.cumsum(durations, axis=2)
    arrival = _arrivals(code, finish)  # (trials, L, n)
    approximate = False
    laminar = laminar_rows(code) if policy == "any-span" else None
    if code.family == "ignore":
        approximate = True
        latency = _order_statistic(arrival[:, 0, :], code.n - code.s_max)
        level = np.where(np.isfinite(latency), 0, -1)
    elif code.family == "multimessage":
        latency = _cover_time(code, arrival)
        level = _level_at(arrival, latency)
    elif laminar is not None:
        latency = _laminar_times(laminar, arrival)
        level = _level_at(arrival, latency)
    else:
        per_level = _per_level_times(code, arrival)
        if per_level is None:
            latency, level = _oracle_times(code, arrival, policy, bound=None)
        else:
            latency = per_level.min(axis=1)
            level = np.where(np.isfinite(latency), per_level.argmin(axis=1), -1)
            if policy == "any-span":
                latency, level = _oracle_times(code, arrival, policy, bound=latency)
    return DecodeTimes(latency, level, _load(code, durations, finish, latency), approximate)


def _arrivals(code: Code, finish: np.ndarray) -> np.ndarray:
    """``(trials, L, n)``: arrival of message (l, i) = finish[:, i, prefix[l, i] - 1]."""
    trials, n, width = finish.shape
    at = (np.arange(n) * width + np.maximum(code.prefix, 1) - 1).ravel()  # (L * n,) positions in a trial
    arrival = finish.reshape(trials, n * width).take(at, axis=1).reshape(trials, code.n_levels, n)
    if not code.prefix.all():  # a slot holding nothing (a removed slot of an elastic plan) sends nothing
        arrival[:, code.prefix == 0] = np.inf
    return arrival


def _order_statistic(times: np.ndarray, m: int) -> np.ndarray:
    """The m-th smallest (1-based) of each row of ``(trials, n)``."""
    return np.partition(times, m - 1, axis=1)[:, m - 1]


def _level_kind(code: Code, level: int) -> str | None:
    name = code.construction[level] if level < len(code.construction) else ""
    if code.family in ("crc", "nested", "uncoded") and code.level_is_mds(level):
        return "mds"
    if code.family in ("frc", "nested-frc") and name in FRC_CONSTRUCTIONS:
        return "frc"
    return None


def _per_level_times(code: Code, arrival: np.ndarray) -> np.ndarray | None:
    """``(trials, L)`` per-level decode instants by the fast paths, or None if a level has none."""
    kinds = [_level_kind(code, level) for level in range(code.n_levels)]
    if None in kinds:
        return None
    out = np.empty(arrival.shape[:2])
    for level, kind in enumerate(kinds):
        times = arrival[:, level, :]
        if kind == "mds":
            out[:, level] = _order_statistic(times, code.holders - code.levels[level])
        else:
            # groups: slots sending the same row (FRC members send the uncoded sum of their block); the
            # level decodes when the slowest group has its first finisher
            slots, starts = _groups(code, level)
            out[:, level] = np.minimum.reduceat(times[:, slots], starts, axis=1).max(axis=1)
    return out


_GROUPS: weakref.WeakKeyDictionary[Code, dict[int, tuple[np.ndarray, np.ndarray]]] = weakref.WeakKeyDictionary()


def _groups(code: Code, level: int) -> tuple[np.ndarray, np.ndarray]:
    """Slots of `level` grouped by their row's support, and the `reduceat` offset of each group."""
    per_code = _GROUPS.setdefault(code, {})
    if level not in per_code:
        bits = code.support_bits[level * code.n:(level + 1) * code.n]
        # a slot holding nothing (grow=, an elastic plan) is in no group
        slots = np.array(sorted((i for i in range(code.n) if bits[i]), key=lambda i: (bits[i], i)), dtype=np.int64)
        starts = np.array([t for t in range(len(slots)) if t == 0 or bits[slots[t]] != bits[slots[t - 1]]],
                          dtype=np.int64)
        per_code[level] = (slots, starts)
    return per_code[level]


def _laminar_times(laminar: Laminar, arrival: np.ndarray) -> np.ndarray:
    """``(trials,)`` any-span decode instants of a code with laminar indicator rows (uncoded, FRC, nested
    FRC; see `codes.Laminar`), by the recursion on its blocks: a block is spanned from the earlier of its
    own first row and the instant all its children are spanned (when they partition it); the code decodes
    when every root is spanned. Exactly the instants of the Decoder's span test, without linear algebra:
    O(trials * messages)."""
    trials = arrival.shape[0]
    flat = arrival.reshape(trials, -1)
    spanned = np.minimum.reduceat(flat[:, laminar.messages], laminar.message_starts, axis=1)
    starts, inner = laminar.layer_starts, laminar.layer_starts[1]  # blocks from `inner` on have children
    bounds = np.r_[laminar.child_starts, len(laminar.children)]
    for lo, hi in zip(starts[1:-1], starts[2:]):
        first, last = int(bounds[lo - inner]), int(bounds[hi - inner])
        kids = laminar.children[first:last]
        together = np.maximum.reduceat(spanned[:, kids], bounds[lo - inner:hi - inner] - first, axis=1)
        together[:, ~laminar.covered[lo:hi]] = math.inf
        np.minimum(spanned[:, lo:hi], together, out=spanned[:, lo:hi])
    if not laminar.roots_cover:
        return np.full(trials, math.inf)
    return spanned[:, laminar.roots].max(axis=1)


def _cover_time(code: Code, arrival: np.ndarray) -> np.ndarray:
    """``(trials,)`` first instant at which every partition is in the support of some received row
    (exact decodability for multimessage; a lower bound for every code)."""
    flat = arrival.reshape(arrival.shape[0], -1)
    table = _cover_table(code)  # (k, c) message ids, padded with -1
    padded = np.concatenate([flat, np.full((flat.shape[0], 1), math.inf)], axis=1)
    return padded[:, table].min(axis=2).max(axis=1)


_COVER_TABLES: weakref.WeakKeyDictionary[Code, np.ndarray] = weakref.WeakKeyDictionary()


def _cover_table(code: Code) -> np.ndarray:
    table = _COVER_TABLES.get(code)
    if table is None:
        holders = [[m for m in range(code.n_messages) if code.support_bits[m] >> j & 1] for j in range(code.k)]
        width = max(1, max(len(h) for h in holders))
        table = np.full((code.k, width), -1, dtype=np.int64)
        for j, h in enumerate(holders):
            table[j, : len(h)] = h
        _COVER_TABLES[code] = table
    return table


def _level_at(arrival: np.ndarray, latency: np.ndarray) -> np.ndarray:
    """Level of the message arriving exactly at `latency` (the triggering event); -1 where inf."""
    trials, L, n = arrival.shape
    flat = arrival.reshape(trials, L * n)
    hit = np.where(np.isfinite(latency), np.argmax(flat == latency[:, None], axis=1) // n, -1)
    return hit.astype(np.int64)


# -- the generic oracle ------------------------------------------------------------------------

_DECODERS: weakref.WeakKeyDictionary[Code, dict[str, Decoder]] = weakref.WeakKeyDictionary()


def _decoder(code: Code, policy: str) -> Decoder:
    per_code = _DECODERS.setdefault(code, {})
    if policy not in per_code:
        per_code[policy] = Decoder(code, policy, cache_size=1 << 20)
    return per_code[policy]


def _oracle_times(code: Code, arrival: np.ndarray, policy: str,
                  bound: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Earliest decodable prefix of each trial's time-sorted events, by binary search through the Decoder.

    bound: ``(trials,)`` instants known to be decodable (the per-level instants), or None. Returns
    ``(latency (trials,), level (trials,))``.
    """
    trials, L, n = arrival.shape
    flat = arrival.reshape(trials, L * n)
    times = np.sort(flat, axis=1)
    finite = np.isfinite(times).sum(axis=1)
    # lo: a prefix length known not decodable; hi: a prefix length known decodable (or to be checked)
    lo = (times < _cover_time(code, arrival)[:, None]).sum(axis=1)
    if bound is None:
        hi = finite.copy()
        unknown = lo < hi
    else:
        hi = np.where(np.isfinite(bound), (times <= bound[:, None]).sum(axis=1), finite)
        unknown = ~np.isfinite(bound) & (lo < hi)
    decoder = _decoder(code, policy)
    never = ~unknown & ~np.isfinite(bound) if bound is not None else ~unknown
    if unknown.any():  # the full finite set: decodable at all?
        rows = np.flatnonzero(unknown)
        ok = _decodable(code, decoder, flat[rows] <= times[rows, hi[rows] - 1][:, None])
        never[rows[~ok]] = True
    never |= lo >= hi
    active = np.flatnonzero(~never & (hi - lo > 1))
    probes, first = 0, True
    while active.size:
        # probe the cover instant first: mixing levels usually decodes right there
        mid = lo[active] + 1 if first else (lo[active] + hi[active]) // 2
        first = False
        ok = _decodable(code, decoder, flat[active] <= times[active, mid - 1][:, None])
        probes += active.size
        hi[active[ok]] = mid[ok]
        lo[active[~ok]] = mid[~ok]
        active = active[hi[active] - lo[active] > 1]
    latency = np.where(never, math.inf, times[np.arange(trials), np.maximum(hi, 1) - 1])
    _log.debug("oracle trials=%d probes=%d cache=%s", trials, probes, decoder.cache_info())
    return latency, _level_at(arrival, latency)


def _decodable(code: Code, decoder: Decoder, received: np.ndarray) -> np.ndarray:
    """``(rows,)`` bool: is each received set decodable? `received` is ``(rows, L*n)`` bool (columns =
    message ids), prefix-closed per slot (a slot's level-l message arrives after its level-(l-1) one).

    A set in which every sending slot's rows are independent over the partitions it has computed
    spans exactly the partitions covered, so it is decodable iff they are all covered (nested codes
    with levels 0, 1, ..., s: a worker past level l has sent l+1 rows on its l+1 partitions). Every
    other set goes through the Decoder.
    """
    trials = received.shape[0]
    reached = received.reshape(trials, code.n_levels, code.n).sum(axis=1)  # (rows, n) levels received
    settled = np.all(_full_slots(code)[reached, np.arange(code.n)], axis=1)
    answers = np.empty(trials, dtype=bool)
    if settled.any():
        padded = np.concatenate([received[settled], np.zeros((int(settled.sum()), 1), dtype=bool)], axis=1)
        answers[settled] = np.all(np.any(padded[:, _cover_table(code)], axis=2), axis=1)
    rest = np.flatnonzero(~settled)
    if rest.size:
        answers[rest] = _decoder_answers(decoder, received[rest])
    return answers


FULL_SLOT_MAX_COND = 1e6
_FULL_SLOTS: weakref.WeakKeyDictionary[Code, np.ndarray] = weakref.WeakKeyDictionary()


def _full_slots(code: Code) -> np.ndarray:
    """``(L+1, n)`` bool: entry [m, i] is True when slot i's first m rows are independent (cond <=
    FULL_SLOT_MAX_COND) over the ``prefix[m-1, i]`` partitions it computed for them (always for m = 0)."""
    table = _FULL_SLOTS.get(code)
    if table is None:
        table = np.zeros((code.n_levels + 1, code.n), dtype=bool)
        table[0] = True
        for m in range(1, code.n_levels + 1):
            for i in range(code.n):
                width = int(code.prefix[m - 1, i])
                if width != m:
                    continue
                rows = code.B[:m, i][:, list(code.order[i][:width])]
                sv = np.linalg.svd(rows, compute_uv=False)
                table[m, i] = sv[-1] > 0 and sv[0] / sv[-1] <= FULL_SLOT_MAX_COND
        _FULL_SLOTS[code] = table
    return table


def _decoder_answers(decoder: Decoder, received: np.ndarray) -> np.ndarray:
    """`Decoder.solve` on each distinct received set (bitmasks deduplicated with np.unique)."""
    packed = np.packbits(received, axis=1, bitorder="little")
    words = -(-packed.shape[1] // 8)
    packed = np.pad(packed, ((0, 0), (0, 8 * words - packed.shape[1])))
    key = np.ascontiguousarray(packed).view("<u8")  # (rows, words)
    if words == 1:  # n * L <= 64: one uint64 per set
        uniq, inverse = np.unique(key[:, 0], return_inverse=True)
        masks = [int(m) for m in uniq]
    else:
        uniq, inverse = np.unique(key, axis=0, return_inverse=True)
        masks = [sum(int(w) << (64 * q) for q, w in enumerate(row)) for row in uniq]
    answers = np.fromiter((decoder.solve(m) is not None for m in masks), dtype=bool, count=len(masks))
    return answers[inverse.reshape(-1)]


# -- load --------------------------------------------------------------------------------------


def _load(code: Code, durations: np.ndarray, finish: np.ndarray, latency: np.ndarray) -> np.ndarray:
    """Mean fraction of the data computed per responsive worker by `latency` (see DecodeTimes.load).

    Slot i has finished the partitions whose finish is <= T (a prefix of its order, since `finish` is
    a cumulative sum) and a fraction of the next one; only that one partition needs a division."""
    trials, _, width = durations.shape
    lengths = _order_lengths(code)
    T = latency[:, None]
    done = np.minimum(np.count_nonzero(finish <= T[:, :, None], axis=2), lengths)  # (trials, n)
    nxt = np.minimum(done, width - 1)[:, :, None]
    d = np.take_along_axis(durations, nxt, axis=2)[:, :, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        partial = np.clip((T - (np.take_along_axis(finish, nxt, axis=2)[:, :, 0] - d)) / d, 0.0, 1.0)
    partial = np.where(done < lengths, np.nan_to_num(partial, nan=0.0), 0.0)
    responsive = np.isfinite(durations[:, :, 0]) & (lengths > 0)[None, :]  # removed slots hold no work
    per_worker = (done + partial) / code.k
    count = responsive.sum(axis=1)
    total = np.where(responsive, per_worker, 0.0).sum(axis=1)
    return np.divide(total, count, out=np.zeros(trials), where=count > 0)


_LENGTHS: weakref.WeakKeyDictionary[Code, np.ndarray] = weakref.WeakKeyDictionary()


def _order_lengths(code: Code) -> np.ndarray:
    """``(n,)`` len(order[i]) (cached per code)."""
    if code not in _LENGTHS:
        _LENGTHS[code] = np.array([len(o) for o in code.order], dtype=np.int64)
    return _LENGTHS[code]


# ---------------------------------------------------------------------------------------------
# Monte Carlo


@dataclass(frozen=True, slots=True)
class SimResult:
    """Monte Carlo summary of one code under one delay model (latencies in model time).

    mean, ci95: mean latency over decodable trials and its 95% CI half-width (1.96 sigma / sqrt(m)).
    median, p90: quantiles over all trials (inf when more than half / 10% never decode).
    p_excess: fraction of trials with more unresponsive or dead workers than s_max.
    p_fail: fraction of trials never decodable.
    layer_use: ``(L,)`` fraction of trials decoded at each level (sums to 1 - p_fail).
    mean_load: mean over trials of `DecodeTimes.load`.
    """

    code: str
    policy: str
    delay: str
    trials: int
    seed: int
    mean: float
    ci95: float
    median: float
    p90: float
    p_excess: float
    p_fail: float
    layer_use: tuple[float, ...]
    mean_load: float
    approximate: bool
    closed_form: float | None

    def as_dict(self) -> dict[str, object]:
        """The result as plain numbers (JSON-ready)."""
        return {f: getattr(self, f) for f in self.__slots__}  # type: ignore[attr-defined]


def simulate(code: Code, model: DelayModel, trials: int, seed: int,
             policy: str | None = None) -> SimResult:
    """Seeded, vectorized Monte Carlo of `trials` iterations (in chunks of `chunk_trials(n, k)`)."""
    if trials < 1:
        raise ConfigError(f"trials={trials}; need >= 1")
    policy = policy or code.decoder
    rng = np.random.default_rng(seed)
    latency, level, load, unresponsive = [], [], [], []
    approximate = False
    chunk = chunk_trials(code.n, code.k)
    holds = np.array([bool(o) for o in code.order])  # an empty slot (grow=, an elastic plan) is never a dead worker
    for start in range(0, trials, chunk):
        durations = sample_durations(model, code, min(chunk, trials - start), rng, start=start)
        times = decode_times(code, durations, policy)
        latency.append(times.latency)
        level.append(times.level)
        load.append(times.load)
        unresponsive.append((~np.isfinite(durations[:, holds, 0])).sum(axis=1))
        approximate = times.approximate
    T = np.concatenate(latency)
    levels = np.concatenate(level)
    ok = np.isfinite(T)
    m = int(ok.sum())
    mean = float(T[ok].mean()) if m else math.inf
    ci95 = float(1.96 * T[ok].std(ddof=1) / math.sqrt(m)) if m > 1 else math.inf
    median, p90 = (float(q) for q in np.quantile(T, [0.5, 0.9], method="inverted_cdf"))
    use = np.bincount(levels[ok], minlength=code.n_levels)[: code.n_levels] / trials
    result = SimResult(
        code=code.spec, policy=policy, delay=model.spec, trials=trials, seed=seed, mean=mean, ci95=ci95,
        median=median, p90=p90, p_excess=float((np.concatenate(unresponsive) > code.s_max).mean()),
        p_fail=float(1 - m / trials), layer_use=tuple(float(u) for u in use),
        mean_load=float(np.concatenate(load).mean()), approximate=approximate,
        closed_form=closed_form(code, model, policy))
    _log.debug("simulated code=%s policy=%s trials=%d mean=%.4f", code.spec, policy, trials, mean)
    return result


def ideal_latencies_ms(code: Code, model: DelayModel, seed: int, iterations: list[int],
                       compute_s: float = 0.0) -> np.ndarray:
    """What `code` needs per iteration, in ms, on exactly the delays a live run with `seed` injects: the
    model's decode instant on the realized durations, each partition taking `compute_s` more (its measured
    compute, so that a compute-dominated run is compared like with like; communication excluded)."""
    return decode_times(code, realized_durations(code, model, seed, iterations) + compute_s).latency * 1e3
