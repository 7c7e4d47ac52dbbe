"""Delay models: the --delay grammar, the live `realize` and the Monte Carlo `sample_durations`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexgc.common.analysis import decode_times
from flexgc.common.codes import parse_code
from flexgc.common.delays import (
    PRESETS,
    DelayModel,
    dead_slots,
    parse_delay,
    realize,
    realized_durations,
    sample_durations,
)
from flexgc.common.errors import ConfigError
from flexgc.common.traces import load_factors

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
        assert getattr(again, field) == getattr(model, field)  # the canonical text loses no digit


def test_a_value_that_short_form_would_round_is_written_whole() -> None:
    # 1.0000000000000002 read as 1 dropped unit_s from the spec the second time round (a different model)
    model = parse_delay("shifted-exp:a=1,mu=2,unit_s=1.0000000000000002/slow:workers=1,factor=2.5")
    assert model.spec == "shifted-exp:a=1,mu=2,p=0,unit_s=1.0000000000000002/slow:workers=1,factor=2.5"
    assert parse_delay(model.spec).spec == model.spec


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
    # trace
    ("trace", ["trace needs file=NAME", "bytedance-se, bytedance-ar"]),
    ("trace:loop=1", ["trace needs file=NAME"]),
    ("trace:file=missing.csv", ["trace file 'missing.csv'", "shipped traces: bytedance-se"]),
    ("trace:file=bytedance-se,loop=2", ["loop=2", "allowed: 0", "1 (wrap around)"]),
    ("trace:file=bytedance-se,seed=-1", ["seed=-1", ">= 0"]),
    ("trace:file=bytedance-se,scale=0", ["scale=0", "> 0"]),
    ("trace:file=bytedance-se,scale=1,unit_s=2", ["scale and unit_s are the same key"]),
    ("trace:file=bytedance-se,mu=1", ["unknown option mu", "file, loop, p, scale, seed, unit_s"]),
    ("trace:file=bytedance-se/fast:workers=1", ["'fast' after '/'", "slow, dead"]),
    # lognormal
    ("lognormal:preset=cloud", ["preset='cloud'", "allowed: gpu-dp, serverless, two-class"]),
    ("lognormal:ph=0.2,rho=0.1", ["rho=0.1 must be >= ph=0.2"]),
    ("lognormal:preset=gpu-dp,ph=0.6", ["rho=0.5 must be >= ph=0.6"]),
    ("lognormal:rho=1", ["rho=1.0", "[0, 1)"]),
    ("lognormal:ph=1", ["ph=1.0", "[0, 1)"]),
    ("lognormal:fh=0.5", ["fh=0.5", ">= 1"]),
    ("lognormal:fq=0", ["fq=0", ">= 1"]),
    ("lognormal:q=1.5", ["q=1.5", "<= 1"]),
    ("lognormal:sigma_u=-0.1", ["sigma_u=-0.1", ">= 0"]),
    ("lognormal:b=x", ["b='x'", "not a number"]),
    ("lognormal:mu=1", ["unknown option mu", "a, b, fh, fq, p, ph, preset, q, rho, sigma_e, sigma_u, unit_s"]),
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


# -- trace replay ---------------------------------------------------------------------------------

SE = load_factors("bytedance-se")  # 43 steps x 32 ranks


def _trace_file(tmp_path: Path, rows: list[list[float]]) -> str:
    path = tmp_path / "sub dir" / "t.csv"
    path.parent.mkdir()
    path.write_text("# test trace\n" + ",".join(f"w{j}" for j in range(len(rows[0]))) + "\n"
                    + "".join(",".join(map(str, r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_parse_trace_canonical_and_scale_alias() -> None:
    model = parse_delay("trace:file=bytedance-se,scale=0.3/slow:workers=1,factor=2")

    assert (model.kind, model.trace, model.loop, model.trace_seed, model.unit_s) == ("trace", "bytedance-se", True,
                                                                                     0, 0.3)
    assert model.spec == "trace:file=bytedance-se,loop=1,seed=0,p=0,unit_s=0.3/slow:workers=1,factor=2"
    assert parse_delay(model.spec) == model
    assert parse_delay("trace:file=bytedance-se,unit_s=0.3/slow:workers=1,factor=2") == model


def test_trace_path_may_hold_slashes(tmp_path: Path) -> None:
    path = _trace_file(tmp_path, [[1.0, 2.0]])

    model = parse_delay(f"trace:file={path},loop=0,seed=4/dead:workers=1")

    assert model.trace == path and not model.loop and model.trace_seed == 4 and model.dead == (1,)
    assert parse_delay(model.spec) == model


def test_malformed_trace_file_is_refused_at_parse(tmp_path: Path) -> None:
    path = _trace_file(tmp_path, [[1.0, 2.0], [1.0, -3.0]])

    with pytest.raises(ConfigError, match=r"^delay: trace file .*t\.csv': line 4, column 2: factor '-3.0'"):
        parse_delay(f"trace:file={path}")


def test_realize_replays_the_matrix_in_order() -> None:
    model = parse_delay("trace:file=bytedance-se,scale=0.3")

    for t in range(43):
        for w in range(32):
            real = realize(model, 5, t, w, (w, (w + 1) % 32), 32)
            assert real.x == SE[t, w]
            assert np.array_equal(real.durations_s, np.full(2, SE[t, w] / 32 * 0.3)), (t, w)


def test_trace_loop_wraps_and_loop0_refuses_past_the_end() -> None:
    looped = parse_delay("trace:file=bytedance-se")
    strict = parse_delay("trace:file=bytedance-se,loop=0")

    assert realize(looped, 0, 43 + 5, 3, (3,), 32).x == SE[5, 3] == realize(looped, 0, 5, 3, (3,), 32).x
    assert realize(strict, 0, 42, 3, (3,), 32).x == SE[42, 3]
    with pytest.raises(ConfigError, match=r"iteration 43 is past the end of the trace \(43 rows: iterations "
                                          r"0\.\.42\); use loop=1"):
        realize(strict, 0, 43, 3, (3,), 32)
    strict.check_iterations(43)
    with pytest.raises(ConfigError, match="iteration 49 is past the end"):
        strict.check_iterations(50)
    looped.check_iterations(10_000)
    with pytest.raises(ConfigError, match="past the end"):
        sample_durations(strict, parse_code("uncoded", 32), 44, np.random.default_rng(0))


def test_columns_beyond_the_width_are_a_seeded_permutation() -> None:
    def columns(seed: int, n: int) -> list[int]:
        model = parse_delay(f"trace:file=bytedance-se,seed={seed}")
        return [int(np.flatnonzero(SE[0] == realize(model, 0, 0, w, (w,), n).x)[0]) for w in range(n)]

    first = columns(1, 96)

    assert first[:32] == list(range(32))  # n <= width: columns 0..n-1
    assert sorted(first[32:64]) == list(range(32)) == sorted(first[64:])  # every column once per block
    assert first[32:64] != first[64:]
    assert columns(1, 96) == first  # same seed, same columns
    assert columns(1, 40) == first[:40]  # a slot's column does not depend on n
    assert columns(2, 96)[32:] != first[32:]


def test_trace_sample_durations_equal_realize() -> None:
    model = parse_delay("trace:file=bytedance-se,seed=3,scale=0.5")
    code = parse_code("crc:s=1", 40)  # 8 slots beyond the width

    for start, trials in [(0, 43), (30, 60)]:  # the second wraps around
        d = sample_durations(model, code, trials, np.random.default_rng(0), start=start)
        live = realized_durations(code, model, seed=9, iterations=list(range(start, start + trials)))

        assert d.shape == (trials, 40, 2)
        assert np.allclose(d * 0.5, live, rtol=1e-12, atol=0)


def test_trace_with_modifiers_and_unresponsive_workers() -> None:
    model = parse_delay("trace:file=bytedance-se,p=0.2/slow:workers=1,factor=3/dead:workers=2")
    code = parse_code("uncoded", 32)

    d = sample_durations(model, code, 43 * 40, np.random.default_rng(0))[:, :, 0]
    live = [realize(model, 1, t, 0, (0,), 32) for t in range(2000)]

    assert np.all(np.isinf(d[:, 2]))
    alive = np.isfinite(d)
    assert abs(1 - alive[:, 3:].mean() - 0.2) < 0.01
    assert np.allclose(d[:, 1][alive[:, 1]], 3 * np.tile(SE[:, 1], 40)[alive[:, 1]] / 32)
    assert abs(np.mean([r.unresponsive for r in live]) - 0.2) < 0.03
    assert all(r.durations_s[0] == SE[t % 43, 0] / 32 for t, r in enumerate(live) if not r.unresponsive)


def test_trace_order_statistics_of_bytedance_se() -> None:
    # Prepare: the 43 trials are exactly the 43 steps of the matrix (trial t = iteration t)
    model = parse_delay("trace:file=bytedance-se")
    codes = ["uncoded", "crc:s=1,decoder=per-level", "crc:s=3,decoder=per-level",
             "nested:levels=0,1,2,3,decoder=per-level", "ignore:s=3"]

    # Execute
    means = {}
    for spec in codes:
        code = parse_code(spec, 32)
        durations = sample_durations(model, code, 43, np.random.default_rng(0))
        means[spec] = float(decode_times(code, durations).latency.mean())

    # Assert: relative to uncoded, the order statistics of the matrix (docs/traces.md)
    ratio = {spec: mean / means["uncoded"] for spec, mean in means.items()}
    expected = [1.0, 1.86, 3.50, 1.00, 0.88]
    for spec, value in zip(codes, expected):
        assert ratio[spec] == pytest.approx(value, rel=0.03), spec
    sorted_se = np.sort(SE, axis=1)
    assert means["uncoded"] == pytest.approx(sorted_se[:, -1].mean() / 32)
    assert means["crc:s=1,decoder=per-level"] == pytest.approx(2 * sorted_se[:, -2].mean() / 32)


# -- lognormal ------------------------------------------------------------------------------------


def test_lognormal_presets_parse_and_round_trip() -> None:
    for name in PRESETS:
        model = parse_delay(f"lognormal:preset={name}")

        for key, value in {"rho": model.ph, **PRESETS[name]}.items():
            assert getattr(model, key) == value, (name, key)
        assert "preset" not in model.spec  # the canonical spec spells every value out
        assert parse_delay(model.spec) == model


def test_lognormal_defaults_and_overrides() -> None:
    plain = parse_delay("lognormal")
    independent = parse_delay("lognormal:ph=0.1,fh=3")
    overridden = parse_delay("lognormal:preset=gpu-dp,ph=0,unit_s=0.01")

    assert plain.spec == "lognormal:a=0,b=1,sigma_u=0,sigma_e=0.1,ph=0,fh=1,rho=0,q=0,fq=1,p=0"
    assert independent.rho == 0.1  # rho defaults to ph: no persistence
    assert (overridden.ph, overridden.sigma_u, overridden.unit_s) == (0.0, 0.06, 0.01)


@settings(max_examples=40, deadline=None)
@given(a=st.floats(0, 5), b=st.floats(0, 5), sigma_u=st.floats(0, 1), sigma_e=st.floats(0, 1),
       ph=st.floats(0, 0.5), extra=st.floats(0, 0.49), fh=st.floats(1, 20), q=st.floats(0, 1), fq=st.floats(1, 10),
       p=st.floats(0, 0.99))
def test_lognormal_canonical_spec_round_trips(a: float, b: float, sigma_u: float, sigma_e: float, ph: float,
                                              extra: float, fh: float, q: float, fq: float, p: float) -> None:
    text = (f"lognormal:a={a!r},b={b!r},sigma_u={sigma_u!r},sigma_e={sigma_e!r},ph={ph!r},fh={fh!r},"
            f"rho={min(ph + extra, 0.99)!r},q={q!r},fq={fq!r},p={p!r}")

    model = parse_delay(text)
    again = parse_delay(model.spec)

    assert again.spec == model.spec


def test_lognormal_persistent_speed_per_slot() -> None:
    model = parse_delay("lognormal:sigma_u=0.3,sigma_e=0")

    x = np.array([[realize(model, 4, t, w, (w,), 10).x for w in range(3000)] for t in (0, 7)])

    assert np.array_equal(x[0], x[1])  # drawn once per (seed, slot), not per iteration
    assert np.std(np.log(x[0])) == pytest.approx(0.3, rel=0.05)
    assert np.median(x[0]) == pytest.approx(1.0, abs=0.03)
    assert realize(model, 5, 0, 0, (0,), 10).x != x[0, 0]  # another seed, another cluster


def test_lognormal_transient_speed_per_iteration() -> None:
    model = parse_delay("lognormal:sigma_u=0.2,sigma_e=0.1")

    logs = np.log([[realize(model, 4, t, w, (w,), 10).x for t in range(200)] for w in range(30)])

    transient = logs - logs.mean(axis=1, keepdims=True)
    assert np.std(transient) == pytest.approx(0.1, rel=0.06)
    assert np.std(logs.mean(axis=1)) == pytest.approx(0.2, rel=0.3)  # 30 slots: a loose check


def test_lognormal_heavy_chain_stationary_probability_and_persistence() -> None:
    # Prepare: factor 1 or fh exactly
    model = parse_delay("lognormal:sigma_e=0,ph=0.1,fh=3,rho=0.6")

    # Execute: a long run of realize, and the Monte Carlo over as many trials
    heavy = np.array([[realize(model, 2, t, w, (w,), 10).x == 3.0 for t in range(2000)] for w in range(10)])
    code = parse_code("uncoded", 10)
    mc = sample_durations(model, code, 20_000, np.random.default_rng(1))[:, :, 0].T > 0.2

    # Assert: P(heavy) = ph, P(heavy next | heavy now) = rho, in both
    for chain in (heavy, mc):
        assert chain.mean() == pytest.approx(0.1, abs=0.01)
        assert (chain[:, 1:] & chain[:, :-1]).sum() / chain[:, :-1].sum() == pytest.approx(0.6, abs=0.04)


def test_lognormal_heavy_chain_is_a_pure_function_of_its_iteration() -> None:
    model = parse_delay("lognormal:sigma_e=0,ph=0.3,fh=4,rho=0.995")  # look-backs of ~140 iterations
    points = [(t, w) for w in range(3) for t in range(0, 3000, 7)]

    forward = [realize(model, 1, t, w, (w,), 10).x for t, w in points]
    backward = [realize(model, 1, t, w, (w,), 10).x for t, w in reversed(points)]

    assert forward == backward[::-1]
    assert 0 < forward.count(4.0) < len(forward)


def test_lognormal_two_class_fraction() -> None:
    model = parse_delay("lognormal:sigma_e=0,q=0.3,fq=4")

    slow = np.array([realize(model, 6, 0, w, (w,), 10).x == 4.0 for w in range(4000)])
    again = np.array([realize(model, 6, 9, w, (w,), 10).x == 4.0 for w in range(4000)])
    mc = sample_durations(model, parse_code("uncoded", 20), 2000, np.random.default_rng(0))

    assert np.array_equal(slow, again)  # the class is persistent
    assert slow.mean() == pytest.approx(0.3, abs=0.02)
    assert (mc > 0.1).mean() == pytest.approx(0.3, abs=0.01)  # 4 / 20 vs 1 / 20


def test_lognormal_fixed_cost_is_paid_once_with_the_first_partition() -> None:
    model = parse_delay("lognormal:a=2,b=0.5,sigma_e=0,unit_s=0.1")
    code = parse_code("crc:s=2", 10)

    real = realize(model, 0, 0, 3, (3, 4, 5), 10)
    d = sample_durations(model, code, 5, np.random.default_rng(0))

    assert np.allclose(real.durations_s, np.array([2 + 0.05, 0.05, 0.05]) * 0.1)
    assert np.allclose(d, [2.05, 0.05, 0.05])


def test_lognormal_realize_matches_sample_durations() -> None:
    model = parse_delay("lognormal:preset=gpu-dp,p=0")
    code = parse_code("uncoded", 10)

    mc = sample_durations(model, code, 20_000, np.random.default_rng(0)).ravel()
    live = np.array([realize(model, seed, t, w, (w,), 10).durations_s[0]
                     for seed in range(40) for t in range(50) for w in range(10)])

    assert np.mean(live) == pytest.approx(np.mean(mc), rel=0.05)
    for q in (0.5, 0.9, 0.99):
        assert np.quantile(live, q) == pytest.approx(np.quantile(mc, q), rel=0.05), q


def test_a_slow_modifier_from_an_iteration_on_applies_from_then_in_realize_and_sampling() -> None:
    from flexgc.common.codes import parse_code
    from flexgc.common.delays import parse_delay, realize, sample_durations

    model = parse_delay("shifted-exp:a=1,mu=1000/slow:workers=1,factor=4,from=30")
    assert parse_delay(model.spec).spec == model.spec and "from=30" in model.spec
    before = realize(model, 0, 29, 1, (0,), 4).durations_s[0] / realize(model, 0, 29, 0, (0,), 4).durations_s[0]
    after = realize(model, 0, 30, 1, (0,), 4).durations_s[0] / realize(model, 0, 30, 0, (0,), 4).durations_s[0]
    assert before == pytest.approx(1.0, rel=0.01) and after == pytest.approx(4.0, rel=0.01)
    code = parse_code("uncoded", 4)
    d = sample_durations(model, code, 4, np.random.default_rng(0), start=28)  # iterations 28..31
    ratio = d[:, 1, 0] / d[:, 0, 0]
    assert ratio[:2] == pytest.approx([1.0, 1.0], rel=0.01) and ratio[2:] == pytest.approx([4.0, 4.0], rel=0.01)
    with pytest.raises(ConfigError, match="from"):
        parse_delay("shifted-exp/slow:workers=1,factor=2,from=-1")
