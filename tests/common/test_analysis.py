"""Latency analysis: closed forms, the decode-instant core against the shared Decoder, Monte Carlo."""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from flexgc.common import analysis
from flexgc.common import decoder as decoder_module
from flexgc.common.analysis import (
    chunk_trials,
    closed_form,
    decode_times,
    expected_latency_crc,
    expected_latency_frc,
    harmonic,
    simulate,
)
from flexgc.common.codes import Code, parse_code
from flexgc.common.decoder import Decoder
from flexgc.common.delays import parse_delay, sample_durations

MODEL_A = parse_delay("shifted-exp:a=1,mu=1")
CRC_CHECK = (0.3929, 0.5858, 0.7287, 0.8383, 0.9228)  # docs/design.md §3.3, n = 10, s = 0..4


def _arrivals(code: Code, durations: np.ndarray) -> np.ndarray:
    finish = np.cumsum(durations, axis=2)
    return np.stack([finish[:, np.arange(code.n), code.prefix[level] - 1]
                     for level in range(code.n_levels)], axis=1).reshape(len(durations), -1)


def _mask(received: np.ndarray) -> int:
    return sum(1 << int(m) for m in np.flatnonzero(received))


def _per_level_rule(code: Code, received: np.ndarray) -> bool:
    """The per-level rule of Maßny et al., written independently: some level has n - s_l messages (MDS levels) or
    one message from every group of slots sending the same row (FRC levels)."""
    for level in range(code.n_levels):
        got = received[level * code.n:(level + 1) * code.n]
        if code.family in ("frc", "nested-frc"):
            groups: dict[bytes, bool] = {}
            for i in range(code.n):
                key = code.B[level, i].tobytes()
                groups[key] = groups.get(key, False) or bool(got[i])
            if all(groups.values()):
                return True
        elif got.sum() >= code.n - code.levels[level]:
            return True
    return False


def _assert_earliest(code: Code, durations: np.ndarray, policy: str) -> np.ndarray:
    """Each latency is the earliest instant at which the received set is decodable: for any-span as
    decided by the shared Decoder itself, for per-level by the per-level rule (which the Decoder accepts)."""
    times = decode_times(code, durations, policy)
    decoder = Decoder(code, policy)

    def accepts(received: np.ndarray) -> bool:
        if policy == "per-level":
            return _per_level_rule(code, received)
        return decoder.solve(_mask(received)) is not None

    for t, arrival in enumerate(_arrivals(code, durations)):
        T = times.latency[t]
        if np.isfinite(T):
            assert accepts(arrival <= T), (code.spec, t)
            assert decoder.solve(_mask(arrival <= T)) is not None, (code.spec, t)
            assert not accepts(arrival < T), (code.spec, t)
            assert times.level[t] == int(np.flatnonzero(arrival == T)[0]) // code.n
        else:
            assert not accepts(np.isfinite(arrival)), (code.spec, t)
            assert times.level[t] == -1
    return times.latency


def _random_durations(code: Code, trials: int, seed: int, dead_p: float = 0.15) -> np.ndarray:
    """Per-partition random durations (no ties) with some dead workers."""
    rng = np.random.default_rng(seed)
    width = max(len(o) for o in code.order)
    d = rng.exponential(1.0, (trials, code.n, width)) * rng.exponential(1.0, (trials, code.n, 1)) + 0.01
    d[rng.random((trials, code.n)) < dead_p] = np.inf
    return d


# -- closed forms -------------------------------------------------------------------------------


def test_harmonic() -> None:
    assert harmonic(0) == 0.0
    assert harmonic(1) == 1.0
    assert harmonic(10) == pytest.approx(7381 / 2520, rel=1e-15)
    with pytest.raises(ValueError):
        harmonic(-1)


@pytest.mark.parametrize("s", range(5))
def test_crc_closed_form_check_values(s: int) -> None:
    assert round(expected_latency_crc(10, s, 1.0, 1.0), 4) == CRC_CHECK[s]


def test_frc_closed_form() -> None:
    # FRC(1), n = 10: 5 groups of 2; each group's time is 0.2 (1 + Exp(2)), the max of 5 Exp(2) has mean H_5/2
    assert expected_latency_frc(10, 1, 1.0, 1.0) == pytest.approx(0.2 * (1 + harmonic(5) / 2))
    assert expected_latency_frc(10, 0, 1.0, 1.0) == pytest.approx(expected_latency_crc(10, 0, 1.0, 1.0))
    with pytest.raises(ValueError, match="does not divide"):
        expected_latency_frc(10, 2, 1.0, 1.0)
    with pytest.raises(ValueError):
        expected_latency_crc(10, 10, 1.0, 1.0)


def test_closed_form_applies_only_to_plain_model_a() -> None:
    crc = parse_code("crc:s=2,decoder=per-level", 10)

    assert closed_form(crc, MODEL_A) == pytest.approx(expected_latency_crc(10, 2, 1, 1))
    assert closed_form(crc, MODEL_A, "any-span") is None
    assert closed_form(crc, parse_delay("shifted-exp:p=0.1")) is None
    assert closed_form(crc, parse_delay("per-partition")) is None
    assert closed_form(parse_code("nested:smax=2", 10), MODEL_A) is None
    assert closed_form(parse_code("frc:s=2", 10), MODEL_A) is None  # unequal groups


# -- Monte Carlo reproduces the theory ----------------------------------------------------------


@pytest.mark.parametrize("s", range(5))
def test_monte_carlo_crc_within_half_percent(s: int) -> None:
    result = simulate(parse_code(f"crc:s={s},decoder=per-level", 10), MODEL_A, 100_000, seed=s)

    assert result.closed_form == pytest.approx(CRC_CHECK[s], abs=5e-5)
    assert result.closed_form is not None and abs(result.mean / result.closed_form - 1) < 0.005
    assert result.ci95 < 0.002
    assert result.p_fail == 0.0 and result.layer_use == (1.0,)


@pytest.mark.parametrize(("spec", "expected"), [("frc:s=1", expected_latency_frc(10, 1, 1, 1)),
                                                ("ignore:s=3", 0.1 * (1 + harmonic(10) - harmonic(3)))])
def test_monte_carlo_other_closed_forms(spec: str, expected: float) -> None:
    result = simulate(parse_code(spec, 10), MODEL_A, 100_000, seed=5)

    assert result.closed_form == pytest.approx(expected)
    assert abs(result.mean / expected - 1) < 0.005


def test_nested_per_level_reproduces_the_check_value() -> None:
    result = simulate(parse_code("nested:levels=0,1,2,3,decoder=per-level", 10), MODEL_A, 100_000, seed=0)

    assert result.mean == pytest.approx(0.385, abs=0.003)
    assert result.mean < 0.5 * expected_latency_crc(10, 3, 1, 1)  # about 54% below CRC(3)
    assert sum(result.layer_use) == pytest.approx(1.0)
    assert result.layer_use[0] > 0.9


@pytest.mark.parametrize("delay", ["shifted-exp:a=1,mu=1", "per-partition:a=1,mu=1",
                                   "pareto:a=1,alpha=2,xm=1/slow:workers=0+3,factor=5"])
def test_nested_never_later_than_crc_of_any_level(delay: str) -> None:
    nested = parse_code("nested:levels=0,1,2,3", 10)
    d = sample_durations(parse_delay(delay), nested, 20_000, np.random.default_rng(4))

    per_level = decode_times(nested, d, "per-level").latency
    any_span = decode_times(nested, d, "any-span").latency

    assert np.all(any_span <= per_level)
    assert np.mean(any_span < per_level) > 0.2  # mixing levels does help
    for s in nested.levels:
        crc = parse_code(f"crc:s={s}", 10)
        assert np.all(per_level <= decode_times(crc, d[:, :, : s + 1], "per-level").latency)
        assert np.all(any_span <= decode_times(crc, d[:, :, : s + 1], "any-span").latency)


def test_any_span_crc_can_beat_n_minus_s() -> None:
    # real cyclic-MDS CRC(1) at n = 10 has rows (1, 1)/sqrt(2): slots 0, 2, 4, 6, 8 decode alone
    crc = parse_code("crc:s=1", 10)
    d = np.full((1, 10, 2), 1.0)
    d[0, 1::2] = 5.0

    assert decode_times(crc, d, "any-span").latency[0] == 2.0
    assert decode_times(crc, d, "per-level").latency[0] == 10.0
    r = simulate(crc, MODEL_A, 20_000, seed=1)
    assert r.mean < 0.95 * expected_latency_crc(10, 1, 1, 1) and r.closed_form is None


# -- fast paths agree with the Decoder ----------------------------------------------------------


def test_every_family_and_policy_decodes_exactly_when_the_decoder_can(decoder_case: tuple[int, str]) -> None:
    n, spec = decoder_case
    code = parse_code(spec, n)
    d = _random_durations(code, 6, zlib.crc32(spec.encode()) + n)

    _assert_earliest(code, d, code.decoder)


_MANY_TRIAL_SPECS = [
    (10, "nested:smax=4"), (10, "nested:levels=0,2,3"), (16, "nested:levels=0,4"),  # random-orthonormal
    (12, "nested-frc:groups=1,2,4"), (10, "frc:s=2"), (10, "multimessage:smax=3"),
    (10, "nested:smax=6"),  # n * L = 70 > 64: multi-word masks
]


@pytest.mark.parametrize(("n", "spec", "policy"), [
    (n, spec, policy) for n, spec in _MANY_TRIAL_SPECS for policy in ("any-span", "per-level")
    if not (spec.startswith("multimessage") and policy == "per-level")  # refused for multimessage
])
def test_decode_instants_match_decoder_on_many_trials(n: int, spec: str, policy: str) -> None:
    code = parse_code(spec, n)
    d = _random_durations(code, 150, 17, dead_p=0.1)

    _assert_earliest(code, d, policy)


@pytest.mark.parametrize("spec", ["ignore:s=3", "ignore:s=0"])
def test_ignore_takes_the_n_minus_s_th_arrival(spec: str) -> None:
    code = parse_code(spec, 10)
    d = _random_durations(code, 200, 3, dead_p=0.2)

    times = decode_times(code, d)

    expected = np.sort(d[:, :, 0], axis=1)[:, 10 - code.s_max - 1]
    assert np.array_equal(times.latency, expected)
    assert times.approximate
    _assert_earliest(code, d, "any-span")


@settings(max_examples=40, deadline=None)
@given(d=arrays(np.float64, (3, 7, 4), elements=st.one_of(st.floats(0.01, 10), st.just(np.inf))))
def test_any_span_never_later_than_per_level(d: np.ndarray) -> None:
    for spec in ("nested:levels=0,1,3", "nested:smax=3"):
        code = parse_code(spec, 7)

        any_span = decode_times(code, d, "any-span").latency
        per_level = decode_times(code, d, "per-level").latency

        assert np.all(any_span <= per_level)


def test_nested_any_span_with_consecutive_levels_equals_multimessage() -> None:
    # levels 0..s: a worker past level l has sent l+1 independent rows on its l+1 partitions
    d = sample_durations(MODEL_A, parse_code("nested:smax=3", 10), 3000, np.random.default_rng(8))

    nested = decode_times(parse_code("nested:smax=3", 10), d).latency
    multi = decode_times(parse_code("multimessage:smax=3", 10), d).latency

    assert np.allclose(nested, multi)


# -- laminar rows (FRC, nested FRC, uncoded): the block recursion against the generic search -----------


def _generic_times(code: Code, durations: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> tuple[np.ndarray,
                                                                                               np.ndarray]:
    """Any-span instants and levels by the generic path: binary search through a Decoder doing SVDs."""
    with monkeypatch.context() as patched:
        patched.setattr(analysis, "laminar_rows", lambda code: None)
        patched.setattr(decoder_module, "laminar_rows", lambda code: None)
        times = decode_times(code, durations, "any-span")
    return times.latency, times.level


def _chains(n: int) -> list[tuple[int, ...]]:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return [c for size in range(1, len(divisors) + 1) for c in itertools.combinations(divisors, size)
            if all(b % a == 0 for a, b in zip(c, c[1:]))]


@pytest.mark.parametrize(("n", "spec"), [(n, "nested-frc:groups=" + ",".join(map(str, c)))
                                         for n in range(2, 11) for c in _chains(n) if len(c) > 1]
                         + [(n, f"frc:s={s}") for n in (7, 10) for s in (1, 2, 3)] + [(9, "uncoded")])
def test_laminar_instants_equal_the_generic_search(n: int, spec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: per-partition durations with dead workers, and ties (equal speeds) in a few trials
    code = parse_code(spec, n)
    d = _random_durations(code, 120, zlib.crc32(spec.encode()) + n, dead_p=0.1)
    d[:10] = np.ceil(d[:10] * 2) / 2

    # Execute
    fast = decode_times(code, d, "any-span")
    latency, level = _generic_times(code, d, monkeypatch)

    # Assert: the same instants and levels, bit for bit
    assert np.array_equal(fast.latency, latency) and np.array_equal(fast.level, level)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(data=st.data())
def test_laminar_instants_equal_the_generic_search_beyond(data: st.DataObject) -> None:
    # Prepare: a random divisor chain at 12 <= n <= 32, random durations and dead workers
    n = data.draw(st.sampled_from([12, 16, 18, 24, 32]), label="n")
    chain = data.draw(st.sampled_from([c for c in _chains(n) if len(c) > 1]), label="groups")
    code = parse_code("nested-frc:groups=" + ",".join(map(str, chain)), n)
    d = _random_durations(code, 12, data.draw(st.integers(0, 2**32 - 1), label="seed"),
                          dead_p=data.draw(st.sampled_from([0.0, 0.1, 0.3]), label="dead_p"))

    # Execute
    fast = decode_times(code, d, "any-span")
    with pytest.MonkeyPatch.context() as monkeypatch:
        latency, level = _generic_times(code, d, monkeypatch)

    # Assert
    assert np.array_equal(fast.latency, latency) and np.array_equal(fast.level, level)


def test_nested_frc_at_n_256_runs_both_policies() -> None:
    # Prepare
    code = parse_code("nested-frc:groups=1,2,4,8,16,32", 256)

    # Execute
    per_level = simulate(code, parse_delay("shifted-exp:p=0.02"), 2000, seed=0, policy="per-level")
    any_span = simulate(code, parse_delay("shifted-exp:p=0.02"), 2000, seed=0, policy="any-span")

    # Assert: any-span is never later, and mixes levels
    assert any_span.mean < per_level.mean and any_span.p_fail <= per_level.p_fail == 0.0
    assert any_span.layer_use[1] > 0 and sum(any_span.layer_use) == pytest.approx(1.0)


# -- blocks and chunks --------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["nested-frc:groups=1,2,4", "crc:s=1", "nested:levels=0,2", "ignore:s=2"])
def test_no_trials_give_empty_results(spec: str) -> None:
    times = decode_times(parse_code(spec, 8), np.zeros((0, 8, 8)))

    assert times.latency.shape == times.level.shape == times.load.shape == (0,)


def test_blocks_of_trials_do_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    code = parse_code("nested:levels=0,2,3", 10)
    d = _random_durations(code, 300, 5)
    whole = decode_times(code, d)

    # Execute: about 7 trials per block
    monkeypatch.setattr(analysis, "BLOCK_ELEMENTS", 300)
    blocked = decode_times(code, d)

    # Assert
    for field in ("latency", "level", "load"):
        assert np.array_equal(getattr(whole, field), getattr(blocked, field))


def test_sampling_chunks_depend_on_n_and_k_only_and_keep_small_n_unchanged() -> None:
    assert all(chunk_trials(n, n) == analysis.CHUNK_TRIALS for n in range(1, 23))
    assert chunk_trials(256, 256) * 256 * 256 <= analysis.CHUNK_ELEMENTS
    assert chunk_trials(4096, 4096) == analysis.MIN_CHUNK_TRIALS


# -- load, levels, shapes -----------------------------------------------------------------------


@pytest.mark.parametrize("r", range(4))
def test_equal_speeds_load_is_r_plus_one_over_n(r: int) -> None:
    n = 10
    nested = parse_code("nested:levels=0,1,2,3,decoder=per-level", n)
    d = np.full((1, n, 4), 1.0 / n)
    d[0, list(range(0, 2 * r, 2))] = np.inf  # r dead, spread

    times = decode_times(nested, d)
    fixed = decode_times(parse_code("crc:s=3", n), d)

    assert times.latency[0] == pytest.approx((r + 1) / n)
    assert times.level[0] == r
    assert times.load[0] == pytest.approx((r + 1) / n)
    assert fixed.load[0] == pytest.approx(4 / n)


def test_partial_partitions_count_fractionally() -> None:
    code = parse_code("crc:s=1", 2)
    d = np.array([[[1.0, 1.0], [4.0, 4.0]]])  # decodable when slot 0 finishes both (t = 2)

    times = decode_times(code, d)

    assert times.latency[0] == 2.0
    # slot 0: 2 partitions, slot 1: half of its first; k = 2
    assert times.load[0] == pytest.approx(((2 + 0.5) / 2) / 2)


def test_single_trial_shapes() -> None:
    code = parse_code("nested:smax=2", 10)
    d = _random_durations(code, 5, 1, dead_p=0.0)

    batch = decode_times(code, d)
    one = decode_times(code, d[2])

    assert one.latency.shape == one.level.shape == one.load.shape == (1,)
    assert one.latency[0] == batch.latency[2] and one.level[0] == batch.level[2]


def test_more_dead_than_tolerated_never_decodes() -> None:
    code = parse_code("crc:s=2", 10)
    result = simulate(code, parse_delay("shifted-exp/dead:workers=0+1+2"), 500, seed=1)

    assert result.p_fail == 1.0 and result.p_excess == 1.0
    assert result.mean == np.inf and result.layer_use == (0.0,)


def test_bad_inputs_raise() -> None:
    code = parse_code("crc:s=1", 4)
    with pytest.raises(ValueError, match="shape"):
        decode_times(code, np.ones((2, 4, 1)))
    with pytest.raises(ValueError, match="NaN"):
        decode_times(code, np.full((1, 4, 2), np.nan))
    with pytest.raises(ValueError, match="decoder"):
        decode_times(code, np.ones((1, 4, 2)), "first-come")


# -- simulate -----------------------------------------------------------------------------------


def test_simulate_is_seeded() -> None:
    code = parse_code("nested:smax=2", 10)
    model = parse_delay("shifted-exp:p=0.1")

    a = simulate(code, model, 3000, seed=1)
    b = simulate(code, model, 3000, seed=1)
    c = simulate(code, model, 3000, seed=2)

    assert a == b
    assert a.mean != c.mean


def test_simulate_summary_fields() -> None:
    code = parse_code("nested:levels=0,1,2", 10)

    r = simulate(code, parse_delay("shifted-exp:p=0.1"), 70_000, seed=3)  # spans two chunks

    assert r.trials == 70_000 and len(r.layer_use) == 3
    assert sum(r.layer_use) == pytest.approx(1 - r.p_fail)
    assert 0 < r.p_fail <= r.p_excess < 0.1
    assert r.median <= r.p90
    assert 1 / 10 <= r.mean_load <= 3 / 10
    assert r.as_dict()["code"] == "nested:levels=0,1,2"
