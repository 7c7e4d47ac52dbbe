"""Delay models: the --delay grammar, the live `realize` and the Monte Carlo `sample_durations`."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexgc.common.codes import parse_code
from flexgc.common.delays import DelayModel, dead_slots, parse_delay, realize, sample_durations
from flexgc.common.errors import ConfigError

# -- grammar ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("none", DelayModel()),
    ("shifted-exp", DelayModel("shifted-exp", a=1.0, mu=1.0, p=0.0)),
    ("shifted-exp:a=1,mu=1,p=0.1", DelayModel("shifted-exp", a=1.0, mu=1.0, p=0.1)),
    ("per-partition:a=0.5,mu=2", DelayModel("per-partition", a=0.5, mu=2.0)),
    ("pareto:a=1,alpha=3,xm=0.5,p=0.2", DelayModel("pareto", a=1.0, alpha=3.0, xm=0.5, p=0.2)),
    ("shifted-exp:unit_s=0.5", DelayModel("shifted-exp", a=1.0, mu=1.0, unit_s=0.5)),
])
def test_parse_base_models(text: str, expected: DelayModel) -> None:
    model = parse_delay(text)

    for field in ("kind", "a", "mu", "p", "alpha", "xm", "unit_s", "slow", "dead"):
        assert getattr(model, field) == getattr(expected, field), field


def test_parse_modifiers_and_canonical_round_trip() -> None:
    text = "shifted-exp:a=1,mu=2,p=0.1/slow:workers=0+3,factor=5/dead:workers=7/dead:workers=2,9"

    model = parse_delay(text)

    assert [(g.slots, g.factor) for g in model.slow] == [((0, 3), 5.0)]
    assert model.dead == (2, 7, 9)
    assert model.spec == "shifted-exp:a=1,mu=2,p=0.1/slow:workers=0+3,factor=5/dead:workers=2+7+9"
    assert parse_delay(model.spec) == model


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(["shifted-exp", "per-partition", "pareto"]),
       a=st.floats(0, 10), mu=st.floats(0.01, 100), p=st.floats(0, 0.99), unit_s=st.floats(0.001, 10),
       slow=st.lists(st.integers(0, 30), max_size=3), factor=st.floats(1, 20),
       dead=st.lists(st.integers(0, 30), max_size=3))
def test_canonical_spec_round_trips(kind: str, a: float, mu: float, p: float, unit_s: float,
                                    slow: list[int], factor: float, dead: list[int]) -> None:
    rate = f"alpha={mu!r},xm={a + 0.5!r}" if kind == "pareto" else f"mu={mu!r}"
    text = f"{kind}:a={a!r},{rate},p={p!r},unit_s={unit_s!r}"
    if slow:
        text += f"/slow:workers={'+'.join(map(str, slow))},factor={factor!r}"
    if dead:
        text += f"/dead:workers={'+'.join(map(str, dead))}"

    model = parse_delay(text)
    again = parse_delay(model.spec)

    assert again.spec == model.spec
    assert again.dead == tuple(sorted(set(dead)))
    for field in ("a", "mu", "p", "alpha", "xm", "unit_s"):
        assert getattr(again, field) == pytest.approx(getattr(model, field), rel=1e-5)


@pytest.mark.parametrize(("text", "needles"), [
    ("", ["delay", "expected one of"]),
    ("gamma:k=2", ["delay", "'gamma'", "shifted-exp"]),
    ("slow:workers=1,factor=2", ["must follow a base model", "shifted-exp"]),
    ("shifted-exp:mu=0", ["mu=0", "> 0"]),
    ("shifted-exp:mu=-1", ["mu=-1", "> 0"]),
    ("shifted-exp:a=-0.5", ["a=-0.5", ">= 0"]),
    ("shifted-exp:p=1", ["p=1", "[0, 1)"]),
    ("shifted-exp:p=-0.1", ["p=-0.1", ">= 0"]),
    ("shifted-exp:p=abc", ["p='abc'", "not a number"]),
    ("shifted-exp:mu=nan", ["mu='nan'", "finite"]),
    ("shifted-exp:unit_s=0", ["unit_s=0", "> 0"]),
    ("shifted-exp:alpha=2", ["unknown option alpha", "a, mu, p, unit_s"]),
    ("pareto:alpha=0", ["alpha=0", "> 0"]),
    ("pareto:xm=-1", ["xm=-1", "> 0"]),
    ("none:a=1", ["unknown option a", "(none)"]),
    ("shifted-exp/slow:workers=1", ["slow needs factor", ">= 1"]),
    ("shifted-exp/slow:factor=2", ["slow needs workers"]),
    ("shifted-exp/slow:workers=1,factor=0.5", ["factor=0.5", ">= 1"]),
    ("shifted-exp/dead:workers=-1", ["workers='-1'", ">= 0"]),
    ("shifted-exp/dead:workers=x", ["workers='x'", "integers"]),
    ("shifted-exp/dead:workers=1,speed=3", ["unknown option speed", "workers"]),
    ("shifted-exp/pareto", ["'pareto' after '/'", "slow, dead"]),
    ("shifted-exp/fast:workers=1", ["'fast' after '/'", "slow, dead"]),
])
def test_bad_specs_name_field_value_and_allowed(text: str, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_delay(text, field_name="delay")

    message = str(info.value)
    assert message.startswith("delay")
    for needle in needles:
        assert needle in message


def test_modifier_slot_beyond_n_is_refused_when_used() -> None:
    model = parse_delay("shifted-exp/dead:workers=12")
    code = parse_code("crc:s=1", 10)

    with pytest.raises(ConfigError, match=r"dead:workers=12 names slot 12; allowed: 0..9"):
        sample_durations(model, code, 4, np.random.default_rng(0))


# -- realize ------------------------------------------------------------------------------------


def test_realize_is_deterministic_and_per_slot() -> None:
    model = parse_delay("shifted-exp:a=1,mu=1")

    first = realize(model, 7, 3, 2, (2, 3, 4), 10)
    again = realize(model, 7, 3, 2, (2, 3, 4), 10)
    other_slot = realize(model, 7, 3, 5, (5, 6, 7), 10)
    other_iteration = realize(model, 7, 4, 2, (2, 3, 4), 10)

    assert np.array_equal(first.durations_s, again.durations_s) and first.x == again.x
    assert first.x != other_slot.x and first.x != other_iteration.x
    # model A: every partition of the worker takes (a + X_i) / k
    assert first.durations_s.dtype == np.float64 and first.durations_s.shape == (3,)
    assert np.allclose(first.durations_s, (1.0 + first.x) / 10)


def test_realize_same_draw_for_every_code() -> None:
    model = parse_delay("shifted-exp:a=1,mu=1")

    short = realize(model, 1, 9, 4, (4,), 10)
    long = realize(model, 1, 9, 4, (4, 5, 6, 7), 10)

    assert short.x == long.x
    assert short.durations_s[0] == long.durations_s[0]


def test_realize_model_b_is_keyed_by_partition() -> None:
    model = parse_delay("per-partition:a=1,mu=1")

    one = realize(model, 1, 2, 3, (3, 4, 5), 10)
    other_order = realize(model, 1, 2, 3, (5, 4), 10)

    assert one.durations_s[2] == other_order.durations_s[0]  # partition 5
    assert one.durations_s[1] == other_order.durations_s[1]  # partition 4
    assert len(set(one.durations_s.tolist())) == 3
    assert np.all(one.durations_s > 0.1)  # a / k


def test_realize_modifiers_and_units() -> None:
    base = realize(parse_delay("shifted-exp:a=1,mu=1"), 0, 0, 1, (1, 2), 10)
    slowed = realize(parse_delay("shifted-exp:a=1,mu=1,unit_s=0.5/slow:workers=1,factor=4"), 0, 0, 1,
                     (1, 2), 10)
    dead = realize(parse_delay("shifted-exp:a=1,mu=1/dead:workers=1"), 0, 0, 1, (1, 2), 10)
    none = realize(parse_delay("none"), 0, 0, 1, (1, 2), 10)

    assert np.allclose(slowed.durations_s, base.durations_s * 4 * 0.5)
    assert dead.unresponsive and np.all(np.isinf(dead.durations_s))
    assert not base.unresponsive
    assert np.array_equal(none.durations_s, np.zeros(2)) and not none.unresponsive


def test_realize_unresponsive_probability() -> None:
    model = parse_delay("shifted-exp:p=0.2")

    flags = [realize(model, 3, it, slot, (slot,), 10).unresponsive for it in range(300) for slot in range(10)]

    assert abs(np.mean(flags) - 0.2) < 0.025
    gone = realize(model, 3, 0, next(s for s in range(10) if flags[s]), (0, 1), 10)
    assert np.all(np.isinf(gone.durations_s))


# -- sample_durations ---------------------------------------------------------------------------


def test_sample_durations_shape_and_model_a_distribution() -> None:
    code = parse_code("nested:levels=0,1,2", 10)
    model = parse_delay("shifted-exp:a=1,mu=2")

    d = sample_durations(model, code, 40_000, np.random.default_rng(1))

    assert d.shape == (40_000, 10, 3)
    assert np.all(d[:, :, 0:1] == d)  # model A: one draw per worker
    assert np.mean(d) == pytest.approx((1 + 1 / 2) / 10, rel=0.01)
    assert d.min() >= 0.1


def test_sample_durations_matches_realize_distribution() -> None:
    code = parse_code("crc:s=1", 10)
    for text in ("shifted-exp:a=1,mu=1", "per-partition:a=1,mu=1", "pareto:a=1,alpha=3,xm=1"):
        model = parse_delay(text)

        mc = sample_durations(model, code, 20_000, np.random.default_rng(0))[:, 3, :].ravel()
        live = np.concatenate([realize(model, 11, it, 3, code.order[3], 10).durations_s for it in range(4000)])

        assert np.mean(live) == pytest.approx(np.mean(mc), rel=0.04), text
        assert np.quantile(live, 0.9) == pytest.approx(np.quantile(mc, 0.9), rel=0.06), text


def test_pareto_mean() -> None:
    code = parse_code("uncoded", 4)
    model = parse_delay("pareto:a=0,alpha=3,xm=2")

    d = sample_durations(model, code, 200_000, np.random.default_rng(2))

    assert d.min() >= 2 / 4
    assert np.mean(d) == pytest.approx(3 * 2 / (3 - 1) / 4, rel=0.02)  # alpha xm / (alpha - 1) / k


def test_sample_durations_modifiers_and_unresponsive() -> None:
    code = parse_code("crc:s=2", 8)
    model = parse_delay("shifted-exp:p=0.25/slow:workers=1,factor=10/dead:workers=5")

    d = sample_durations(model, code, 20_000, np.random.default_rng(3))

    assert np.all(np.isinf(d[:, 5]))
    alive = np.isfinite(d[:, :, 0])
    assert abs(1 - alive[:, [0, 2, 3, 4, 6, 7]].mean() - 0.25) < 0.01
    slow = d[:, 1, 0][alive[:, 1]]
    normal = d[:, 0, 0][alive[:, 0]]
    assert np.mean(slow) == pytest.approx(10 * np.mean(normal), rel=0.05)


def test_model_b_draws_are_shared_across_codes() -> None:
    model = parse_delay("per-partition:a=1,mu=1")
    nested = parse_code("nested:levels=0,2", 6)
    crc = parse_code("crc:s=1", 6)

    d_nested = sample_durations(model, nested, 50, np.random.default_rng(9))
    d_crc = sample_durations(model, crc, 50, np.random.default_rng(9))

    # both orders start i, i+1: the same (slot, partition) gets the same draw
    assert np.array_equal(d_nested[:, :, :2], d_crc)


def test_unequal_orders_are_padded_with_inf() -> None:
    code = parse_code("frc:s=2", 10)  # groups of 4, 3, 3
    lengths = [len(o) for o in code.order]

    d = sample_durations(parse_delay("shifted-exp"), code, 5, np.random.default_rng(0))

    assert d.shape[2] == max(lengths) == 4
    for i, m in enumerate(lengths):
        assert np.all(np.isfinite(d[:, i, :m])) and np.all(np.isinf(d[:, i, m:]))


def test_with_dead_adds_slots() -> None:
    model = parse_delay("shifted-exp/dead:workers=4")

    more = model.with_dead([0, 1])

    assert more.dead == (0, 1, 4)
    assert parse_delay(more.spec) == more
    assert math.isinf(realize(more, 0, 0, 1, (1,), 10).durations_s[0])


@pytest.mark.parametrize(("r", "pattern", "expected"), [(0, "spread", ()), (3, "contiguous", (0, 1, 2)),
                                                        (3, "spread", (0, 3, 6)), (5, "spread", (0, 2, 4, 6, 8))])
def test_dead_slots_by_pattern(r: int, pattern: str, expected: tuple[int, ...]) -> None:
    assert dead_slots(10, r, pattern) == expected


def test_random_dead_slots_depend_on_the_seed_only() -> None:
    first = dead_slots(10, 3, "random", seed=1)

    assert first == dead_slots(10, 3, "random", seed=1) and len(set(first)) == 3
    assert set(first) <= set(dead_slots(10, 4, "random", seed=1))  # the first r of one permutation
    with pytest.raises(ConfigError, match="dead pattern='ring'; allowed: contiguous, spread, random"):
        dead_slots(10, 3, "ring")
    with pytest.raises(ConfigError, match=r"dead workers r=11; allowed 0\.\.10"):
        dead_slots(10, 11)
