"""Gradient codes as data: an ordered partition list per worker slot and one coefficient row per level.

Every family (docs/design.md §2) is built into the same `Code` record, so one decoder and one worker loop serve
them all. Notation follows docs/design.md §1: `n` worker slots, `k` partitions (k = n here), tolerances
``levels = (s_0 < ... < s_L)``, coefficient rows ``B[l, i]`` of shape ``(k,)``.

CRC construction (numerical quality is part of the contract, see docs/codes.md):

* ``n - s`` odd: the real cyclic-MDS code of Raviv, Tamo, Tandon and Dimakis (arXiv 1707.03858). Its
  rows lie in V = real trigonometric polynomials of degree <= (n-s-1)/2 sampled at the n-th roots of
  unity; row i is the unique (up to sign and scale) vector of V supported on {i, ..., i+s}. Every
  n - s rows decode (BCH bound), so decodability is proven; worst cond(B_F) grows roughly like n^s
  (s = 1: 41 at n = 64; s = 4: 1.2e5 at n = 63; s = 8: refused from n = 33).
* ``n - s`` even: no real cyclic code with 1 in it has this dimension, so flexgc searches a fixed,
  seeded candidate set (trigonometric spaces with one phase-shifted top frequency, and random
  orthonormal spaces containing 1) and keeps the candidate with the smallest worst cond(B_F). Such a
  construction has no proof of decodability, so it is shipped only when *every* straggler set was
  checked (C(n, s) <= EXHAUSTIVE_MAX); otherwise it is refused.
* Any code whose worst cond exceeds ``max_cond`` (default 1e6) is refused; the error names the
  tolerances near s that build.
* ``s = 0``: identity rows.

Most refusals are decided before any search or validation (`crc_refusal`): by rule (n - s even and
C(n, s) > EXHAUSTIVE_MAX), by the cached constructions of CRC_TABLE (common/crc_table.py, n <= 64), or by the
contiguous-straggler bound of a cyclic-MDS code. Unit-circle Vandermonde codes cannot reach s ~ n/8 in
float64; FRC-based codes (indicator rows, `Laminar`) can, and ``auto`` picks them for large n
(`auto_code_spec`; docs/codes.md "Which codes scale").
"""

from __future__ import annotations

import itertools
import math
import weakref
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np

from flexgc.common.crc import (
    DEFAULT_MAX_COND,
    EXHAUSTIVE_MAX,
    crc_refusal,
    crc_rows,
    refusal_of_built,
)
from flexgc.common.crc_table import CRC_TABLE, CRC_TABLE_MAX_N
from flexgc.common.errors import CodeConstructionError, ConfigError
from flexgc.common.specs import Spec, as_float, as_int, as_int_list, parse_spec, reject_unknown

Family = Literal["uncoded", "ignore", "frc", "crc", "nested", "nested-frc", "multimessage", "weighted"]
DecoderPolicy = Literal["any-span", "per-level"]
Signaling = Literal["push", "notify"]

FAMILIES: tuple[str, ...] = get_args(Family)
DECODER_POLICIES: tuple[str, ...] = get_args(DecoderPolicy)
SIGNALINGS: tuple[str, ...] = get_args(Signaling)
_COMMON_OPTIONS = {"decoder", "signaling", "split", "grow"}
MAX_SPLIT = 64
"""At most this many finer partitions per coarse one (``split=M``: k = M * n)."""


@dataclass(frozen=True, eq=False)
class Code:
    """A gradient code for `n` worker slots over `k` partitions.

    Attributes:
        family: one of FAMILIES.
        spec: canonical spec string (round-trips through `parse_code`).
        n, k: worker slots and data partitions.
        levels: tolerance s_l of each level, strictly increasing.
        order: ``order[i]`` is the ordered tuple of partitions slot i computes.
        prefix: ``(L, n)`` ints; slot i sends its level-l message after ``prefix[l, i]`` partitions.
        B: ``(L, n, k)`` coefficient rows; ``B[l, i]`` is supported on ``order[i][:prefix[l, i]]``.
        decoder: decoding policy, ``any-span`` or ``per-level``.
        signaling: ``push`` (send every level's vector) or ``notify`` (note, then vector on request).
        ignore_s: for ``ignore``: the master accepts n - s uncoded results and rescales (approximate).
        construction: per level, how its rows were built.
        worst_cond: per level, the worst cond(B_F) over the validated straggler patterns.
        validation: per CRC level, "exhaustive" (every straggler set checked) or "sampled" (worst_cond is
            then a lower bound); empty for families whose rows are exact by construction.
    """

    family: str
    spec: str
    n: int
    k: int
    levels: tuple[int, ...]
    order: tuple[tuple[int, ...], ...]
    prefix: np.ndarray
    B: np.ndarray
    decoder: str = "any-span"
    signaling: str = "push"
    ignore_s: int | None = None
    construction: tuple[str, ...] = ()
    worst_cond: tuple[float, ...] = ()
    validation: tuple[str, ...] = ()
    support_bits: tuple[int, ...] = field(default=(), repr=False)

    @property
    def holders(self) -> int:
        """Number of slots that hold partitions (n, but for the empty slots of an elastic plan or `grow=`)."""
        return sum(1 for o in self.order if o)

    @property
    def n_levels(self) -> int:
        """Number of levels L (a plain code has one)."""
        return len(self.levels)

    @property
    def s_max(self) -> int:
        """Number of dead workers the code tolerates (for `ignore`, the number it drops)."""
        return self.ignore_s if self.ignore_s is not None else self.levels[-1]

    @property
    def n_messages(self) -> int:
        """Number of distinct coded messages, L * n (one per level and slot)."""
        return self.n_levels * self.n

    def message_id(self, level: int, slot: int) -> int:
        """Flat index of the (level, slot) message: ``level * n + slot``."""
        return level * self.n + slot

    def message_of(self, message_id: int) -> tuple[int, int]:
        """Inverse of `message_id`: ``(level, slot)``."""
        return divmod(message_id, self.n)

    def levels_completed_by(self, slot: int, m: int) -> list[int]:
        """Levels whose message slot `slot` can send right after finishing its m-th partition."""
        return [level for level in range(self.n_levels) if self.prefix[level, slot] == m]

    def level_is_mds(self, level: int) -> bool:
        """Any n - s_l rows of this level decode (the per-level rule of Maßny et al. applies)."""
        name = self.construction[level]
        return name in ("identity", "cyclic-mds") or name.startswith(("trig-phase:", "random-orthonormal:"))

    def max_partitions(self, slot: int) -> int:
        """How many partitions `slot` computes when nobody cancels it (its last level's prefix)."""
        return int(self.prefix[-1, slot])

    def load(self, partitions_done: int) -> float:
        """Fraction of the dataset a worker computed after `partitions_done` partitions."""
        return partitions_done / self.k


# ---------------------------------------------------------------------------------------------
# spec parsing


def parse_code(text: str, n: int, *, field_name: str = "code") -> Code:
    """Build the code described by `text` (e.g. ``nested:levels=0,1,2,3,decoder=per-level``) for n slots."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"workers={n!r}; need an integer >= 1")
    spec = parse_spec(text, field_name)
    if spec.family not in FAMILIES and spec.family != "auto":
        head = spec.family.split(",", 1)[0]
        hint = (f" (options follow a colon: {head}:{spec.family.split(',', 1)[1]})"
                if "," in spec.family and head in (*FAMILIES, "auto") else "")
        raise ConfigError(f"{field_name}={text!r}: unknown family {spec.family!r}{hint}; allowed: "
                          f"{', '.join(FAMILIES)}")
    p = spec.params
    decoder = p.get("decoder", "any-span")
    if decoder not in DECODER_POLICIES:
        raise ConfigError(f"{field_name}: decoder={decoder!r}; allowed: {', '.join(DECODER_POLICIES)}")
    signaling = p.get("signaling", "push")
    if signaling not in SIGNALINGS:
        raise ConfigError(f"{field_name}: signaling={signaling!r}; allowed: {', '.join(SIGNALINGS)}")
    if "grow" in p:
        grow = as_int(spec, "grow", field_name, minimum=0)
        if grow >= n:
            raise ConfigError(f"{field_name}: grow={grow}; need 0 <= grow < n={n} (the code is built for the first "
                              f"n - grow slots, the last grow slots hold nothing until workers join into them)")
        if spec.family == "ignore":
            raise ConfigError(f"{field_name}: grow is meaningless for ignore (it drops the slowest s of all n slots); "
                              f"allowed: s=")
        inner = spec.family + (":" if len(p) > 1 else "") + ",".join(f"{key}={value}" for key, value in p.items()
                                                                      if key != "grow")
        return grow_slots(parse_code(inner, n - grow, field_name=field_name), grow)
    split = as_int(spec, "split", field_name, minimum=1) if "split" in p else 1
    if split > MAX_SPLIT:
        raise ConfigError(f"{field_name}: split={split}; allowed 1..{MAX_SPLIT} (finer partitions per coarse one)")
    if split > 1 and spec.family == "weighted":
        raise ConfigError(f"{field_name}: split is meaningless for weighted (its blocks= sizes are already in "
                          f"finest partitions); allowed: blocks=, ring=, smax=")
    max_cond = DEFAULT_MAX_COND
    if "max_cond" in p:
        max_cond = as_float(spec, "max_cond", field_name, minimum=1.0)

    def need_s(key: str = "s") -> int:
        if key not in p:
            raise ConfigError(f"{field_name}={text!r}: {spec.family} needs {key}=S with 0 <= S < n={n}")
        s = as_int(spec, key, field_name, minimum=0)
        if s >= n:
            raise ConfigError(f"{field_name}: {key}={s}; need 0 <= {key} < n={n} (workers)")
        return s

    fam = spec.family
    if fam == "auto":
        reject_unknown(spec, _COMMON_OPTIONS, field_name)
        chosen = auto_code_spec(n)
        kept = ",".join(f"{key}={p[key]}" for key in ("decoder", "signaling", "split") if key in p)
        return parse_code(chosen + (("," if ":" in chosen else ":") + kept if kept else ""), n,
                          field_name=field_name)
    if fam == "uncoded":
        reject_unknown(spec, _COMMON_OPTIONS, field_name)
        code = _uncoded(n)
    elif fam == "ignore":
        reject_unknown(spec, _COMMON_OPTIONS | {"s"}, field_name)
        code = _uncoded(n, ignore_s=need_s())
    elif fam == "frc":
        reject_unknown(spec, _COMMON_OPTIONS | {"s"}, field_name)
        s = need_s()
        code = _frc_nested(n, (s + 1,), unequal_ok=True)
    elif fam == "crc":
        reject_unknown(spec, _COMMON_OPTIONS | {"s", "max_cond"}, field_name)
        code = _nested_crc(n, (need_s(),), max_cond)
    elif fam == "nested":
        reject_unknown(spec, _COMMON_OPTIONS | {"levels", "smax", "max_cond"}, field_name)
        if ("levels" in p) == ("smax" in p):
            raise ConfigError(f"{field_name}={text!r}: nested needs exactly one of levels=S0,S1,... "
                              f"or smax=S")
        if "smax" in p:
            levels = tuple(range(need_s("smax") + 1))
        else:
            levels = as_int_list(spec, "levels", field_name)
        _check_levels(levels, n, field_name)
        code = _nested_crc(n, levels, max_cond)
    elif fam == "nested-frc":
        reject_unknown(spec, _COMMON_OPTIONS | {"groups"}, field_name)
        if "groups" not in p:
            raise ConfigError(f"{field_name}={text!r}: nested-frc needs groups=M0,M1,... (group sizes, "
                              f"a divisor chain of n={n})")
        groups = as_int_list(spec, "groups", field_name)
        _check_groups(groups, n, field_name)
        code = _frc_nested(n, groups, unequal_ok=False)
    elif fam == "weighted":
        reject_unknown(spec, _COMMON_OPTIONS | {"blocks", "ring", "smax"}, field_name)
        if decoder == "per-level":
            raise ConfigError(f"{field_name}: decoder=per-level is meaningless for weighted (each level's rows "
                              f"are one block per slot, no level decodes alone); allowed: any-span")
        code = _weighted_from_spec(spec, n, need_s("smax"), field_name)
    else:  # multimessage
        reject_unknown(spec, _COMMON_OPTIONS | {"smax"}, field_name)
        if decoder == "per-level":
            raise ConfigError(f"{field_name}: decoder=per-level is meaningless for multimessage "
                              f"(each message is one uncoded partial gradient); allowed: any-span")
        code = _multimessage(n, need_s("smax"))
    if split > 1:
        code = split_partitions(code, split)

    options = []
    if decoder != "any-span":
        options.append(f"decoder={decoder}")
    if signaling != "push":
        options.append(f"signaling={signaling}")
    if "max_cond" in p:
        options.append(f"max_cond={max_cond:g}")
    if split > 1:
        options.append(f"split={split}")
    canonical = _canonical(fam, code)
    if options:
        canonical += ("," if ":" in canonical else ":") + ",".join(options)
    return _replace(code, family=fam, spec=canonical, decoder=decoder, signaling=signaling)


AUTO_CYCLIC_MAX_N = 64
"""`auto` uses the nested cyclic code up to this n (CRC_TABLE decides it at once there)."""


def auto_code_spec(n: int) -> str:
    """The code ``auto`` stands for at n slots (docs/codes.md, "Which codes scale"). Up to n = 64: the nested
    cyclic code with levels 0, 1, 2, 3 (0 .. n-1 below n = 4) when every level builds. Otherwise nested FRC
    on the divisor chain of n that multiplies by the smallest prime factor left, up to n/8 (s_max about
    n/8; indicator rows: no search, nothing to validate), or, when n has no divisor in 2 .. n/8,
    FRC(max(1, n/8 - 1)) with unequal groups."""
    if n <= AUTO_CYCLIC_MAX_N:
        levels = range(min(4, n))
        if all(_builds_at_once(n, s) for s in levels):
            return "nested:levels=" + ",".join(map(str, levels))
    chain = [1]
    while n // chain[-1] > 1:
        rest = n // chain[-1]
        factor = next(f for f in range(2, rest + 1) if rest % f == 0)
        if chain[-1] * factor > n // 8:
            break
        chain.append(chain[-1] * factor)
    if len(chain) > 1:
        return "nested-frc:groups=" + ",".join(map(str, chain))
    return f"frc:s={max(2, n // 8) - 1}" if n > 1 else "uncoded"


def _builds_at_once(n: int, s: int) -> bool:
    """Whether CRC(s) at n ships under the default max_cond, decided by rule, bound or CRC_TABLE alone
    (False when only a construction could tell)."""
    if s == 0:
        return True
    if crc_refusal(n, s) is not None:
        return False
    cached = CRC_TABLE.get((n, s))
    return cached is not None and math.isfinite(cached[1]) and \
        refusal_of_built(n, s, cached[0], cached[1], cached[2], DEFAULT_MAX_COND) is None


def _canonical(family: str, code: Code) -> str:
    if family == "uncoded":
        return "uncoded"
    if family == "ignore":
        return f"ignore:s={code.ignore_s}"
    if family in ("frc", "crc"):
        return f"{family}:s={code.levels[0]}"
    if family == "nested":
        return "nested:levels=" + ",".join(map(str, code.levels))
    if family == "nested-frc":
        return "nested-frc:groups=" + ",".join(str(s + 1) for s in code.levels)
    if family == "weighted":
        return code.spec
    return f"multimessage:smax={code.levels[-1]}"


def _replace(code: Code, **changes: object) -> Code:
    values = {f: getattr(code, f) for f in code.__dataclass_fields__}
    values.update(changes)
    return Code(**values)  # type: ignore[arg-type]


def _check_levels(levels: tuple[int, ...], n: int, field_name: str) -> None:
    if not levels or list(levels) != sorted(set(levels)) or not 0 <= levels[0] <= levels[-1] < n:
        raise ConfigError(f"{field_name}: levels={','.join(map(str, levels))}; need strictly increasing "
                          f"0 <= s_0 < ... < s_L < n={n}")


def _check_groups(groups: tuple[int, ...], n: int, field_name: str) -> None:
    ok = bool(groups) and groups[0] >= 1 and all(b > a and b % a == 0 for a, b in zip(groups, groups[1:]))
    if not ok or n % groups[-1]:
        raise ConfigError(f"{field_name}: groups={','.join(map(str, groups))}; need a divisor chain of "
                          f"n={n}: 1 <= m_0 < m_1 < ..., each dividing the next and n "
                          f"(divisors of {n}: {','.join(str(d) for d in range(1, n + 1) if n % d == 0)})")


# ---------------------------------------------------------------------------------------------
# constructions


def _finish(family: str, n: int, levels: tuple[int, ...], order: list[tuple[int, ...]],
            prefix: np.ndarray, B: np.ndarray, construction: tuple[str, ...],
            worst_cond: tuple[float, ...], ignore_s: int | None = None) -> Code:
    k = B.shape[2]
    bits = []
    for level in range(len(levels)):
        for i in range(n):
            support = np.flatnonzero(B[level, i])
            bits.append(sum(1 << int(j) for j in support))
    B.setflags(write=False)
    prefix.setflags(write=False)
    return Code(family=family, spec=family, n=n, k=k, levels=levels, order=tuple(order), prefix=prefix,
                B=B, ignore_s=ignore_s, construction=construction, worst_cond=worst_cond,
                support_bits=tuple(bits))


def _uncoded(n: int, ignore_s: int | None = None) -> Code:
    B = np.eye(n)[None, :, :].copy()
    prefix = np.ones((1, n), dtype=np.int64)
    return _finish("ignore" if ignore_s is not None else "uncoded", n, (0,), [(i,) for i in range(n)],
                   prefix, B, ("identity",), (1.0,), ignore_s=ignore_s)


def _multimessage(n: int, smax: int) -> Code:
    levels = tuple(range(smax + 1))
    order = [tuple((i + j) % n for j in range(smax + 1)) for i in range(n)]
    B = np.zeros((len(levels), n, n))
    prefix = np.zeros((len(levels), n), dtype=np.int64)
    for level in levels:
        for i in range(n):
            B[level, i, order[i][level]] = 1.0
            prefix[level, i] = level + 1
    return _finish("multimessage", n, levels, order, prefix, B, ("identity",) * len(levels),
                   (1.0,) * len(levels))


def split_partitions(code: Code, m: int) -> Code:
    """The same code on m times finer partitions (``split=M``, k = m * code.k): coarse partition j becomes the
    fine partitions j*m .. j*m + m - 1, computed in that order where j was, and every row weight of j is
    repeated on them. A fine-partition gradient sum over a coarse block is that block's gradient, so a set
    of rows spans 1 exactly when it did before and every decoding weight is unchanged (rows scale by
    sqrt(m), cond(B_F) is the same); only the grain of the work changes, so that a plan may later move
    load between slots in steps of 1/k (docs/design.md §2.10)."""
    if m == 1:
        return code
    n = code.n
    order = [tuple(j * m + t for j in o for t in range(m)) for o in code.order]
    B = np.repeat(code.B, m, axis=2)
    prefix = (code.prefix * m).astype(np.int64)
    split = _finish(code.family, n, code.levels, order, prefix, B, code.construction, code.worst_cond,
                    ignore_s=code.ignore_s)
    return _replace(split, validation=code.validation)


def grow_slots(code: Code, extra: int) -> Code:
    """`code` with `extra` more slots that hold nothing (``grow=E``, docs/design.md §2.10): an elastic job starts
    on its code for the workers it has, with room for up to E more; a worker that joins takes an empty slot
    and a later plan gives it a share. The empty slots send nothing, so every decode, tolerance and cond is
    the code's own."""
    if extra == 0:
        return code
    n, L = code.n + extra, code.n_levels
    prefix = np.concatenate([code.prefix, np.zeros((L, extra), dtype=np.int64)], axis=1)
    B = np.concatenate([code.B, np.zeros((L, extra, code.k))], axis=1)
    grown = _finish(code.family, n, code.levels, [*code.order, *[()] * extra], prefix, B, code.construction,
                    code.worst_cond, ignore_s=code.ignore_s)
    spec = code.spec + ("," if ":" in code.spec else ":") + f"grow={extra}"
    return _replace(grown, spec=spec, decoder=code.decoder, signaling=code.signaling, validation=code.validation)


def weighted_code(blocks: tuple[int, ...] | list[int], ring: tuple[int, ...] | list[int], smax: int) -> Code:
    """The speed-weighted nested code (family ``weighted``, docs/design.md §2.10).

    blocks[i] is the number of partitions of slot i's own block (k = sum(blocks); the blocks are
    consecutive ranges in slot order), ring a permutation of the slots. A slot with blocks[i] = 0 is
    *removed* (elastic membership: its worker is gone): it holds nothing and the ring skips it. Each
    other slot computes its own block, then the blocks of the smax slots before it on the ring (skipping
    removed ones, cyclically), and after each block sends that block's uncoded sum as the message of
    level l = 0, 1, ..., smax. Every block is held by smax + 1 distinct slots, so any smax unresponsive
    slots leave a holder of each block: 1 is in the span (exact; the rows are indicators of disjoint or
    equal blocks, `Laminar`, decoded with weights 1/c per copy and no solve; the stated worst cond is the
    bound sqrt((smax + 1) max c / min c)). With no straggler every slot stops after its own block, so
    sizing blocks in proportion to speed balances level 0.
    """
    n = len(blocks)
    if sorted(ring) != list(range(n)):
        raise ConfigError(f"weighted: ring={'+'.join(map(str, ring))} must be a permutation of the slots 0..{n - 1}")
    active = [slot for slot in ring if blocks[slot] > 0]
    if not blocks or min(blocks) < 0 or not active:
        raise ConfigError(f"weighted: blocks={'+'.join(map(str, blocks))}; every slot needs a block of >= 0 "
                          f"partitions (0: removed), at least one slot >= 1")
    if not 0 <= smax < len(active):
        raise ConfigError(f"weighted: smax={smax}; need 0 <= smax < {len(active)} (the slots with a block)")
    k = int(sum(blocks))
    starts = list(itertools.accumulate([0, *blocks[:-1]]))
    pos = {slot: p for p, slot in enumerate(active)}
    levels = tuple(range(smax + 1))
    B = np.zeros((smax + 1, n, k))
    prefix = np.zeros((smax + 1, n), dtype=np.int64)
    order: list[tuple[int, ...]] = [() for _ in range(n)]
    for i in active:
        seq: list[int] = []
        for level in levels:
            owner = active[(pos[i] - level) % len(active)]
            part = range(starts[owner], starts[owner] + blocks[owner])
            seq.extend(part)
            prefix[level, i] = len(seq)
            B[level, i, list(part)] = 1.0
        order[i] = tuple(seq)
    # B_F holds each received block b as c_b equal indicator rows (1 <= c_b <= smax + 1): its singular values
    # are sqrt(c_b |b|), so cond(B_F) <= sqrt((smax + 1) max|b| / min|b|); the decoder needs no solve for it
    # (laminar rows: weight 1/c_b per copy)
    sizes = [blocks[i] for i in active]
    bound = math.sqrt((smax + 1) * max(sizes) / min(sizes))
    code = _finish("weighted", n, levels, order, prefix, B, ("weighted-blocks",) * len(levels),
                   (bound,) * len(levels))
    spec = (f"weighted:blocks={'+'.join(map(str, blocks))},ring={'+'.join(map(str, ring))},smax={smax}")
    return _replace(code, spec=spec)


def removed_slots(code: Code) -> tuple[int, ...]:
    """Slots that hold no partition (a `weighted` plan's removed slots: their workers are gone)."""
    return tuple(i for i in range(code.n) if not code.order[i])


def _weighted_from_spec(spec: Spec, n: int, smax: int, field_name: str) -> Code:
    for key in ("blocks", "ring"):
        if key not in spec.params:
            raise ConfigError(f"{field_name}={spec.text!r}: weighted needs blocks=C0+C1+... (partitions per slot) "
                              f"and ring=R0+R1+... (a permutation of the slots)")
    blocks = as_int_list(spec, "blocks", field_name)
    ring = as_int_list(spec, "ring", field_name)
    for key, values in (("blocks", blocks), ("ring", ring)):
        if len(values) != n:
            raise ConfigError(f"{field_name}: {key} has {len(values)} entries; need one per slot (workers={n})")
    try:
        return weighted_code(blocks, ring, smax)
    except ConfigError as exc:
        raise ConfigError(f"{field_name}: {exc}") from None


def frc_group_sizes(n: int, s: int) -> list[int]:
    """Sizes of FRC(s) groups of consecutive slots: floor(n/(s+1)) groups, each >= s+1, summing to n."""
    g = n // (s + 1)
    return [n // g + (1 if t < n % g else 0) for t in range(g)]


def _frc_nested(n: int, groups: tuple[int, ...], unequal_ok: bool) -> Code:
    """FRC (one level, possibly unequal groups) or nested FRC (group sizes a divisor chain of n).

    Level l groups are blocks of consecutive slots; a group's members all hold its block of
    partitions (the same indices) and send the block's uncoded sum. Slot i computes its level-0 block
    first (starting at i), then the rest of its level-1 block, and so on.
    """
    if unequal_ok:
        (size,) = groups
        sizes = frc_group_sizes(n, size - 1)
        starts = list(itertools.accumulate([0, *sizes[:-1]]))
        blocks_by_level = [[range(st, st + sz) for st, sz in zip(starts, sizes)]]
        levels: tuple[int, ...] = (size - 1,)
    else:
        blocks_by_level = [[range(st, st + m) for st in range(0, n, m)] for m in groups]
        levels = tuple(m - 1 for m in groups)

    def block_of(level: int, i: int) -> range:
        return next(b for b in blocks_by_level[level] if i in b)

    L = len(levels)
    B = np.zeros((L, n, n))
    prefix = np.zeros((L, n), dtype=np.int64)
    order: list[tuple[int, ...]] = []
    for i in range(n):
        seq: list[int] = []
        for level in range(L):
            block = block_of(level, i)
            m = len(block)
            for j in range(m):
                p = block.start + (i - block.start + j) % m
                if p not in seq:
                    seq.append(p)
            prefix[level, i] = len(seq)
            B[level, i, list(block)] = 1.0
        order.append(tuple(seq))
    construction = ("frc-unequal-groups" if unequal_ok and len(set(frc_group_sizes(n, levels[0]))) > 1
                    else "frc",) * L
    worst = tuple(1.0 for _ in range(L))  # disjoint indicator blocks: orthogonal rows, cond 1 per group
    return _finish("frc" if unequal_ok else "nested-frc", n, levels, order, prefix, B, construction, worst)


def _nested_crc(n: int, levels: tuple[int, ...], max_cond: float) -> Code:
    smax = levels[-1]
    order = [tuple((i + j) % n for j in range(smax + 1)) for i in range(n)]
    L = len(levels)
    B = np.zeros((L, n, n))
    prefix = np.zeros((L, n), dtype=np.int64)
    constructions, worst, validations = [], [], []
    for level, s in enumerate(levels):
        why = crc_refusal(n, s, max_cond)
        if why is None:
            rows, name, cond, how = crc_rows(n, s)
            why = refusal_of_built(n, s, name, cond, how, max_cond)
        if why is not None:
            raise CodeConstructionError(f"crc s={s} at n={n}: {why}; tolerances near s that build: "
                                        f"{_buildable_near(n, s, max_cond) or 'none'}"
                                        f"{' (or raise max_cond)' if 'max_cond' in why else ''}")
        B[level] = rows
        prefix[level] = s + 1
        constructions.append(name)
        worst.append(cond)
        validations.append(how)
    family = "crc" if L == 1 else "nested"
    code = _finish(family, n, levels, order, prefix, B, tuple(constructions), tuple(worst))
    return _replace(code, validation=tuple(validations))


def _buildable_near(n: int, s: int, max_cond: float) -> str:
    """Tolerances within 2 of s whose CRC builds under max_cond (nearest first). Each is decided as for s
    itself (`crc_refusal`, then the construction, cached in CRC_TABLE up to CRC_TABLE_MAX_N). Beyond the
    table a tolerance that needs its construction (minutes to tens of minutes at n = 256) is named as not
    checked, beside the code `auto` picks for n, which builds at once."""
    ok, unchecked = [], []
    for t in sorted((t for t in range(s - 2, s + 3) if t != s and 0 <= t < n), key=lambda t: (abs(t - s), t)):
        if n > CRC_TABLE_MAX_N and t > 0:
            if (n - t) % 2 == 1 or math.comb(n, t) <= EXHAUSTIVE_MAX:  # not refused by rule
                unchecked.append(f"s={t}")
            continue
        if crc_refusal(n, t, max_cond) is not None:
            continue
        name, cond, how = CRC_TABLE.get((n, t)) or crc_rows(n, t)[1:]
        if math.isfinite(cond) and refusal_of_built(n, t, name, cond, how, max_cond) is None:
            ok.append(f"s={t} ({name}, cond {cond:.2g})")
    text = ", ".join(ok)
    if unchecked:
        text = (f"{text + '; ' if text else ''}beyond n = {CRC_TABLE_MAX_N} not checked ({', '.join(unchecked)} "
                f"would each need their construction, minutes at this n); auto builds at once: {auto_code_spec(n)}")
    return text


"""A bound or cached cond decides a refusal only when it exceeds max_cond by this relative margin (else the
construction is built and validated, so a last-bit difference in a BLAS can never flip a verdict)."""


# ---------------------------------------------------------------------------------------------
# laminar indicator rows (FRC-structured codes): decodability without linear algebra


@dataclass(frozen=True, eq=False)
class Laminar:
    """The rows of a code whose every nonzero row is a multiple of the indicator vector of a block of
    partitions, the blocks forming a laminar family (any two are nested or disjoint): uncoded, FRC,
    nested FRC (a divisor chain of group sizes), multimessage.

    For such rows, 1 lies in the span of a received set R iff every root block (a block in no other)
    is *spanned*, the roots partition the k partitions, and a block is spanned iff one of its rows is
    in R, or its children (the maximal blocks strictly inside it) partition it and are all spanned.
    Sufficiency is plain; necessity: if 1_b is a combination of received rows inside b and none of
    them is b's own, each lies inside one child (laminar), so each child is a combination of the rows
    inside it, and a partition of b in no child would have coefficient 0 (docs/analysis.md).

    blocks: bitmasks (Python ints) of the distinct supports, leaves first: a block comes after its
        children (ordered by height, then by smallest partition).
    layer_starts: ``(H+2,)`` offsets in `blocks` of the blocks of height 0, 1, ..., H, and the count
        (height: the longest chain of children below).
    messages, message_starts: message ids grouped by block (`np.minimum.reduceat` offsets); every block
        has at least one message. `message_mask` per block: the same as a bitmask of message ids.
    children, child_starts: child block indices grouped by parent, for the blocks of height >= 1 in
        their order (`np.maximum.reduceat` offsets into `children`); `child_lists` per block.
    covered: ``(nb,)`` bool, the children partition the block (False for leaves).
    roots: indices of the root blocks; roots_cover: they partition all k partitions.
    """

    blocks: tuple[int, ...]
    layer_starts: tuple[int, ...]
    messages: np.ndarray
    message_starts: np.ndarray
    message_mask: tuple[int, ...]
    children: np.ndarray
    child_starts: np.ndarray
    child_lists: tuple[tuple[int, ...], ...]
    covered: np.ndarray
    roots: np.ndarray
    roots_cover: bool

    def spans_ones(self, mask: int) -> bool:
        """Whether the all-ones vector lies in the span of the received message ids in `mask` (exact)."""
        spanned = [False] * len(self.blocks)
        for b, kids in enumerate(self.child_lists):
            spanned[b] = bool(mask & self.message_mask[b]) or (
                bool(self.covered[b]) and all(spanned[c] for c in kids))
        return self.roots_cover and all(spanned[r] for r in self.roots)


_LAMINAR: weakref.WeakKeyDictionary[Code, Laminar | None] = weakref.WeakKeyDictionary()


def laminar_rows(code: Code) -> Laminar | None:
    """The laminar block structure of `code`'s rows (see `Laminar`), or None when some nonzero row is not
    a multiple of an indicator vector or two supports overlap without nesting. Cached per code."""
    if code not in _LAMINAR:
        _LAMINAR[code] = _laminar_rows(code)
    return _LAMINAR[code]


def _laminar_rows(code: Code) -> Laminar | None:
    rows = code.B.reshape(code.n_messages, code.k)
    nonzero = rows != 0
    used = np.flatnonzero(nonzero.any(axis=1))
    if not used.size:
        return None
    first = rows[used, nonzero[used].argmax(axis=1)]
    if not np.all((rows[used] == first[:, None]) | ~nonzero[used]):
        return None  # a row with unequal nonzero entries
    by_support: dict[int, list[int]] = {}
    for m in used:
        by_support.setdefault(code.support_bits[m], []).append(int(m))
    supports = list(by_support)
    member = np.array([[bits >> j & 1 for j in range(code.k)] for bits in supports], dtype=bool)
    size = member.sum(axis=1)
    parent = [-1] * len(supports)
    for j in range(code.k):
        chain = sorted(np.flatnonzero(member[:, j]).tolist(), key=lambda b: size[b])
        for small, big in zip(chain, chain[1:]):
            if size[small] == size[big] or supports[small] & ~supports[big]:
                return None  # overlapping supports that are not nested
            if parent[small] not in (-1, big):
                return None
            parent[small] = big
    kids: list[list[int]] = [[] for _ in supports]
    for b, p in enumerate(parent):
        if p >= 0:
            kids[p].append(b)
    height = [0] * len(supports)
    for b in sorted(range(len(supports)), key=lambda b: size[b]):
        height[b] = 1 + max((height[c] for c in kids[b]), default=-1)
    order = sorted(range(len(supports)), key=lambda b: (height[b], int(np.argmax(member[b]))))
    index = {b: t for t, b in enumerate(order)}
    child_lists = tuple(tuple(sorted(index[c] for c in kids[b])) for b in order)
    layer_starts = [sum(1 for b in order if height[b] < h) for h in range(max(height) + 2)]
    messages = [m for b in order for m in by_support[supports[b]]]
    message_starts = np.cumsum([0] + [len(by_support[supports[b]]) for b in order[:-1]])
    inner = [t for t, b in enumerate(order) if height[b] >= 1]
    children = [c for t in inner for c in child_lists[t]]
    child_starts = np.cumsum([0] + [len(child_lists[t]) for t in inner[:-1]]) if inner else np.zeros(0, int)
    covered = np.array([bool(kids[b]) and int(size[kids[b]].sum()) == int(size[b]) for b in order])
    roots = np.array([index[b] for b in order if parent[b] < 0], dtype=np.int64)
    return Laminar(
        blocks=tuple(supports[b] for b in order), layer_starts=tuple(layer_starts),
        messages=np.array(messages, dtype=np.int64), message_starts=np.asarray(message_starts, dtype=np.int64),
        message_mask=tuple(sum(1 << m for m in by_support[supports[b]]) for b in order),
        children=np.array(children, dtype=np.int64), child_starts=np.asarray(child_starts, dtype=np.int64),
        child_lists=child_lists, covered=covered, roots=roots,
        roots_cover=int(size[[order[r] for r in roots]].sum()) == code.k)
