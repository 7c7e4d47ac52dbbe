"""CRC rows: the constructions of cyclic repetition codes, their validation, and their refusal.

`crc_rows(n, s)` returns the coefficient rows of CRC(s) at n slots, the construction's name, its worst
cond(B_F) and how it was checked; `crc_refusal(n, s)` says when a construction would not ship without
building it (by rule, the cached CRC_TABLE, or the contiguous-set bound); `codes.parse_code` uses both.
The constructions and why they are shaped this way are in the docstring of `flexgc.common.codes` and in
docs/codes.md. Split from codes.py, which holds the `Code` record, the spec grammar and the other
families; this module knows nothing of them.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator

import numpy as np

from flexgc.common.crc_table import CRC_TABLE
from flexgc.common.errors import CodeConstructionError

DEFAULT_MAX_COND = 1e6


def refusal_of_built(n: int, s: int, name: str, cond: float, how: str, max_cond: float) -> str | None:
    """Why a construction `crc_rows` returned is not shipped (None: it ships)."""
    if name not in ("cyclic-mds", "identity") and how != "exhaustive":
        return (f"the best real construction found ({name}) could only be checked on a sample of the "
                f"C({n},{s})={math.comb(n, s)} straggler sets, so it is not shipped")
    if cond > max_cond:
        return f"the best real construction found ({name}) has worst cond(B_F)={cond:.3g} > max_cond={max_cond:g}"
    return None


CONTIGUOUS_BOUND_MARGIN = 1e-6


def crc_refusal(n: int, s: int, max_cond: float = DEFAULT_MAX_COND) -> str | None:
    """Why CRC(s) at n is not shipped, when that is decided without building it; None when only the
    construction can tell (it may still be refused then). Never refuses a code that `crc_rows` would ship,
    and never accepts one: it only answers earlier.

    * n - s even, s > 0, and C(n, s) > EXHAUSTIVE_MAX: the construction would be a searched one, which ships
      only when every straggler set was checked; it is refused whatever it turns out to be.
    * a cached result (CRC_TABLE: every (n, s) up to n = 64 that takes a construction to decide) with a
      worst cond above max_cond.
    * n - s odd (cyclic-MDS): cond(B_F) on the contiguous straggler sets is a lower bound of the worst
      cond over every set (those sets are among the validated ones), and in every exhaustive check so far
      it *is* the worst: the rows lie in a space of trigonometric polynomials, and a contiguous gap of
      missing samples is where interpolation on the unit circle is worst (Pan, arXiv 1504.02118). When it
      already exceeds max_cond the code is refused at the cost of n small SVDs.
    """
    if s == 0:
        return None
    total = math.comb(n, s)
    if (n - s) % 2 == 0 and total > EXHAUSTIVE_MAX:
        return (f"n - s = {n - s} is even, so the only real constructions are searched ones without a proof of "
                f"decodability, and one could only be checked on a sample of the C({n},{s})={total} straggler "
                f"sets (every set is checked up to {EXHAUSTIVE_MAX}), so it is not shipped")
    cached = CRC_TABLE.get((n, s))
    if cached is not None:
        name, cond, how = cached
        if math.isfinite(cond) and cond > max_cond * (1 + CONTIGUOUS_BOUND_MARGIN):
            return refusal_of_built(n, s, name, cond, how, max_cond)
        return None  # builds, or fails to build in `crc_rows` (no candidate decodes)
    if (n - s) % 2 == 1:
        bound, stragglers = contiguous_bound(n, s, stop_above=max_cond * (1 + CONTIGUOUS_BOUND_MARGIN))
        if bound > max_cond * (1 + CONTIGUOUS_BOUND_MARGIN):
            return (f"its cyclic-MDS construction has cond(B_F)={bound:.3g} > max_cond={max_cond:g} already on the "
                    f"contiguous straggler set {{{stragglers[0]}, ..., {stragglers[-1]}}} (a lower bound of the "
                    f"worst cond)")
    return None


@functools.lru_cache(maxsize=16)
def cyclic_mds_rows(n: int, s: int) -> np.ndarray:
    """The real cyclic-MDS CRC(s) rows (n - s odd), read-only; shared by the bound and the construction."""
    return _frozen(rows_from_space(_trig_space(n, n - s), s))


def contiguous_bound(n: int, s: int, stop_above: float = math.inf) -> tuple[float, tuple[int, ...]]:
    """Largest cond(B_F) of the cyclic-MDS CRC(s) rows (n - s odd) over the n contiguous straggler sets
    {t, ..., t+s-1}, and that set; stops at the first set whose cond exceeds `stop_above`. A lower bound of
    the worst cond over all sets (and equal to it wherever it was checked exhaustively)."""
    if (n - s) % 2 != 1 or s == 0:
        raise ValueError(f"n={n} s={s}: contiguous_bound is for cyclic-MDS rows (n - s odd, s > 0)")
    B = cyclic_mds_rows(n, s)
    worst, where = 0.0, tuple[int, ...]()
    for start in range(0, n, 8):
        sets = [tuple((t + j) % n for j in range(s)) for t in range(start, min(n, start + 8))]
        alive = np.array([[i for i in range(n) if i not in p] for p in sets], dtype=np.int64)
        sv = np.linalg.svd(B[alive], compute_uv=False)
        ratio = np.where(sv[:, -1] > 1e-13 * sv[:, 0], sv[:, 0] / np.maximum(sv[:, -1], 1e-300), np.inf)
        if ratio.max() > worst:
            worst, where = float(ratio.max()), sets[int(ratio.argmax())]
        if worst > stop_above:
            break
    return worst, tuple(sorted(where))


def _window(i: int, s: int, n: int) -> list[int]:
    return [(i + j) % n for j in range(s + 1)]


def rows_from_space(G: np.ndarray, s: int) -> np.ndarray:
    """Row i: the unit vector of rowspace(G) supported on the cyclic window {i..i+s}.

    G: ``(n - s, n)`` generator of an MDS code V containing the all-ones vector.
    Returns B: ``(n, n)``; raises CodeConstructionError when a window holds no unique codeword.
    """
    dim, n = G.shape
    B = np.zeros((n, n))
    for i in range(n):
        window = _window(i, s, n)
        outside = np.setdiff1d(np.arange(n), window)
        # coefficients c with (c @ G)[outside] = 0: the null space of G[:, outside]^T is 1-dim for MDS V
        if outside.size:
            _, sv, vt = np.linalg.svd(G[:, outside].T)
            if sv.size == dim and sv[-1] > 1e-12 * sv[0]:
                raise CodeConstructionError(f"n={n} s={s}: window {i} holds no codeword")
            c = vt[-1]
        else:
            c = np.linalg.lstsq(G.T, np.ones(n), rcond=None)[0]
        row = c @ G
        row[outside] = 0.0
        norm = np.linalg.norm(row)
        if norm < 1e-12:
            raise CodeConstructionError(f"n={n} s={s}: window {i} codeword vanishes")
        row /= norm
        # a fixed sign convention: the first window entry is positive
        if row[window[0]] < 0:
            row = -row
        B[i] = row
    return B


def _trig_space(n: int, dim: int, phase: float = 0.0) -> np.ndarray:
    """Real trigonometric polynomials of degree <= (dim-1)//2 at theta_t = 2 pi t / n; for even dim, one
    extra top-frequency cosine shifted by `phase`. Rows: 1, cos, sin, cos 2x, sin 2x, ..."""
    theta = 2 * np.pi * np.arange(n) / n
    rows = [np.ones(n)]
    f = 1
    while len(rows) + 2 <= dim:
        rows += [np.cos(f * theta), np.sin(f * theta)]
        f += 1
    if len(rows) < dim:
        rows.append(np.cos(f * theta - phase))
    return np.array(rows)


def _random_space(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = np.hstack([np.ones((n, 1)), rng.standard_normal((n, dim - 1))])
    Q, _ = np.linalg.qr(X)
    return Q.T


EXHAUSTIVE_MAX = 60_000      # validate every straggler set up to this many, else a seeded sample


SAMPLED_PATTERNS = 4_000


SCREEN_PATTERNS = 600         # candidates are first screened on this many sets


_BATCH = 2048


def validation_patterns(n: int, s: int, samples: int = SAMPLED_PATTERNS, seed: int = 1234,
                        exhaustive_max: int = EXHAUSTIVE_MAX) -> list[tuple[int, ...]]:
    """Straggler sets of size s used to validate a construction: all C(n, s) of them when there are at
    most `exhaustive_max`, else every contiguous block, evenly spread sets and `samples` seeded random
    sets (then the worst cond found is a lower bound of the true worst)."""
    if s == 0:
        return [()]
    if math.comb(n, s) <= exhaustive_max:
        return list(itertools.combinations(range(n), s))
    pats = {tuple(sorted((st + j) % n for j in range(s))) for st in range(n)}
    pats |= {tuple(sorted({(st + (j * n) // s) % n for j in range(s)})) for st in range(n)}
    rng = np.random.default_rng(seed)
    while len(pats) < samples + 2 * n:
        pats.add(tuple(sorted(int(x) for x in rng.choice(n, s, replace=False))))
    return [p for p in sorted(pats) if len(p) == s]


def worst_condition(B: np.ndarray, patterns: list[tuple[int, ...]] | list[tuple[()]],
                    over_rank: bool = False) -> float:
    """Worst cond(B_F) = sigma_max / sigma_min over the straggler sets (F = the other slots), batched.

    B: ``(n, k)`` rows of one level; every pattern has the same size s. By default a rank-deficient B_F
    (for a CRC level: a set that cannot decode) gives inf: every row lies in the (n - s)-dim space V
    that contains 1, so full rank n - s means rowspace(B_F) = V and the set decodes exactly. With
    `over_rank`, sigma_min is the smallest nonzero singular value (as the decoder reports cond; FRC's
    repeated rows are rank-deficient by design).
    """
    n = B.shape[0]
    alive = np.array([[i for i in range(n) if i not in p] for p in patterns], dtype=np.int64)
    worst = 1.0
    for start in range(0, len(alive), _BATCH):
        sv = np.linalg.svd(B[alive[start:start + _BATCH]], compute_uv=False)  # (batch, n - s)
        if over_rank:
            smallest = np.where(sv > 1e-10 * sv[:, :1], sv, np.inf).min(axis=1)
        else:
            smallest = sv[:, -1]
        ratio = np.where(smallest > 1e-13 * sv[:, 0], sv[:, 0] / np.maximum(smallest, 1e-300), np.inf)
        worst = max(worst, float(ratio.max()))
        if math.isinf(worst):
            break
    return worst


@functools.lru_cache(maxsize=256)
def crc_rows(n: int, s: int) -> tuple[np.ndarray, str, float, str]:
    """CRC(s) rows for n slots: ``(B (n, n), construction name, worst validated cond(B_F), validation)``,
    validation being ``exhaustive`` (every straggler set) or ``sampled`` (the cond is a lower bound).

    Where CRC_TABLE holds (n, s), the rows are those of the construction it names (the same rows
    `construct_crc_rows` builds, without the search) and the cond and validation are the cached ones;
    elsewhere `construct_crc_rows` searches and validates."""
    cached = CRC_TABLE.get((n, s))
    if cached is None:
        return construct_crc_rows(n, s)
    name, cond, how = cached
    if not math.isfinite(cond):
        raise CodeConstructionError(f"crc s={s} at n={n}: no candidate construction decodes every validated "
                                    f"straggler set")
    if name == "cyclic-mds":
        return cyclic_mds_rows(n, s), name, cond, how
    return _frozen(rows_from_space(_candidate_space(n, n - s, name), s)), name, cond, how


def _candidate_space(n: int, dim: int, name: str) -> np.ndarray:
    """The generator of the named candidate (the names `construct_crc_rows` gives)."""
    if name == "cyclic-mds":
        return _trig_space(n, dim)
    if name.startswith("trig-phase:"):
        return _trig_space(n, dim, float(name.split(":")[1]) * np.pi / n)
    if name.startswith("random-orthonormal:seed="):
        return _random_space(n, dim, int(name.split("=")[1]))
    raise ValueError(f"unknown construction {name!r}")


def construct_crc_rows(n: int, s: int) -> tuple[np.ndarray, str, float, str]:
    """`crc_rows` without the cache: build, and for n - s even search, then validate.

    For n - s even the candidates are screened on a small set of straggler patterns and the three best
    are validated in full; a structured (trig-phase) candidate is preferred unless a random one is
    better by more than 2x (structured rows also decode better in float32)."""
    if s == 0:
        return np.eye(n), "identity", 1.0, "exhaustive"
    dim = n - s
    patterns = validation_patterns(n, s)
    how = "exhaustive" if math.comb(n, s) <= EXHAUSTIVE_MAX else "sampled"
    if dim % 2 == 1:
        B = cyclic_mds_rows(n, s)
        return _frozen(B), "cyclic-mds", worst_condition(B, patterns), how
    candidates: Iterator[tuple[str, np.ndarray]] = itertools.chain(
        ((f"trig-phase:{fr}", _trig_space(n, dim, fr * np.pi / n)) for fr in (0.25, 0.5, 0.75)),
        ((f"random-orthonormal:seed={seed}", _random_space(n, dim, seed)) for seed in range(16)),
    )
    screen = validation_patterns(n, s, samples=SCREEN_PATTERNS, exhaustive_max=2 * SCREEN_PATTERNS)
    screened: list[tuple[float, str, np.ndarray]] = []
    for name, G in candidates:
        try:
            B = rows_from_space(G, s)
        except CodeConstructionError:
            continue
        cond = worst_condition(B, screen)
        if math.isfinite(cond):
            screened.append((cond, name, B))
    screened.sort(key=lambda c: c[0])
    best: tuple[float, float, str, np.ndarray] | None = None
    for _, name, B in screened[:3]:  # the full validation only for the three best screened candidates
        cond = worst_condition(B, patterns)
        score = cond * (1.0 if name.startswith("trig-phase") else 2.0)
        if best is None or score < best[0]:
            best = (score, cond, name, B)
    if best is None or math.isinf(best[1]):
        raise CodeConstructionError(f"crc s={s} at n={n}: no candidate construction decodes every validated "
                                    f"straggler set")
    return _frozen(best[3]), best[2], best[1], how


def _frozen(B: np.ndarray) -> np.ndarray:
    B = np.ascontiguousarray(B)
    B.setflags(write=False)
    return B
