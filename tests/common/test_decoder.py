"""Tests of `flexgc.common.decoder`: exact decoding on every tolerated straggler set, nested load and
policy invariants, the ignore-s approximation, caching and the weighted sum (docs/design.md §2.8).

A message vector is built the way a worker builds it, ``f = B[level, slot] @ G`` in the gradient's
dtype; the decoded vector must equal ``1^T G = sum_j g_j``.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Collection, Iterable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flexgc.common.codes import DEFAULT_MAX_COND, Code, parse_code
from flexgc.common.decoder import Decoder, Decoding, mask_of
from flexgc.common.errors import CodeConstructionError, ConfigError

D = 6  # gradient length
RESIDUAL_TOL = 1e-9
REL_ERROR: dict[type, float] = {np.float64: 1e-10, np.float32: 1e-5}
CHEAP_CRC_PATTERNS = 12000  # keeps one CRC build in the property tests well under a second
PROPERTY = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------
# helpers


def gradients(n: int, dtype: type = np.float64, seed: int = 0) -> np.ndarray:
    """G: ``(k, D)`` random partial gradients g_j in `dtype`."""
    return np.random.default_rng(seed).standard_normal((n, D)).astype(dtype)


def message_vectors(code: Code, G: np.ndarray) -> np.ndarray:
    """``(n_messages, D)``: row ``message_id(level, i)`` is ``B[level, i] @ G`` computed in G's dtype."""
    return (code.B.astype(G.dtype) @ G).reshape(code.n_messages, -1)


def decode(decoding: Decoding, V: np.ndarray) -> np.ndarray:
    return Decoder.combine(decoding, V[list(decoding.messages)])


def relative_error(estimate: np.ndarray, G: np.ndarray) -> float:
    target = G.astype(np.float64).sum(axis=0)
    return float(np.linalg.norm(estimate.astype(np.float64) - target) / np.linalg.norm(target))


def from_slots(code: Code, slots: Iterable[int], levels: Iterable[int] | None = None) -> list[int]:
    """Message ids of `slots` for `levels` (default: every level)."""
    chosen = range(code.n_levels) if levels is None else levels
    return [code.message_id(level, i) for level in chosen for i in slots]


def alive(n: int, dead: Collection[int]) -> list[int]:
    return [i for i in range(n) if i not in dead]


Outcome = tuple[tuple[int, ...], list[int], Decoding | None]  # dead slots, received ids, decoding


@functools.cache
def tolerated_decodings(n: int, spec: str) -> tuple[Code, list[Outcome]]:
    """Every set of s_max dead slots, the messages of all levels from the others, and the decoding."""
    code = parse_code(spec, n)
    decoder = Decoder(code)
    out = []
    for dead in itertools.combinations(range(n), code.s_max):
        received = from_slots(code, alive(n, dead))
        out.append((dead, received, decoder.solve(received)))
    return code, out


# ---------------------------------------------------------------------------------------------
# every family, every n <= 10, every tolerated straggler set


def test_every_tolerated_straggler_set_decodes_exactly(decoder_case: tuple[int, str]) -> None:
    # Prepare / Execute
    _, decodings = tolerated_decodings(*decoder_case)

    # Assert
    failed = [dead for dead, _, d in decodings if d is None or not d.exact or d.residual > RESIDUAL_TOL]
    foreign = [dead for dead, received, d in decodings if d is not None and not set(d.messages) <= set(received)]
    assert not failed, f"no exact decoding for dead slots {failed[:5]}"
    assert not foreign, f"decoding uses messages that did not arrive for dead slots {foreign[:5]}"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_decoded_vector_is_the_gradient_sum(decoder_case: tuple[int, str], dtype: type) -> None:
    # Prepare
    n, spec = decoder_case
    code, decodings = tolerated_decodings(n, spec)
    G = gradients(n, dtype, seed=n)
    V = message_vectors(code, G)

    # Execute
    errors = {dead: relative_error(decode(d, V), G) for dead, _, d in decodings if d is not None}

    # Assert
    worst = max(errors, key=errors.__getitem__)
    assert errors[worst] <= REL_ERROR[dtype], f"dead slots {worst}: relative error {errors[worst]:.3g}"
    assert all(decode(d, V).dtype == dtype for _, _, d in decodings if d is not None)


@pytest.mark.parametrize(
    ("n", "s", "stragglers"),
    [
        (24, 4, (8, 14, 18, 23)),
        (32, 4, (5, 9, 15, 25)),
        (32, 2, (15, 30)),
        (31, 8, (1, 2, 3, 4, 5, 6, 7, 8)),
        (28, 8, (0, 3, 5, 7, 11, 14, 18, 25)),  # its construction could only be sampled: refused now
    ],
)
def test_default_crc_decodes_known_hard_straggler_sets(n: int, s: int, stragglers: tuple[int, ...]) -> None:
    # Prepare: sets of large cond(B_F) found by exhaustive or hill-climbing search on the default
    # constructions (a code refused for its conditioning ships nothing, which is allowed)
    code = build_or_refuse(n, f"crc:s={s}")
    if code is None:
        return
    G = gradients(n)

    # Execute
    decoding = Decoder(code).solve(alive(n, stragglers))

    # Assert
    assert decoding is not None
    assert relative_error(decode(decoding, message_vectors(code, G)), G) <= error_bound(decoding)


# ---------------------------------------------------------------------------------------------
# ignore-s: exact only with all n, flagged and rescaled with n - s


IGNORE_CASES = [(n, s) for n in range(1, 11) for s in range(n)]


@pytest.mark.parametrize(("n", "s"), IGNORE_CASES)
def test_ignore_decodes_exactly_with_all_workers(n: int, s: int) -> None:
    # Prepare
    code = parse_code(f"ignore:s={s}", n)
    G = gradients(n)

    # Execute
    decoding = Decoder(code).solve(range(n))

    # Assert
    assert decoding is not None and decoding.exact and decoding.residual <= RESIDUAL_TOL
    assert relative_error(decode(decoding, message_vectors(code, G)), G) <= REL_ERROR[np.float64]


@pytest.mark.parametrize("policy", ["any-span", "per-level"])
@pytest.mark.parametrize(("n", "s"), [(n, s) for n, s in IGNORE_CASES if s > 0])
def test_ignore_with_n_minus_s_is_flagged_and_rescaled(n: int, s: int, policy: str) -> None:
    # Prepare
    code = parse_code(f"ignore:s={s}", n)
    decoder = Decoder(code, policy)
    G = gradients(n)
    V = message_vectors(code, G)
    scale = n / (n - s)
    dead_sets = list(itertools.combinations(range(n), s))

    # Execute
    decodings = [decoder.solve(alive(n, dead)) for dead in dead_sets]

    # Assert
    for dead, decoding in zip(dead_sets, decodings):
        assert decoding is not None and not decoding.exact and decoding.residual > 0
        assert decoding.messages == tuple(alive(n, dead))
        np.testing.assert_allclose(decoding.weights, scale)
        np.testing.assert_allclose(decode(decoding, V), scale * G[alive(n, dead)].sum(axis=0), rtol=1e-12)


@pytest.mark.parametrize(("n", "s"), [(n, s) for n, s in IGNORE_CASES if s + 1 < n])
def test_ignore_with_fewer_than_n_minus_s_does_not_decode(n: int, s: int) -> None:
    # Prepare
    decoder = Decoder(parse_code(f"ignore:s={s}", n))

    # Execute
    results = [decoder.solve(alive(n, dead)) for dead in itertools.combinations(range(n), s + 1)]

    # Assert
    assert results == [None] * len(results)


# ---------------------------------------------------------------------------------------------
# FRC: decodable as soon as every group has one finisher


@pytest.mark.parametrize("policy", ["any-span", "per-level"])
@pytest.mark.parametrize(("n", "s"), [(n, s) for n in range(1, 9) for s in range(n)])
def test_frc_decodes_exactly_when_every_group_has_a_finisher(n: int, s: int, policy: str) -> None:
    # Prepare
    code = parse_code(f"frc:s={s}", n)
    decoder = Decoder(code, policy)
    groups = {frozenset(int(j) for j in np.flatnonzero(row)) for row in code.B[0]}
    holders = [{i for i in range(n) if set(np.flatnonzero(code.B[0, i])) == group} for group in groups]
    subsets = [c for size in range(n + 1) for c in itertools.combinations(range(n), size)]

    # Execute
    decodes = {finished: decoder.solve(list(finished)) is not None for finished in subsets}

    # Assert
    expected = {finished: all(h & set(finished) for h in holders) for finished in subsets}
    assert decodes == expected


# ---------------------------------------------------------------------------------------------
# nested invariants


def first_decoding_partition(decoder: Decoder, dead: tuple[int, ...]) -> int | None:
    """Equal speeds: every alive slot finishes its m-th partition at time m and then sends the messages of
    the levels whose prefix is m. The smallest m whose messages (prefix <= m) decode, or None."""
    code = decoder.code
    living = alive(code.n, dead)
    for m in range(1, int(code.prefix.max()) + 1):
        received = [code.message_id(level, i) for level in range(code.n_levels) for i in living
                    if code.prefix[level, i] <= m]
        if decoder.solve(received) is not None:
            return m
    return None


def loads_under_dead_workers(n: int, smax: int, policy: str) -> dict[int, list[float]]:
    """For r = 0..smax: the per-worker load (m / n) at which nested:smax decodes, for every set of r
    dead slots (inf if it never does)."""
    code = parse_code(f"nested:smax={smax}", n)
    decoder = Decoder(code, policy)
    loads: dict[int, list[float]] = {}
    for r in range(smax + 1):
        ms = [first_decoding_partition(decoder, dead) for dead in itertools.combinations(range(n), r)]
        loads[r] = [math.inf if m is None else code.load(m) for m in ms]
    return loads


NESTED_SMALL = [(n, smax) for n in range(1, 11) for smax in range(n)]


@pytest.mark.parametrize(("n", "smax"), NESTED_SMALL)
def test_per_level_load_under_r_dead_workers_is_r_plus_one_over_n(n: int, smax: int) -> None:
    # Execute
    loads = loads_under_dead_workers(n, smax, "per-level")

    # Assert
    assert {r: set(v) for r, v in loads.items()} == {r: {(r + 1) / n} for r in range(smax + 1)}


@pytest.mark.parametrize(("n", "smax"), NESTED_SMALL)
def test_any_span_worst_load_under_r_dead_workers_is_r_plus_one_over_n(n: int, smax: int) -> None:
    # Execute
    loads = loads_under_dead_workers(n, smax, "any-span")

    # Assert: never more than (r + 1)/n, and some dead sets (e.g. contiguous blocks) need all of it
    assert {r: max(v) for r, v in loads.items()} == {r: (r + 1) / n for r in range(smax + 1)}


@pytest.mark.parametrize("policy", ["any-span", "per-level"])
@pytest.mark.parametrize(("n", "r"), [(10, 1), (10, 3), (7, 2), (9, 4)])
def test_contiguous_dead_block_costs_exactly_r_plus_one_partitions(n: int, r: int, policy: str) -> None:
    # Prepare: the last dead slot's partition is held only by dead slots until m = r + 1
    decoder = Decoder(parse_code(f"nested:smax={r}", n), policy)
    blocks = [tuple(sorted((start + j) % n for j in range(r))) for start in range(n)]

    # Execute
    ms = [first_decoding_partition(decoder, dead) for dead in blocks]

    # Assert
    assert ms == [r + 1] * n


def test_fixed_crc_always_pays_smax_plus_one() -> None:
    # Prepare
    decoder = Decoder(parse_code("crc:s=3", 10))

    # Execute
    ms = [first_decoding_partition(decoder, dead) for r in range(4) for dead in itertools.combinations(range(10), r)]

    # Assert
    assert set(ms) == {4}


@st.composite
def nested_arrivals(draw: st.DrawFn, max_n: int = 12) -> tuple[int, str, list[int]]:
    n = draw(st.integers(1, max_n))
    levels = sorted(draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=4)))
    spec = "nested:levels=" + ",".join(map(str, levels))
    order = draw(st.permutations(range(len(levels) * n)))
    return n, spec, list(order)


def first_decoding_prefix(decoder: Decoder, arrivals: list[int]) -> float:
    for t in range(1, len(arrivals) + 1):
        if decoder.solve(arrivals[:t]) is not None:
            return t
    return math.inf


@PROPERTY
@given(case=nested_arrivals())
def test_any_span_never_decodes_later_than_per_level(case: tuple[int, str, list[int]]) -> None:
    # Prepare
    n, spec, arrivals = case
    code = parse_code(spec, n)

    # Execute
    any_span = first_decoding_prefix(Decoder(code, "any-span"), arrivals)
    per_level = first_decoding_prefix(Decoder(code, "per-level"), arrivals)

    # Assert
    assert any_span <= per_level
    assert any_span < math.inf


def test_any_span_decodes_from_mixed_levels_where_per_level_cannot() -> None:
    # Prepare: slot 0 is dead; the level-0 rows of 1..9 miss partition 0, slot 9's level-1 row holds {9, 0}
    code = parse_code("nested:levels=0,1", 10)
    received = [*from_slots(code, range(1, 10), levels=[0]), code.message_id(1, 9)]

    # Execute
    any_span = Decoder(code, "any-span").solve(received)
    per_level = Decoder(code, "per-level").solve(received)

    # Assert
    assert per_level is None
    assert any_span is not None and any_span.exact and any_span.level == 1


@pytest.mark.parametrize(("n", "smax"), [(n, smax) for n in range(2, 9) for smax in range(1, n)])
def test_per_level_uses_rows_of_one_level(n: int, smax: int) -> None:
    # Prepare
    code = parse_code(f"nested:smax={smax}", n)
    decoder = Decoder(code, "per-level")
    dead_sets = [dead for r in range(smax + 1) for dead in itertools.combinations(range(n), r)]

    # Execute
    decodings = [decoder.solve(from_slots(code, alive(n, dead))) for dead in dead_sets]

    # Assert
    levels_used = [{code.message_of(m)[0] for m in d.messages} for d in decodings if d is not None]
    assert len(levels_used) == len(dead_sets)
    assert all(len(used) == 1 for used in levels_used)
    assert all(d is not None and {d.level} == used for d, used in zip(decodings, levels_used))


# ---------------------------------------------------------------------------------------------
# property-based, up to n = 40


def cheap_tolerances(n: int) -> list[int]:
    """CRC tolerances whose construction validates at most CHEAP_CRC_PATTERNS straggler sets (C(n, s))."""
    return [s for s in range(n) if math.comb(n, s) <= CHEAP_CRC_PATTERNS]


@st.composite
def codes(draw: st.DrawFn, max_n: int = 40) -> tuple[int, str]:
    """A random family and parameter set at a random n, with a random decoder policy."""
    n = draw(st.integers(1, max_n))
    family = draw(st.sampled_from(["frc", "crc", "nested", "nested-frc", "multimessage"]))
    if family == "frc":
        spec = f"frc:s={draw(st.integers(0, n - 1))}"
    elif family == "crc":
        spec = f"crc:s={draw(st.sampled_from(cheap_tolerances(n)))}"
    elif family == "multimessage":
        spec = f"multimessage:smax={draw(st.integers(0, n - 1))}"
    elif family == "nested":
        levels = sorted(draw(st.sets(st.sampled_from(cheap_tolerances(n)), min_size=1, max_size=3)))
        spec = "nested:levels=" + ",".join(map(str, levels))
    else:  # a random divisor chain of n
        chain = [draw(st.sampled_from([d for d in range(1, n + 1) if n % d == 0]))]
        while chain[-1] < n and draw(st.booleans()):
            rest = n // chain[-1]
            chain.append(chain[-1] * draw(st.sampled_from([f for f in range(2, rest + 1) if rest % f == 0])))
        spec = "nested-frc:groups=" + ",".join(map(str, chain))
    policies = ["any-span"] if family == "multimessage" else ["any-span", "per-level"]
    return n, f"{spec},decoder={draw(st.sampled_from(policies))}"


def build_or_refuse(n: int, spec: str) -> Code | None:
    """The code, or None when a CRC construction is refused; a refusal must name the alternatives."""
    try:
        return parse_code(spec, n)
    except CodeConstructionError as refused:
        assert "tolerances near s that build" in str(refused)
        assert "crc" in spec or "nested" in spec
        return None


def error_bound(decoding: Decoding) -> float:
    """Float64 forward error of a backward-stable solve: max(1e-10, 10 eps cond(B_F))."""
    return max(REL_ERROR[np.float64], 10 * np.finfo(np.float64).eps * decoding.cond)


@PROPERTY
@given(case=codes(), data=st.data())
def test_random_code_decodes_random_tolerated_dead_set(case: tuple[int, str], data: st.DataObject) -> None:
    # Prepare
    n, spec = case
    code = build_or_refuse(n, spec)
    if code is None:
        return
    dead = data.draw(st.sets(st.integers(0, n - 1), max_size=code.s_max), label="dead")
    G = gradients(n, seed=len(dead))

    # Execute
    decoding = Decoder(code).solve(from_slots(code, alive(n, dead)))

    # Assert
    assert decoding is not None and decoding.exact and decoding.residual <= RESIDUAL_TOL
    assert decoding.cond <= 10 * DEFAULT_MAX_COND
    assert relative_error(decode(decoding, message_vectors(code, G)), G) <= error_bound(decoding)


def must_decode(code: Code, received: set[int]) -> bool:
    """Sufficient condition from the code's claim: some level l has the level-l messages of n - s_l
    slots (CRC/nested), or one level-l message from every level-l group (FRC), or, for multimessage,
    every partition was received."""
    n = code.n
    if code.family == "multimessage":
        return {code.order[i][level] for level, i in map(code.message_of, received)} == set(range(n))
    for level, s in enumerate(code.levels):
        slots = {i for lv, i in map(code.message_of, received) if lv == level}
        if code.family in ("frc", "nested-frc"):
            groups = {frozenset(np.flatnonzero(code.B[level, i]).tolist()) for i in range(n)}
            got = {frozenset(np.flatnonzero(code.B[level, i]).tolist()) for i in slots}
            if got == groups:
                return True
        elif len(slots) >= n - s:
            return True
    return False


@PROPERTY
@given(case=codes(), data=st.data())
def test_random_arrivals_decode_when_the_code_says_they_must(case: tuple[int, str],
                                                              data: st.DataObject) -> None:
    # Prepare
    n, spec = case
    code = build_or_refuse(n, spec)
    if code is None:
        return
    some = data.draw(st.sets(st.integers(0, code.n_messages - 1)), label="some messages")
    received = set(range(code.n_messages)) - some if data.draw(st.booleans(), label="drop them") else some
    G = gradients(n, seed=len(received))

    # Execute
    decoding = Decoder(code).solve(received)

    # Assert
    if must_decode(code, received):
        assert decoding is not None
    if decoding is not None:
        assert decoding.exact and decoding.residual <= RESIDUAL_TOL
        assert relative_error(decode(decoding, message_vectors(code, G)), G) <= error_bound(decoding)


# ---------------------------------------------------------------------------------------------
# decoder mechanics: cache, approximate, combine, policy


def test_cache_is_bounded() -> None:
    # Prepare
    code = parse_code("crc:s=2", 8)
    decoder = Decoder(code, cache_size=5)

    # Execute
    for dead in itertools.combinations(range(8), 2):
        decoder.solve(alive(8, dead))

    # Assert
    assert decoder.cache_info() == {"size": 5, "hits": 0, "misses": 28}


def test_repeated_pattern_hits_the_cache() -> None:
    # Prepare
    code = parse_code("nested:smax=2", 8)
    decoder = Decoder(code)
    received = from_slots(code, range(7), levels=[1])  # slot 7 dead
    first = decoder.solve(received)

    # Execute
    again = decoder.solve(list(reversed(received)))
    as_mask = decoder.solve(mask_of(received))

    # Assert
    assert first is not None and again is first and as_mask is first
    assert decoder.cache_info() == {"size": 1, "hits": 2, "misses": 1}


def test_undecodable_pattern_is_cached_too() -> None:
    # Prepare
    decoder = Decoder(parse_code("crc:s=1", 6))

    # Execute
    results = [decoder.solve([0, 1, 2]) for _ in range(3)]

    # Assert
    assert results == [None, None, None]
    assert decoder.cache_info()["misses"] == 1


def test_cache_evicts_the_least_recently_used_pattern() -> None:
    # Prepare
    decoder = Decoder(parse_code("crc:s=1", 6), cache_size=2)
    a, b, c = [1, 2, 3, 4, 5], [0, 2, 3, 4, 5], [0, 1, 3, 4, 5]
    decoder.solve(a)
    decoder.solve(b)
    decoder.solve(a)

    # Execute
    decoder.solve(c)  # evicts b, the least recently used
    decoder.solve(a)
    decoder.solve(b)

    # Assert
    assert decoder.cache_info() == {"size": 2, "hits": 2, "misses": 4}


def test_approximate_on_undecodable_set_is_flagged() -> None:
    # Prepare: slots 0 and 1 dead, beyond smax = 1; partition 1 is held only by them
    code = parse_code("nested:smax=1", 6)
    decoder = Decoder(code)
    received = from_slots(code, range(2, 6))
    G = gradients(6)

    # Execute
    exact = decoder.solve(received)
    approx = decoder.approximate(received)

    # Assert
    assert exact is None
    assert not approx.exact and approx.residual > 0.5
    assert set(approx.messages) <= set(received)
    assert relative_error(decode(approx, message_vectors(code, G)), G) > 1e-3


def test_approximate_on_decodable_set_is_the_exact_decoding() -> None:
    # Prepare
    decoder = Decoder(parse_code("crc:s=2", 7))
    received = [0, 1, 3, 4, 6]

    # Execute
    approx = decoder.approximate(received)

    # Assert
    assert approx is decoder.solve(received) and approx.exact


def test_approximate_with_nothing_received_has_full_residual() -> None:
    # Prepare
    decoder = Decoder(parse_code("crc:s=2", 7))

    # Execute
    approx = decoder.approximate([])

    # Assert
    assert not approx.exact and approx.messages == () and approx.residual == pytest.approx(math.sqrt(7))


def test_approximate_for_ignore_rescales_what_arrived() -> None:
    # Prepare
    decoder = Decoder(parse_code("ignore:s=2", 6))

    # Execute
    approx = decoder.approximate([0, 1, 2, 3])

    # Assert
    assert not approx.exact and approx.residual > 0
    np.testing.assert_allclose(approx.weights, 6 / 4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_combine_fills_out_in_place(dtype: type) -> None:
    # Prepare
    code = parse_code("crc:s=2", 7)
    decoding = Decoder(code).solve([0, 2, 3, 5, 6])
    assert decoding is not None
    G = gradients(7, dtype)
    rows = message_vectors(code, G)[list(decoding.messages)]
    out: np.ndarray = np.full(D, np.nan, dtype=dtype)

    # Execute
    result = Decoder.combine(decoding, rows, out=out)

    # Assert
    assert result is out and out.dtype == dtype
    assert relative_error(out, G) <= REL_ERROR[dtype]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_combine_keeps_the_gradient_dtype(dtype: type) -> None:
    # Prepare
    code = parse_code("frc:s=1", 6)
    decoding = Decoder(code).solve([0, 2, 4])
    assert decoding is not None
    G = gradients(6, dtype)

    # Execute
    result = Decoder.combine(decoding, message_vectors(code, G)[list(decoding.messages)])

    # Assert
    assert result.dtype == dtype and result.shape == (D,)
    assert relative_error(result, G) <= REL_ERROR[dtype]


def test_decoding_reports_cond_of_the_rows_it_solved() -> None:
    # Prepare
    code = parse_code("crc:s=2", 7)
    received = [0, 1, 3, 4, 6]

    # Execute
    decoding = Decoder(code).solve(received)

    # Assert
    assert decoding is not None
    assert decoding.cond == pytest.approx(np.linalg.cond(code.B[0, received]), rel=1e-9)
    assert decoding.residual == pytest.approx(
        np.linalg.norm(decoding.weights @ code.B[0, list(decoding.messages)] - 1), abs=1e-12)


def test_policy_defaults_to_the_code_decoder_option() -> None:
    # Execute
    decoder = Decoder(parse_code("nested:smax=2,decoder=per-level", 6))

    # Assert
    assert decoder.policy == "per-level"


@pytest.mark.parametrize(
    ("spec", "policy", "expected"),
    [
        ("crc:s=1", "fastest", ["decoder='fastest'", "any-span", "per-level"]),
        ("multimessage:smax=1", "per-level", ["decoder=per-level", "allowed: any-span"]),
    ],
)
def test_decoder_refuses_an_invalid_policy(spec: str, policy: str, expected: list[str]) -> None:
    # Prepare
    code = parse_code(spec, 4)

    # Execute
    with pytest.raises(ConfigError) as caught:
        Decoder(code, policy)

    # Assert
    assert all(part in str(caught.value) for part in expected), str(caught.value)


# ---------------------------------------------------------------------------------------------
# laminar indicator rows (uncoded, FRC, nested FRC, multimessage): the span test skips the SVD


def generic(code: Code) -> Decoder:
    """An any-span Decoder with the laminar shortcut turned off (cover check, then the SVD)."""
    decoder = Decoder(code, "any-span")
    decoder._laminar = None
    return decoder


@pytest.mark.parametrize(("n", "spec"), [(4, "nested-frc:groups=1,2,4"), (6, "nested-frc:groups=1,3"),
                                         (6, "nested-frc:groups=2,6"), (5, "frc:s=1"), (4, "multimessage:smax=2"),
                                         (8, "uncoded"), (12, "frc:s=3")])
def test_laminar_shortcut_gives_the_generic_decoding_on_every_received_set(n: int, spec: str) -> None:
    # Prepare
    code = parse_code(spec, n)
    fast, slow = Decoder(code, "any-span"), generic(code)
    assert fast._laminar is not None

    # Execute / Assert: same answer, same weights on every subset of the messages
    for mask in range(1 << code.n_messages):
        a, b = fast.solve(mask), slow.solve(mask)
        assert (a is None) == (b is None), (spec, bin(mask))
        if a is not None and b is not None:
            assert a.messages == b.messages and np.array_equal(a.weights, b.weights)


@PROPERTY
@given(data=st.data())
def test_laminar_shortcut_agrees_with_the_generic_decoder_on_random_arrivals(data: st.DataObject) -> None:
    # Prepare: nested FRC up to n = 32 and the arrivals of a random run prefix (slot i sent r_i levels)
    n = data.draw(st.sampled_from([8, 12, 16, 24, 32]), label="n")
    divisors = [d for d in range(2, n + 1) if n % d == 0]
    chain = [1]
    while data.draw(st.booleans(), label="longer") and any(d % chain[-1] == 0 and d > chain[-1] for d in divisors):
        chain.append(data.draw(st.sampled_from([d for d in divisors if d % chain[-1] == 0 and d > chain[-1]])))
    code = parse_code("nested-frc:groups=" + ",".join(map(str, chain)), n)
    reached = data.draw(st.lists(st.integers(0, code.n_levels), min_size=n, max_size=n), label="levels sent")
    mask = mask_of(code.message_id(level, i) for i, r in enumerate(reached) for level in range(r))

    # Execute / Assert
    assert (Decoder(code, "any-span").solve(mask) is None) == (generic(code).solve(mask) is None)
