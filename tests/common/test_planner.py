"""Tests of adaptive placement's pure parts: split codes, the weighted family and the planner (docs/design.md
§2.10). Exactness first: every plan decodes every straggler set it claims, within its stated cond."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexgc.common.analysis import decode_times, simulate
from flexgc.common.codes import parse_code, removed_slots, split_partitions, weighted_code
from flexgc.common.decoder import Decoder
from flexgc.common.delays import parse_delay
from flexgc.common.errors import ConfigError
from flexgc.common.planner import (
    RING_RULES,
    candidate,
    chronic_speeds,
    membership_plan,
    plan,
    predicted_latency,
    speed_blocks,
)
from flexgc.common.quality import check_code


def _two_class(n: int, W: int, seed: int, slow: tuple[int, ...], factor: float = 4.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    f = np.ones(n)
    f[list(slow)] = factor
    return (1 + rng.exponential(1 / 20, (W, n))) * f * 0.3


# -- split=M --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "n"), [("uncoded", 5), ("crc:s=1", 5), ("nested:levels=0,1,2", 6),
                                          ("nested-frc:groups=1,2", 4), ("multimessage:smax=2", 5),
                                          ("ignore:s=1", 4), ("frc:s=1", 5)])
@pytest.mark.parametrize("m", [2, 3])
def test_split_keeps_decodability_and_weights(spec: str, n: int, m: int) -> None:
    coarse = parse_code(spec, n)
    fine = parse_code(f"{spec}{',' if ':' in spec else ':'}split={m}", n)
    assert fine.k == m * coarse.k and fine.levels == coarse.levels
    assert fine.spec == parse_code(fine.spec, n).spec  # canonical round trip
    assert fine.order[0][:m] == tuple(coarse.order[0][0] * m + t for t in range(m))
    assert np.array_equal(fine.prefix, coarse.prefix * m)
    dc, df = Decoder(coarse), Decoder(fine)
    for mask in range(1, 1 << coarse.n_messages, max(1, (1 << coarse.n_messages) // 300)):
        a, b = dc.solve(mask), df.solve(mask)
        assert (a is None) == (b is None), mask
        if a is not None and b is not None:
            assert a.messages == b.messages
            # rows scale by sqrt(m) for unit-norm rows, so weights are those of the coarse code over the scale
            assert a.exact == b.exact


def test_split_is_refused_beyond_its_range_and_for_weighted() -> None:
    with pytest.raises(ConfigError, match="split=65"):
        parse_code("nested:levels=0,1,split=65", 4)
    with pytest.raises(ConfigError, match="split is meaningless for weighted"):
        parse_code("weighted:blocks=1+1,ring=0+1,smax=1,split=2", 2)
    assert split_partitions(parse_code("uncoded", 3), 1).k == 3


# -- the weighted family --------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.integers(2, 9).flatmap(lambda n: st.tuples(
    st.lists(st.integers(1, 6), min_size=n, max_size=n), st.permutations(list(range(n))), st.integers(0, n - 1))))
def test_weighted_code_decodes_every_claimed_straggler_set(case: tuple[list[int], list[int], int]) -> None:
    blocks, ring, smax = case
    code = weighted_code(blocks, ring, smax)
    assert code.k == sum(blocks) and code.s_max == smax
    report = check_code(code, max_exhaustive=600, samples=200)
    assert not report["failures"], report["failures"][:3]
    assert report["ok"] and report["worst_rel_err_float64"] <= 1e-12
    assert report["worst_cond"] <= code.worst_cond[0] * (1 + 1e-9)  # the stated bound holds
    # each block is held by smax + 1 distinct slots, and a slot's level-0 message is its own block
    for i in range(len(blocks)):
        assert code.prefix[0, i] == blocks[i]
        assert len(set(code.order[i])) == len(code.order[i])


def test_weighted_spec_round_trips_and_names_bad_fields() -> None:
    code = weighted_code((3, 1, 2), (2, 0, 1), 1)
    again = parse_code(code.spec, 3)
    assert again.spec == code.spec and again.order == code.order
    for spec, words in [("weighted:blocks=1+1+1,ring=0+1+1,smax=1", "permutation"),
                        ("weighted:blocks=0+0+0,ring=0+1+2,smax=0", "at least one slot"),
                        ("weighted:blocks=1+0+1,ring=0+1+2,smax=2", "the slots with a block"),
                        ("weighted:blocks=1+1,ring=0+1,smax=1", "one per slot"),
                        ("weighted:ring=0+1+2,smax=1", "blocks="),
                        ("weighted:blocks=1+1+1,ring=0+1+2,smax=1,decoder=per-level", "any-span")]:
        with pytest.raises(ConfigError, match=words):
            parse_code(spec, 3)


def test_weighted_decodes_at_level_zero_when_nobody_straggles_in_speed_proportional_time() -> None:
    speeds = np.array([1.0, 1.0, 4.0, 4.0])
    blocks = speed_blocks(20, speeds)
    code = weighted_code(blocks, (0, 1, 2, 3), 1)
    durations = np.repeat((speeds / code.k)[None, :, None], max(len(o) for o in code.order), axis=2)
    result = decode_times(code, durations)
    # the slowest own block ends the iteration: max(c_i t_i) / k, with the blocks of the min-max allocation
    assert result.latency[0] == pytest.approx(max(b * t for b, t in zip(blocks, speeds)) / code.k)
    assert result.level[0] == 0


# -- speed blocks and the planner -----------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.1, 10.0), min_size=2, max_size=8), st.integers(1, 6))
def test_speed_blocks_are_the_min_max_allocation(speeds: list[float], m: int) -> None:
    t = np.array(speeds)
    k = m * len(t)
    blocks = speed_blocks(k, t)
    assert sum(blocks) == k and min(blocks) >= 1
    best = max(b * s for b, s in zip(blocks, t))
    # no single move of one partition from the slowest-ending slot to another ends sooner
    worst = int(np.argmax([b * s for b, s in zip(blocks, t)]))
    for j in range(len(t)):
        if j != worst and blocks[worst] > 1:
            moved = list(blocks)
            moved[worst] -= 1
            moved[j] += 1
            assert max(b * s for b, s in zip(moved, t)) >= best - 1e-12


def test_speed_blocks_refuse_fewer_partitions_than_slots() -> None:
    with pytest.raises(ConfigError, match="need k >= slots"):
        speed_blocks(3, np.ones(4))


def test_chronic_speeds_are_medians_and_a_silent_slot_is_slowest() -> None:
    times = np.array([[1.0, 2.0, math.inf], [3.0, 2.0, math.inf], [2.0, 50.0, math.inf]])
    out = chronic_speeds(times)
    assert out[0] == 2.0 and out[1] == 2.0
    assert out[2] > 10 * out.max(initial=0, where=np.isfinite(out) & (np.arange(3) < 2))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planner_finds_the_two_class_gain_and_keeps_tolerance(seed: int) -> None:
    n = 10
    current = parse_code("nested:levels=0,1,2,3,split=4", n)
    times = _two_class(n, 30, seed, (0, 5, 6, 7, 8))
    choice = plan(current, times)
    assert choice.switch and choice.gain > 0.4
    assert choice.code.family == "weighted" and choice.code.s_max == 3 and choice.code.k == current.k
    assert choice.predicted_s < 0.5 * predicted_latency(parse_code("uncoded:split=4", n), times)
    # the slow slots get the small blocks
    assert all(choice.code.prefix[0, i] < choice.code.prefix[0, j] for i in (0, 5, 6, 7, 8) for j in (1, 2, 3, 4, 9))
    assert not check_code(choice.code, max_exhaustive=2000)["failures"]


@pytest.mark.parametrize("seed", range(6))
def test_planner_does_not_switch_on_noise(seed: int) -> None:
    n = 10
    rng = np.random.default_rng(seed)
    times = (1 + rng.exponential(1.0, (30, n))) * 0.2  # homogeneous, heavy transient noise
    for spec in ("nested:levels=0,1,2,3,split=4", "uncoded:split=4"):
        choice = plan(parse_code(spec, n), times)
        assert not choice.switch, (spec, choice.gain)


def test_planner_sizes_a_dead_slot_to_one_partition_and_decodes_without_it() -> None:
    n = 6
    times = _two_class(n, 12, 0, ())
    times[:, 2] = math.inf
    current = parse_code("nested:levels=0,1,2,split=4", n)
    choice = plan(current, times)
    assert choice.code.prefix[0, 2] == 1
    assert math.isfinite(choice.predicted_s)


def test_every_ring_rule_builds_an_exact_code() -> None:
    speeds = np.array([1.0, 3.0, 2.0, 5.0, 1.5])
    for rule in RING_RULES:
        code = candidate(rule, 15, 2, speeds)
        assert not check_code(code)["failures"]
    with pytest.raises(ConfigError, match="iterations >= 2"):
        plan(parse_code("uncoded:split=2", 5), np.ones((1, 5)))


def test_planner_is_a_pure_function_of_its_inputs() -> None:
    times = _two_class(8, 20, 3, (1, 2))
    current = parse_code("nested:levels=0,1,split=3", 8)
    a, b = plan(current, times), plan(current, times.copy())
    assert a.code.spec == b.code.spec and a.gain == b.gain and a.as_dict() == b.as_dict()
    for slots in itertools.combinations(range(8), 1):
        alive = sum(1 << a.code.message_id(level, i) for level in range(a.code.n_levels) for i in range(8)
                    if i not in slots)
        assert Decoder(a.code).solve(alive) is not None


def test_a_plan_keeps_the_jobs_signaling() -> None:
    current = parse_code("nested:levels=0,1,signaling=notify,split=3", 6)
    choice = plan(current, _two_class(6, 20, 0, (0, 1)))
    assert choice.switch and choice.code.signaling == "notify" and "signaling=notify" in choice.code.spec
    assert parse_code(choice.code.spec, 6).signaling == "notify"


@pytest.mark.parametrize(("blocks", "smax"), [((3, 0, 2, 0, 1), 1), ((0, 2, 2, 2), 2), ((1, 1, 0, 4, 0, 2), 2)])
def test_a_removed_slot_holds_nothing_and_the_others_keep_the_tolerance(blocks: tuple[int, ...], smax: int) -> None:
    code = weighted_code(blocks, tuple(range(len(blocks))), smax)
    removed = [i for i, c in enumerate(blocks) if c == 0]
    assert list(removed_slots(code)) == removed
    assert all(code.order[i] == () and not code.B[:, i].any() for i in removed)
    report = check_code(code)
    assert report["ok"], report["failures"][:3]
    active = [i for i in range(len(blocks)) if i not in removed]
    for lost in itertools.combinations(active, smax):  # any smax of the slots that remain
        alive = sum(1 << code.message_id(level, i) for level in range(code.n_levels) for i in active if i not in lost)
        assert Decoder(code).solve(alive) is not None
    # the analysis gives the removed slots no arrival and no load
    durations = np.full((1, code.n, max(len(o) for o in code.order)), 0.01)
    result = decode_times(code, durations)
    assert result.latency[0] == pytest.approx(0.01 * max(blocks))


def test_a_membership_plan_shares_the_data_among_the_slots_that_remain() -> None:
    current = split_partitions(parse_code("nested:levels=0,1,2", 6), 4)    # k = 24
    # equal speeds: the 24 partitions over the 4 remaining slots, 6 each; the tolerance kept
    code = membership_plan(current, np.ones(6), frozenset({1, 4}), smax=2)
    assert removed_slots(code) == (1, 4) and code.s_max == 2 and code.k == 24
    assert [len(o) and int(code.prefix[0, i]) for i, o in enumerate(code.order)] == [6, 0, 6, 6, 0, 6]
    assert check_code(code)["ok"]
    # with measured speeds the shares follow them (slot 0 twice as slow: half the share of the others)
    code = membership_plan(current, np.array([2.0, 1, 1, 1, 1, 1]), frozenset({1}), smax=2)
    assert int(code.prefix[0, 0]) * 2 == pytest.approx(int(code.prefix[0, 2]), abs=1)
    # fewer slots remain than the tolerance needs: capped below their number
    code = membership_plan(current, np.ones(6), frozenset({0, 1, 2, 3}), smax=2)
    assert code.s_max == 1 and removed_slots(code) == (0, 1, 2, 3) and check_code(code)["ok"]
    # the job's signaling is kept
    notify = parse_code("nested:levels=0,1,2,split=4,signaling=notify", 6)
    assert membership_plan(notify, np.ones(6), frozenset({5}), smax=2).signaling == "notify"


# -- grow=E: room for an elastic job to grow -----------------------------------------------------

@pytest.mark.parametrize("spec", ["uncoded", "crc:s=1", "nested:levels=0,1,2,split=4", "frc:s=1",
                                  "nested:levels=0,1,2,decoder=per-level", "nested-frc:groups=1,2",
                                  "multimessage:smax=2", "nested:levels=0,2,signaling=notify"])
def test_grown_slots_hold_nothing_and_change_no_decode(spec: str) -> None:
    n, extra = 6, 2
    base = parse_code(spec, n)
    grown = parse_code(spec + ("," if ":" in spec else ":") + f"grow={extra}", n + extra)
    assert parse_code(grown.spec, n + extra).spec == grown.spec and grown.spec.endswith(f"grow={extra}")
    assert grown.k == base.k and grown.s_max == base.s_max and grown.holders == n
    assert removed_slots(grown) == (6, 7) and not grown.B[:, n:].any()
    assert grown.decoder == base.decoder and grown.signaling == base.signaling
    report = check_code(grown)
    assert report["ok"] and report["worst_cond"] == pytest.approx(check_code(base)["worst_cond"])
    # every straggler set of the code's own slots decodes (or not) exactly as without the empty slots,
    # whatever the decoder: the per-level rule counts the slots that hold partitions
    d_base, d_grown = Decoder(base), Decoder(grown)
    for lost in itertools.chain.from_iterable(itertools.combinations(range(n), r) for r in range(4)):
        for levels in range(1, base.n_levels + 1):
            mask_b = sum(1 << base.message_id(lv, i) for lv in range(levels) for i in range(n) if i not in lost)
            mask_g = sum(1 << grown.message_id(lv, i) for lv in range(levels) for i in range(n + extra)
                         if i not in lost)
            assert (d_base.solve(mask_b) is None) == (d_grown.solve(mask_g) is None), (lost, levels)
    # the analysis: the same decode instants, levels and loads, whatever the empty slots would take
    rng = np.random.default_rng(1)
    width = max(len(o) for o in base.order)
    durations = rng.exponential(size=(400, n, width))
    a = decode_times(base, durations)
    b = decode_times(grown, np.concatenate([durations, rng.exponential(size=(400, extra, width))], axis=1))
    np.testing.assert_allclose(b.latency, a.latency)
    np.testing.assert_array_equal(b.level, a.level)
    np.testing.assert_allclose(b.load, a.load)
    # the Monte Carlo counts no empty slot as a dead worker (P(excess) was 1 with no dead worker at all)
    assert simulate(grown, parse_delay("shifted-exp:a=1,mu=1"), 200, 0).p_excess == 0.0


def test_grow_is_refused_beyond_its_range_and_for_ignore() -> None:
    with pytest.raises(ConfigError, match=r"grow=4; need 0 <= grow < n=4"):
        parse_code("uncoded:grow=4", 4)
    with pytest.raises(ConfigError, match="grow is meaningless for ignore"):
        parse_code("ignore:s=1,grow=1", 5)
    with pytest.raises(ConfigError, match=r"levels=0,1,3; need strictly increasing .* < n=3"):
        parse_code("nested:levels=0,1,3,grow=3", 6)   # the code itself is built for the 3 slots it has
    assert parse_code("crc:s=1,grow=0", 5).spec == "crc:s=1"


def test_a_membership_plan_takes_a_grown_slot_in() -> None:
    current = parse_code("nested:levels=0,1,split=4,grow=2", 6)    # 4 slots with work, k = 16
    code = membership_plan(current, np.ones(6), frozenset({5}), smax=1)  # a worker joined slot 4
    assert removed_slots(code) == (5,) and code.s_max == 1 and code.k == 16
    assert [int(code.prefix[0, i]) for i in range(6)] == [4, 3, 3, 3, 3, 0]
    assert check_code(code)["ok"]
