"""The one decoder every code shares (docs/design.md §2.8).

A received message is identified by its message id (``level * n + slot``, see `Code.message_id`) and
carries the vector ``f = B[level, slot] @ G`` where G stacks the partial gradients ``g_j``. The target
is ``1^T G = sum_j g_j``. The decoder decides whether the all-ones row lies in the span of the received
rows, and if so finds weights ``a`` with ``a^T B_F = 1^T`` (minimum-norm, via the SVD). Weights are
cached per arrival pattern (a bitmask of message ids) in a bounded LRU, so a steady state with
repeating patterns does no linear algebra. The decode itself is one BLAS call over a ``(m, d)`` buffer.

Where every row is a multiple of the indicator of a block of partitions and the blocks are laminar
(uncoded, FRC, nested FRC, multimessage: `codes.Laminar`), a set that does not span the all-ones vector is
recognized by a walk over the blocks, without an SVD; only a decodable set is solved (for its weights).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from flexgc.common.codes import DECODER_POLICIES, Code, laminar_rows
from flexgc.common.errors import ConfigError

_log = logging.getLogger(__name__)

RESIDUAL_TOL = 1e-9
RCOND = 1e-10


@dataclass(frozen=True, slots=True)
class Decoding:
    """Weights that turn received messages into the gradient sum.

    messages: message ids, aligned with `weights` (only those with a nonzero weight).
    residual: ||a^T B_F - 1||_2 of the system solved.
    cond: condition number of the system solved, i.e. of every received row offered to the solve (not only
        those left with a nonzero weight): sigma_max / sigma_min over its numerical rank.
    level: highest level among the messages used.
    exact: False for least-squares or ignore-s (rescaled) decodes; such gradients are flagged.
    """

    messages: tuple[int, ...]
    weights: np.ndarray
    residual: float
    cond: float
    level: int
    exact: bool


def mask_of(messages: Iterable[int]) -> int:
    """Bitmask of a set of message ids."""
    mask = 0
    for m in messages:
        mask |= 1 << m
    return mask


def ids_of(mask: int) -> list[int]:
    """Message ids set in a bitmask, ascending."""
    out, m = [], mask
    while m:
        low = m & -m
        out.append(low.bit_length() - 1)
        m ^= low
    return out


class Decoder:
    """Decodability test, weights and weighted sum for one code under one policy."""

    def __init__(self, code: Code, policy: str | None = None, cache_size: int = 65536,
                 residual_tol: float = RESIDUAL_TOL) -> None:
        policy = policy or code.decoder
        if policy not in DECODER_POLICIES:
            raise ConfigError(f"decoder={policy!r}; allowed: {', '.join(DECODER_POLICIES)}")
        if policy == "per-level" and code.family == "multimessage":
            raise ConfigError("decoder=per-level is meaningless for multimessage; allowed: any-span")
        self.code = code
        self.policy = policy
        self.residual_tol = residual_tol
        self._cache: OrderedDict[int, Decoding | None] = OrderedDict()
        self._cache_size = cache_size
        self._rows = code.B.reshape(code.n_messages, code.k)
        self._all = (1 << code.k) - 1
        self._level_mask = [sum(1 << code.message_id(level, i) for i in range(code.n))
                            for level in range(code.n_levels)]
        self._mds = [code.level_is_mds(level) for level in range(code.n_levels)]
        self._holders = code.holders  # slots that send anything (n, but for empty slots: grow=, elastic plans)
        # indicator rows of a laminar family (uncoded, FRC, nested FRC): span test without linear algebra
        self._laminar = laminar_rows(code) if policy == "any-span" else None
        self._blocks = _partition_blocks(code)
        # messages with a nonzero row (a removed slot of an elastic plan sends none that count)
        self._nonzero = sum(1 << m for m in range(code.n_messages) if code.support_bits[m])
        self.hits = 0
        self.misses = 0

    # -- decodability --------------------------------------------------------------------------
    def solve(self, received: Iterable[int] | int) -> Decoding | None:
        """Exact decoding weights for the received message ids (or a bitmask), or None if not yet.

        For an ``ignore`` code, n - s received messages give an approximate (rescaled) decoding.
        """
        mask = (received if isinstance(received, int) else mask_of(received)) & self._nonzero
        cached = self._cache.get(mask, _MISSING)
        if cached is not _MISSING:
            self.hits += 1
            self._cache.move_to_end(mask)
            return cached  # type: ignore[return-value]
        self.misses += 1
        result = self._solve_uncached(mask)
        self._cache[mask] = result
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return result

    def decodable(self, received: Iterable[int] | int) -> bool:
        """Whether the messages in `mask` decode under this decoder's policy."""
        return self.solve(received) is not None

    def _covers(self, mask: int) -> bool:
        bits = 0
        support = self.code.support_bits
        for m in ids_of(mask):
            bits |= support[m]
        return bits == self._all

    def _solve_uncached(self, mask: int) -> Decoding | None:
        if self.policy == "per-level":
            # the per-level rule of Maßny et al. (arXiv 2212.08580): n - s_l messages of one MDS level (even
            # if fewer happen to span 1, as the CRC(1) rows at even n do); an FRC level once its rows span 1
            # (every group has a finisher)
            for level in range(self.code.n_levels):
                sub = mask & self._level_mask[level]
                if self._mds[level] and sub.bit_count() < self._holders - self.code.levels[level]:
                    continue
                if sub and self._covers(sub):
                    d = self._least_squares(sub)
                    if d.residual <= self.residual_tol:
                        return d
        elif mask and (self._covers(mask) if self._laminar is None else self._laminar.spans_ones(mask)):
            d = self._least_squares(mask)
            if d.residual <= self.residual_tol:
                return d
        s = self.code.ignore_s
        if s is not None and mask.bit_count() >= self.code.n - s:
            return self._rescaled(mask)
        return None

    def approximate(self, received: Iterable[int] | int) -> Decoding:
        """Least-squares weights minimizing ||a^T B_F - 1|| (flagged inexact unless the residual is ~0)."""
        mask = received if isinstance(received, int) else mask_of(received)
        if not mask:
            return Decoding((), np.zeros(0), math.sqrt(self.code.k), math.inf, -1, False)
        exact = self.solve(mask)
        if exact is not None:
            return exact
        d = self._least_squares(mask)
        return Decoding(d.messages, d.weights, d.residual, d.cond, d.level, False)

    def _rescaled(self, mask: int) -> Decoding:
        """ignore-s: sum the received uncoded partials and rescale by k / (partitions covered)."""
        ids = ids_of(mask)
        rows = self._rows[ids]
        covered = int(np.count_nonzero(rows.sum(axis=0)))
        w = np.full(len(ids), self.code.k / covered)
        residual = float(np.linalg.norm(w @ rows - 1.0))
        return Decoding(tuple(ids), w, residual, 1.0, 0, residual <= self.residual_tol)

    def _least_squares(self, mask: int) -> Decoding:
        ids = ids_of(mask)
        if self._blocks is not None and self._covers(mask):
            return self._block_weights(ids)
        R = self._rows[ids]  # (m, k)
        U, sv, Vt = np.linalg.svd(R, full_matrices=False)
        rank = int(np.count_nonzero(sv > RCOND * sv[0])) if sv.size and sv[0] > 0 else 0
        if rank == 0:
            return Decoding((), np.zeros(0), math.sqrt(self.code.k), math.inf, -1, False)
        ones = np.ones(self.code.k)
        # minimum-norm a with R^T a = 1 in the least-squares sense: a = U_r diag(1/sv_r) V_r^T 1
        a = U[:, :rank] @ ((Vt[:rank] @ ones) / sv[:rank])
        residual = float(np.linalg.norm(a @ R - ones))
        keep = np.abs(a) > 1e-13 * max(1.0, float(np.abs(a).max()))
        used = [m for m, kp in zip(ids, keep) if kp]
        level = max((self.code.message_of(m)[0] for m in used), default=-1)
        return Decoding(tuple(used), a[keep], residual, float(sv[0] / sv[rank - 1]), level, True)

    def _block_weights(self, ids: list[int]) -> Decoding:
        """The minimum-norm weights when the rows are indicators of disjoint blocks (uncoded, FRC, ignore):
        a block received c times gives each copy weight 1/c (minimize sum a_i^2 subject to sum a_i = 1 per
        block), with no SVD. The singular values of the received rows are sqrt(c_g |g|) per block g, so
        cond = sqrt(max c_g|g| / min c_g|g|). Equal to `_least_squares`'s SVD solution to rounding (tested);
        at n = 1,024 it takes microseconds where the SVD takes about half a second."""
        blocks = self._blocks
        assert blocks is not None
        copies: dict[int, int] = {}
        for m in ids:
            copies[blocks[m]] = copies.get(blocks[m], 0) + 1
        weights = np.array([1.0 / copies[blocks[m]] for m in ids])
        spread = [c * bits.bit_count() for bits, c in copies.items()]
        level = max((self.code.message_of(m)[0] for m in ids), default=-1)
        return Decoding(tuple(ids), weights, 0.0, math.sqrt(max(spread) / min(spread)), level, True)

    # -- the decode itself ----------------------------------------------------------------------
    @staticmethod
    def combine(decoding: Decoding, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """g = sum_i a_i v_i as one BLAS gemv. `rows` is ``(len(decoding.messages), d)``, aligned with
        `decoding.messages`, float32 or float64; `out` (d,) of the same dtype is filled in place."""
        w = decoding.weights.astype(rows.dtype, copy=False)
        if out is None:
            return np.dot(w, rows)
        np.dot(w, rows, out=out)
        return out

    def cache_info(self) -> dict[str, int]:
        """Hits, misses and size of the per-arrival-pattern cache."""
        return {"size": len(self._cache), "hits": self.hits, "misses": self.misses}


_MISSING = object()


def _partition_blocks(code: Code) -> dict[int, int] | None:
    """message id -> its support bitmask when every row is a 0/1 indicator and any two rows' supports are
    equal or disjoint (one level of blocks partitioning the partitions: uncoded, FRC, ignore-s); else None.
    Nested FRC has several levels of blocks, whose minimum-norm weights couple: it keeps the SVD."""
    rows = code.B.reshape(code.n_messages, code.k)
    if not np.all((rows == 0.0) | (rows == 1.0)):
        return None
    supports = {m: code.support_bits[m] for m in range(code.n_messages) if code.support_bits[m]}
    distinct = set(supports.values())
    union = 0
    for bits in distinct:
        if union & bits:
            return None
        union |= bits
    return supports
