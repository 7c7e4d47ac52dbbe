"""Tests of `flexgc.common.codes`: spec grammar, code structure, nested windows, numerical quality.

Numerical quality (docs/design.md §2.4, docs/style.md §6): a shipped construction states its worst cond(B_F) and these
tests check the statement, both against the bound (max_cond = 1e6) and against an independent
recomputation on straggler patterns that codes.py did not choose.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexgc.common import crc as crc_module
from flexgc.common.codes import Code, auto_code_spec, frc_group_sizes, laminar_rows, parse_code
from flexgc.common.crc import (
    DEFAULT_MAX_COND,
    construct_crc_rows,
    contiguous_bound,
    crc_refusal,
    crc_rows,
    refusal_of_built,
)
from flexgc.common.crc_table import CRC_TABLE
from flexgc.common.errors import CodeConstructionError, ConfigError

QUALITY_S = (1, 2, 4, 8)
RECOMPUTE_EXHAUSTIVE_UP_TO = 15000
RECOMPUTE_SAMPLES = 4000


def window(i: int, s: int, n: int) -> tuple[int, ...]:
    """The cyclic window {i, i+1, ..., i+s} mod n, in that order."""
    return tuple((i + j) % n for j in range(s + 1))


def support(row: np.ndarray) -> set[int]:
    return {int(j) for j in np.flatnonzero(row)}


# ---------------------------------------------------------------------------------------------
# spec errors


@pytest.mark.parametrize(
    ("spec", "n", "expected"),
    [
        ("crc:s=5", 5, ["s=5", "0 <= s < n=5"]),
        ("frc:s=9", 4, ["s=9", "0 <= s < n=4"]),
        ("ignore:s=4", 4, ["s=4", "0 <= s < n=4"]),
        ("nested:smax=6", 6, ["smax=6", "0 <= smax < n=6"]),
        ("multimessage:smax=3", 3, ["smax=3", "0 <= smax < n=3"]),
        ("crc:s=-1", 4, ["s=-1", ">= 0"]),
        ("crc:s=two", 4, ["s='two'", "not an integer"]),
        ("crc", 4, ["s=S", "0 <= S < n=4"]),
        ("nested:levels=0,2,1", 5, ["levels=0,2,1", "strictly increasing", "n=5"]),
        ("nested:levels=1,1", 5, ["levels=1,1", "strictly increasing"]),
        ("nested:levels=0,5", 5, ["levels=0,5", "< n=5"]),
        ("nested:levels=0,1,smax=1", 4, ["levels=", "smax=S", "exactly one"]),
        ("nested", 4, ["levels=", "smax=S"]),
        ("nested-frc:groups=1,2,4", 10, ["groups=1,2,4", "divisor chain", "divisors of 10: 1,2,5,10"]),
        ("nested-frc:groups=2,3", 6, ["groups=2,3", "divisor chain", "divisors of 6: 1,2,3,6"]),
        ("nested-frc:groups=4,2", 8, ["groups=4,2", "divisor chain"]),
        ("nested-frc", 8, ["groups=", "divisor chain"]),
        ("bogus:s=1", 4, ["unknown family 'bogus'", "uncoded", "ignore", "frc", "crc", "nested-frc",
                          "multimessage"]),
        ("crc:s=1,foo=2", 4, ["unknown option foo", "decoder", "max_cond", "signaling"]),
        ("uncoded:s=1", 4, ["unknown option s", "decoder", "signaling"]),
        ("crc:s=1,decoder=fastest", 4, ["decoder='fastest'", "any-span", "per-level"]),
        ("crc:s=1,signaling=smoke", 4, ["signaling='smoke'", "push", "notify"]),
        ("multimessage:smax=1,decoder=per-level", 4, ["decoder=per-level", "allowed: any-span"]),
        ("crc:s=1,max_cond=0.5", 4, ["max_cond=0.5", ">= 1"]),
        ("", 4, ["empty spec", "FAMILY"]),
    ],
)
def test_invalid_spec_names_field_and_allowed_values(spec: str, n: int, expected: list[str]) -> None:
    # Execute
    with pytest.raises(ConfigError) as caught:
        parse_code(spec, n)

    # Assert
    missing = [part for part in expected if part not in str(caught.value)]
    assert not missing, f"{caught.value!s} lacks {missing}"


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_invalid_worker_count_is_refused(n: object) -> None:
    # Execute
    with pytest.raises(ConfigError, match="workers="):
        parse_code("uncoded", n)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# canonical specs


def test_canonical_spec_round_trips(code_case: tuple[int, str]) -> None:
    # Prepare
    n, spec = code_case
    code = parse_code(spec, n)

    # Execute
    again = parse_code(code.spec, n)

    # Assert
    assert again.spec == code.spec
    assert again.levels == code.levels and again.order == code.order
    np.testing.assert_array_equal(again.B, code.B)


@pytest.mark.parametrize(
    ("spec", "n", "canonical"),
    [
        ("nested:smax=3", 6, "nested:levels=0,1,2,3"),
        (" NESTED : levels = 0 + 2 ", 6, "nested:levels=0,2"),
        ("crc:s=2,decoder=any-span,signaling=push", 6, "crc:s=2"),
        ("crc:signaling=notify,s=2,decoder=per-level", 6, "crc:s=2,decoder=per-level,signaling=notify"),
        ("uncoded:decoder=per-level", 4, "uncoded:decoder=per-level"),
        ("crc:s=2,max_cond=1e7", 6, "crc:s=2,max_cond=1e+07"),
        ("nested:levels=0,1,max_cond=1e7", 6, "nested:levels=0,1,max_cond=1e+07"),
        ("frc:s=2", 7, "frc:s=2"),
        ("nested-frc:groups=1+2+4", 8, "nested-frc:groups=1,2,4"),
        ("multimessage:smax=2,signaling=notify", 5, "multimessage:smax=2,signaling=notify"),
    ],
)
def test_spec_is_normalized_to_canonical_form(spec: str, n: int, canonical: str) -> None:
    # Execute
    code = parse_code(spec, n)

    # Assert
    assert code.spec == canonical
    assert parse_code(code.spec, n).spec == canonical


@pytest.mark.parametrize(
    ("spec", "decoder", "signaling"),
    [
        ("crc:s=1", "any-span", "push"),
        ("crc:s=1,decoder=per-level", "per-level", "push"),
        ("nested:smax=2,signaling=notify", "any-span", "notify"),
        ("frc:s=1,decoder=per-level,signaling=notify", "per-level", "notify"),
    ],
)
def test_options_reach_the_code(spec: str, decoder: str, signaling: str) -> None:
    # Execute
    code = parse_code(spec, 6)

    # Assert
    assert (code.decoder, code.signaling) == (decoder, signaling)


# ---------------------------------------------------------------------------------------------
# structure shared by every family


def test_every_row_is_supported_inside_its_prefix(code_case: tuple[int, str]) -> None:
    # Prepare
    n, spec = code_case

    # Execute
    code = parse_code(spec, n)

    # Assert
    outside = [(level, i) for level in range(code.n_levels) for i in range(n)
               if not support(code.B[level, i]) <= set(code.order[i][:code.prefix[level, i]])]
    assert not outside


def test_code_shapes_and_orders_are_consistent(code_case: tuple[int, str]) -> None:
    # Prepare
    n, spec = code_case

    # Execute
    code = parse_code(spec, n)

    # Assert
    L = len(code.levels)
    assert code.k == n and code.B.shape == (L, n, n) and code.prefix.shape == (L, n)
    assert list(code.levels) == sorted(set(code.levels))
    assert len(code.construction) == len(code.worst_cond) == L
    assert all(len(set(order)) == len(order) for order in code.order)
    assert np.all(np.diff(code.prefix, axis=0) > 0) if L > 1 else True
    assert np.array_equal(code.prefix[-1], [len(order) for order in code.order])


def test_message_id_round_trips(code_case: tuple[int, str]) -> None:
    # Prepare
    n, spec = code_case
    code = parse_code(spec, n)

    # Execute
    pairs = [code.message_of(code.message_id(level, i)) for level in range(code.n_levels) for i in range(n)]

    # Assert
    assert pairs == [(level, i) for level in range(code.n_levels) for i in range(n)]
    assert sorted(code.message_id(level, i) for level, i in pairs) == list(range(code.n_messages))


def test_coefficient_rows_are_read_only() -> None:
    # Prepare
    code = parse_code("nested:smax=2", 5)

    # Execute / Assert
    with pytest.raises(ValueError, match="read-only"):
        code.B[0, 0, 0] = 3.0
    with pytest.raises(ValueError, match="read-only"):
        code.prefix[0, 0] = 3


# ---------------------------------------------------------------------------------------------
# nested invariants


def test_level_prefixes_are_the_cyclic_windows(cyclic_case: tuple[int, str]) -> None:
    # Prepare
    n, spec = cyclic_case

    # Execute
    code = parse_code(spec, n)

    # Assert
    prefixes = [[code.order[i][:code.prefix[level, i]] for i in range(n)] for level in range(code.n_levels)]
    assert prefixes == [[window(i, s, n) for i in range(n)] for s in code.levels]


def test_cyclic_rows_use_their_whole_window(cyclic_case: tuple[int, str]) -> None:
    # Prepare
    n, spec = cyclic_case

    # Execute
    code = parse_code(spec, n)

    # Assert
    supports = [[support(code.B[level, i]) for i in range(n)] for level in range(code.n_levels)]
    assert supports == [[set(window(i, s, n)) for i in range(n)] for s in code.levels]


def test_order_of_a_nested_slot_is_its_smax_window() -> None:
    # Prepare
    n = 10

    # Execute
    code = parse_code("nested:levels=0,1,2,3", n)

    # Assert
    assert code.order[8] == (8, 9, 0, 1)
    assert code.prefix[:, 8].tolist() == [1, 2, 3, 4]
    assert code.levels_completed_by(8, 3) == [2]


# ---------------------------------------------------------------------------------------------
# FRC groups


def test_frc_groups_cover_every_slot_and_hold_at_least_s_plus_one() -> None:
    # Execute
    sizes = {(n, s): frc_group_sizes(n, s) for n in range(1, 41) for s in range(n)}

    # Assert
    bad = {ns: g for ns, g in sizes.items() if sum(g) != ns[0] or min(g) < ns[1] + 1 or max(g) - min(g) > 1}
    assert not bad


@pytest.mark.parametrize(("n", "s", "name"), [(9, 2, "frc"), (10, 2, "frc-unequal-groups"),
                                              (7, 6, "frc"), (7, 1, "frc-unequal-groups")])
def test_frc_construction_says_when_groups_are_unequal(n: int, s: int, name: str) -> None:
    # Execute
    code = parse_code(f"frc:s={s}", n)

    # Assert
    assert code.construction == (name,)


def test_nested_frc_levels_are_group_sizes_minus_one() -> None:
    # Execute
    code = parse_code("nested-frc:groups=1,2,4", 12)

    # Assert
    assert code.levels == (0, 1, 3)
    assert [sorted(support(code.B[2, i])) for i in (0, 5, 11)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert code.order[5] == (5, 4, 6, 7)


# ---------------------------------------------------------------------------------------------
# numerical quality: the stated worst cond(B_F)


def _quality_specs(n: int) -> list[str]:
    levels = [s for s in QUALITY_S if s < n]
    return [f"crc:s={s}" for s in levels] + ["nested:levels=0," + ",".join(map(str, levels))]


@pytest.mark.parametrize(("n", "spec"), [(n, spec) for n in range(2, 33) for spec in _quality_specs(n)])
def test_default_code_states_worst_cond_within_bound_or_refuses(n: int, spec: str) -> None:
    # Execute
    try:
        code: Code | None = parse_code(spec, n)
    except CodeConstructionError as refused:
        code, message = None, str(refused)

    # Assert
    if code is None:
        assert "tolerances near s that build" in message and ("max_cond" in message or "sample" in message)
    else:
        assert max(code.worst_cond) <= DEFAULT_MAX_COND


@pytest.mark.parametrize(("n", "s"), [(n, s) for n in range(2, 33) for s in QUALITY_S if s < n and (n - s) % 2])
def test_odd_dimension_uses_cyclic_mds(n: int, s: int) -> None:
    # Execute
    code = parse_code(f"crc:s={s}", n)

    # Assert
    assert code.construction == ("cyclic-mds",)


@pytest.mark.parametrize(
    ("n", "s"),
    [(n, 1) for n in range(2, 65, 2)],
)
def test_cyclic_mds_is_well_conditioned(n: int, s: int) -> None:
    # Execute
    code = parse_code(f"crc:s={s}", n)

    # Assert
    assert code.construction == ("cyclic-mds",)
    assert code.worst_cond[0] <= 100


@pytest.mark.parametrize(("n", "s", "bound"), [(23, 2, 200), (17, 4, 1e3), (31, 8, 1e6)])
def test_cyclic_mds_cond_grows_like_n_to_the_s_but_stays_within_documented_bounds(n: int, s: int,
                                                                                   bound: float) -> None:
    # Execute (measured: 112 at n=23 s=2; 607 at n=17 s=4; 6.3e5 at n=31 s=8)
    code = parse_code(f"crc:s={s}", n)

    # Assert
    assert code.construction == ("cyclic-mds",)
    assert code.worst_cond[0] <= bound


def test_refusal_names_a_tolerance_that_builds() -> None:
    # Prepare: crc:s=8 at n=33 (n-s odd, cyclic-MDS) has worst cond 1.07e6 > 1e6
    n, s = 33, 8

    # Execute
    with pytest.raises(CodeConstructionError) as caught:
        parse_code(f"crc:s={s}", n)

    # Assert
    named = re.findall(r"s=(\d+) \(", str(caught.value).split("tolerances near s that build:")[1])
    assert named, str(caught.value)
    candidates = [int(t) for t in named]
    assert any(_builds(f"crc:s={t}", n) for t in candidates), str(caught.value)


def _builds(spec: str, n: int) -> bool:
    try:
        parse_code(spec, n)
    except CodeConstructionError:
        return False
    return True


class Recomputed(NamedTuple):
    stated: float  # the code's worst_cond
    validation: str  # how codes.py validated it: exhaustive or sampled
    patterns: np.ndarray  # (P, s) straggler sets
    cond: np.ndarray  # (P,) cond(B_F)
    residual: np.ndarray  # (P,) min-norm ||a^T B_F - 1||


@functools.cache
def _recomputed(n: int, s: int) -> Recomputed | None:
    """cond(B_F) and residual of crc:s at n, independent of codes.py's validation set: every straggler
    set when C(n, s) is small, else a seeded random sample. None when the code is refused (ships nothing)."""
    try:
        code = parse_code(f"crc:s={s}", n)
    except CodeConstructionError:
        return None
    if math.comb(n, s) <= RECOMPUTE_EXHAUSTIVE_UP_TO:
        patterns = np.array(list(itertools.combinations(range(n), s)), dtype=np.int64).reshape(-1, s)
    else:
        rng = np.random.default_rng(20240 + 100 * n + s)
        patterns = np.sort(rng.random((RECOMPUTE_SAMPLES, n)).argsort(axis=1)[:, :s], axis=1)
    alive = np.array([np.setdiff1d(np.arange(n), p) for p in patterns])
    BF = code.B[0][alive]  # (P, n - s, n)
    U, sv, Vt = np.linalg.svd(BF, full_matrices=False)
    ones = np.ones(n)
    a = np.einsum("pij,pj->pi", U, (Vt @ ones) / sv)  # minimum-norm a with a^T B_F = 1 (least squares)
    residual = np.linalg.norm(np.einsum("pi,pij->pj", a, BF) - ones, axis=1)
    return Recomputed(code.worst_cond[0], code.validation[0], patterns, sv[:, 0] / sv[:, -1], residual)


RECOMPUTE_GRID = [(n, s) for n in (8, 16, 24, 32) for s in QUALITY_S if s < n]


@pytest.mark.parametrize(("n", "s"), RECOMPUTE_GRID)
def test_stated_worst_cond_is_within_10x_of_recomputed(n: int, s: int) -> None:
    # Execute
    recomputed = _recomputed(n, s)

    # Assert (a refused code ships nothing to check)
    assert recomputed is None or recomputed.cond.max() <= 10 * recomputed.stated


@pytest.mark.parametrize(("n", "s"), [(n, s) for n, s in RECOMPUTE_GRID
                                      if math.comb(n, s) <= RECOMPUTE_EXHAUSTIVE_UP_TO])
def test_exhaustively_validated_worst_cond_is_the_true_worst(n: int, s: int) -> None:
    # Execute
    recomputed = _recomputed(n, s)

    # Assert
    assert recomputed is None or recomputed.validation == "exhaustive"
    assert recomputed is None or recomputed.cond.max() == pytest.approx(recomputed.stated, rel=1e-6)


@pytest.mark.parametrize(("n", "s"), RECOMPUTE_GRID)
def test_accepted_code_keeps_recomputed_cond_within_max_cond(n: int, s: int) -> None:
    # Execute
    recomputed = _recomputed(n, s)

    # Assert
    assert recomputed is None or recomputed.cond.max() <= DEFAULT_MAX_COND


@pytest.mark.parametrize(("n", "s"), RECOMPUTE_GRID)
def test_accepted_code_decodes_every_recomputed_pattern(n: int, s: int) -> None:
    # Execute
    recomputed = _recomputed(n, s)

    # Assert
    if recomputed is not None:
        worst = int(recomputed.residual.argmax())
        assert recomputed.residual[worst] <= 1e-9, f"stragglers {recomputed.patterns[worst].tolist()}"


@pytest.mark.parametrize(
    ("n", "s", "stragglers"),
    [
        (20, 8, (0, 1, 3, 5, 6, 8, 12, 15)),
        (28, 8, (0, 3, 5, 7, 11, 14, 18, 25)),
        (30, 8, (1, 12, 15, 17, 18, 25, 28, 29)),
    ],
)
def test_accepted_code_keeps_cond_within_max_cond_on_searched_worst_sets(
        n: int, s: int, stragglers: tuple[int, ...]) -> None:
    # Prepare (the straggler sets come from a seeded hill-climbing search for large cond(B_F))
    if not _builds(f"crc:s={s}", n):
        return  # refused: ships nothing
    B = parse_code(f"crc:s={s}", n).B[0]

    # Execute
    cond = np.linalg.cond(B[[i for i in range(n) if i not in stragglers]])

    # Assert
    assert cond <= DEFAULT_MAX_COND


# ---------------------------------------------------------------------------------------------
# laminar indicator rows: the span test without linear algebra (codes.Laminar)


def spans_ones_by_rank(code: Code, mask: int) -> bool:
    """1 in the row space of the received rows, decided by numerical rank (independent of codes.py)."""
    ids = [m for m in range(code.n_messages) if mask >> m & 1]
    if not ids:
        return False
    R = code.B.reshape(code.n_messages, code.k)[ids]
    return bool(np.linalg.matrix_rank(R) == np.linalg.matrix_rank(np.vstack([R, np.ones(code.k)])))


def _laminar_specs(n: int) -> list[str]:
    chains = _divisor_chains(n)
    return (["uncoded", f"multimessage:smax={min(2, n - 1)}"] + [f"frc:s={s}" for s in range(n)]
            + ["nested-frc:groups=" + ",".join(map(str, c)) for c in chains])


def _divisor_chains(n: int) -> list[tuple[int, ...]]:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return [c for size in range(1, len(divisors) + 1) for c in itertools.combinations(divisors, size)
            if all(b % a == 0 for a, b in zip(c, c[1:]))]


@pytest.mark.parametrize(("n", "spec"), [(n, spec) for n in range(1, 7) for spec in _laminar_specs(n)
                                         if parse_code(spec, n).n_messages <= 12])
def test_laminar_span_test_matches_rank_on_every_received_set(n: int, spec: str) -> None:
    # Prepare
    code = parse_code(spec, n)
    laminar = laminar_rows(code)

    # Execute / Assert (every subset of the messages, not only prefix-closed ones)
    assert laminar is not None
    for mask in range(1 << code.n_messages):
        assert laminar.spans_ones(mask) == spans_ones_by_rank(code, mask), (spec, bin(mask))


def spans_ones_by_rank_batch(code: Code, received: np.ndarray) -> np.ndarray:
    """`spans_ones_by_rank` for a ``(P, n_messages)`` bool array of received sets, as stacked SVDs."""
    R = code.B.reshape(code.n_messages, code.k)[None] * received[:, :, None]
    with_ones = np.concatenate([R, np.ones((len(R), 1, code.k))], axis=1)
    return np.asarray(np.linalg.matrix_rank(R) == np.linalg.matrix_rank(with_ones)) & received.any(axis=1)


@pytest.mark.parametrize(("n", "spec"), [(n, f"nested-frc:groups={g}") for n, g in
                                         [(8, "1,2,4"), (6, "1,2,6"), (6, "1,3,6"), (9, "1,3"), (10, "1,5"),
                                          (10, "2,10"), (8, "2,8")]])
def test_laminar_span_test_matches_rank_on_every_per_slot_prefix(n: int, spec: str) -> None:
    # Prepare: every pattern a run can produce (slot i has sent its first r_i levels): (L+1)^n of them
    code = parse_code(spec, n)
    laminar = laminar_rows(code)
    assert laminar is not None
    reached = np.array(list(itertools.product(range(code.n_levels + 1), repeat=n)))  # (P, n)
    received = (np.arange(code.n_levels)[None, :, None] < reached[:, None, :]).reshape(len(reached), -1)

    # Execute
    expected = spans_ones_by_rank_batch(code, received)
    masks = np.packbits(received, axis=1, bitorder="little")

    # Assert
    for row, want in zip(masks, expected):
        assert laminar.spans_ones(int.from_bytes(row.tobytes(), "little")) == want, (spec, row)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(data=st.data())
def test_laminar_span_test_matches_rank_on_random_sets_beyond(data: st.DataObject) -> None:
    # Prepare: a random divisor chain at n <= 48 and a random received set
    n = data.draw(st.sampled_from([12, 16, 18, 24, 30, 32, 36, 48]), label="n")
    chain = data.draw(st.sampled_from(_divisor_chains(n)), label="groups")
    code = parse_code("nested-frc:groups=" + ",".join(map(str, chain)), n)
    p = data.draw(st.floats(0.05, 0.95), label="p")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    mask = sum(1 << int(m) for m in np.flatnonzero(rng.random(code.n_messages) < p))

    # Execute / Assert
    laminar = laminar_rows(code)
    assert laminar is not None and laminar.spans_ones(mask) == spans_ones_by_rank(code, mask)


def test_mixed_levels_of_nested_frc_span_where_no_level_does() -> None:
    # Prepare: n = 4, groups 1, 2, 4; slots 0 and 1 sent level 0 ({0}, {1}), slot 2 level 1 ({2, 3})
    code = parse_code("nested-frc:groups=1,2,4", 4)
    laminar = laminar_rows(code)
    assert laminar is not None

    # Execute / Assert: {0}+{1} spans block {0,1}, which with {2,3} spans the root {0,1,2,3}
    assert laminar.spans_ones(1 << code.message_id(0, 0) | 1 << code.message_id(0, 1) | 1 << code.message_id(1, 2))
    assert not laminar.spans_ones(1 << code.message_id(0, 0) | 1 << code.message_id(1, 2))


@pytest.mark.parametrize(("n", "spec"), [(6, "crc:s=1"), (6, "crc:s=2"), (5, "nested:levels=0,1"),
                                         (8, "nested:levels=0,2")])
def test_cyclic_codes_are_not_laminar(n: int, spec: str) -> None:
    # Execute / Assert (overlapping cyclic windows, or rows with unequal entries)
    assert laminar_rows(parse_code(spec, n)) is None


# ---------------------------------------------------------------------------------------------
# CRC verdicts without building: rule, cached table, contiguous-set bound (codes.crc_refusal)


def _verdict_by_construction(n: int, s: int) -> str | None:
    """Why `construct_crc_rows` (search and validation, no table) would not ship CRC(s) at n; None if it ships."""
    try:
        _, name, cond, how = construct_crc_rows(n, s)
    except CodeConstructionError as exc:
        return str(exc)
    return refusal_of_built(n, s, name, cond, how, DEFAULT_MAX_COND)


@pytest.mark.parametrize("n", range(2, 17))
def test_quick_refusals_agree_with_the_construction(n: int) -> None:
    # Execute / Assert: whatever crc_refusal decides, the full construction decides the same way
    for s in range(1, n):
        if crc_refusal(n, s) is not None:
            assert _verdict_by_construction(n, s) is not None, (n, s)


@pytest.mark.parametrize("n", [17, 24, 33, 48, 63, 64])
def test_every_crc_up_to_64_is_decided_by_rule_bound_or_table(n: int) -> None:
    # Execute / Assert: nothing up to n = 64 needs a search or a validation to be decided
    for s in range(1, n):
        assert crc_refusal(n, s) is not None or (n, s) in CRC_TABLE, (n, s)


def _table_sample() -> list[tuple[int, int]]:
    keys = sorted(CRC_TABLE)
    small = [k for k in keys if k[0] <= 12]
    rest = [k for k in keys if k[0] > 12 and math.comb(*k) <= 2000 and k[0] - k[1] <= 40]
    return small + rest[:: max(1, len(rest) // 25)] + [k for k in [(32, 4), (64, 1)] if k in CRC_TABLE]


@pytest.mark.parametrize(("n", "s"), _table_sample())
def test_cached_crc_equals_the_construction(n: int, s: int) -> None:
    # Execute
    cached_rows, name, cond, how = crc_rows(n, s)
    try:
        rows, built_name, built_cond, built_how = construct_crc_rows(n, s)
    except CodeConstructionError:
        assert not math.isfinite(CRC_TABLE[(n, s)][1])
        return

    # Assert: the same construction, the same rows bit for bit, the same validation
    assert (name, how) == (built_name, built_how)
    assert cond == pytest.approx(built_cond, rel=1e-9)
    assert np.array_equal(cached_rows, rows)


def test_refusing_crc4_at_n64_needs_no_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: any search or validation would fail the test
    crc_rows.cache_clear()

    def forbidden(n: int, s: int) -> None:
        raise AssertionError(f"construct_crc_rows({n}, {s}) called")

    monkeypatch.setattr(crc_module, "construct_crc_rows", forbidden)

    # Execute
    with pytest.raises(CodeConstructionError) as refused:
        parse_code("crc:s=4", 64)

    # Assert: the reason, and the neighbours that build, as the construction would have named them
    message = str(refused.value)
    assert "C(64,4)=635376" in message and "could only be checked on a sample" in message
    assert message.endswith("tolerances near s that build: s=3 (cyclic-mds, cond 1.2e+04), "
                            "s=2 (trig-phase:0.5, cond 5.2e+04)")


def test_bound_refusal_names_the_contiguous_cond() -> None:
    # Execute
    with pytest.raises(CodeConstructionError) as refused:
        parse_code("crc:s=7", 64)

    # Assert
    assert "cond(B_F)=4.62e+07 > max_cond=1e+06 already on the contiguous straggler set" in str(refused.value)
    assert "(or raise max_cond)" in str(refused.value)


def test_a_raised_max_cond_builds_what_the_bound_refused() -> None:
    # Execute
    code = parse_code("crc:s=5,max_cond=1e7", 32)

    # Assert: the contiguous bound is the validated worst (sharp): equal up to the SVD's own accuracy, whose
    # smallest singular value is good to about eps * sigma_max, a relative error of eps * cond (3.4e4 here)
    bound, _ = contiguous_bound(32, 5)
    assert code.construction == ("cyclic-mds",)
    assert code.worst_cond[0] == pytest.approx(bound, rel=100 * np.finfo(np.float64).eps * bound)


@pytest.mark.parametrize(("n", "expected"), [
    (256, "nested-frc:groups=1,2,4,8,16,32"), (128, "nested-frc:groups=1,2,4,8,16"),
    (1000, "nested-frc:groups=1,2,4,8,40"), (97, "frc:s=11"), (10, "nested:levels=0,1,2,3"),
    (3, "nested:levels=0,1,2"), (1, "nested:levels=0")])
def test_auto_picks_nested_cyclic_up_to_64_and_nested_frc_beyond(n: int, expected: str) -> None:
    assert auto_code_spec(n) == expected
    assert parse_code("auto", n).spec == parse_code(expected, n).spec


def test_auto_keeps_the_decoder_and_signaling_options() -> None:
    code = parse_code("auto:decoder=per-level,signaling=notify", 256)

    assert code.spec == "nested-frc:groups=1,2,4,8,16,32,decoder=per-level,signaling=notify"
    with pytest.raises(ConfigError, match="unknown option s"):
        parse_code("auto:s=2", 16)


def test_refusal_beyond_the_table_is_immediate_and_names_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: any construction would fail the test (CRC(2) at n = 256 searches for tens of minutes)
    monkeypatch.setattr(crc_module, "construct_crc_rows", lambda n, s: pytest.fail(f"construct({n}, {s})"))

    # Execute
    with pytest.raises(CodeConstructionError) as refused:
        parse_code("crc:s=4", 256)

    # Assert
    message = str(refused.value)
    assert "C(256,4)=174792640" in message
    assert message.endswith("tolerances near s that build: beyond n = 64 not checked (s=3, s=5, s=2 would each "
                            "need their construction, minutes at this n); auto builds at once: "
                            "nested-frc:groups=1,2,4,8,16,32")
