"""Optimizer specs, heavy-ball in numpy, and the optax optimizers with their flattened state."""

from __future__ import annotations

import numpy as np
import pytest

from flexgc.common.errors import ConfigError
from flexgc.common.optim import HeavyBall, make_optimizer, parse_optimizer
from tests.jax_support import require_jax


def _grads(d: int, steps: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(d) for _ in range(steps)]


def test_gd_is_heavy_ball_with_the_master_options_as_defaults_bitwise() -> None:
    opt = make_optimizer("gd", lr=0.3, momentum=0.6)
    w, v = np.linspace(-1, 1, 7), np.zeros(7)
    ours, state = w.copy(), opt.init(w)

    for g in _grads(7, 5):
        v = 0.6 * v + g
        w = w - 0.3 * v
        ours, state = opt.step(ours, g, state)

    assert isinstance(opt, HeavyBall) and np.array_equal(ours, w) and np.array_equal(state[0], v)
    assert opt.spec == "gd:lr=0.3,momentum=0.6"
    assert make_optimizer("gd:lr=0.1", lr=0.3, momentum=0.6).spec == "gd:lr=0.1,momentum=0.6"


@pytest.mark.parametrize("text", ["gd", "sgd:lr=0.1,momentum=0.9,nesterov=true", "adam:lr=1e-3",
                                  "adamw:weight_decay=0.01,schedule=warmup-cosine,warmup=5,steps=100,end_lr=1e-5",
                                  "adam:schedule=exponential,steps=10,decay_rate=0.5", "sgd:schedule=cosine,steps=9"])
def test_optimizer_specs_round_trip_through_their_canonical_text(text: str) -> None:
    spec = parse_optimizer(text, 0.5, 0.0)

    assert parse_optimizer(spec.spec, 0.5, 0.0) == spec
    assert spec.needs_jax == (spec.family != "gd")


@pytest.mark.parametrize(("text", "message"), [
    ("lbfgs", "unknown optimizer 'lbfgs'; allowed: gd, sgd, adam, adamw"),
    ("adam:momentum=0.9", "unknown option momentum; allowed for 'adam': b1, b2, decay_rate, end_lr, eps, lr, schedule"),
    ("adam:b1=1.5", "b1=1.5 must be <= 1.0"),
    ("adam:schedule=step", "schedule='step'; allowed: constant, cosine, warmup-cosine, exponential"),
    ("adam:schedule=warmup-cosine,steps=10", "schedule=warmup-cosine needs warmup"),
    ("adam:schedule=warmup-cosine,steps=10,warmup=10", "warmup=10 must be < steps=10"),
    ("adam:steps=10", "schedule=constant takes no steps"),
    ("sgd:schedule=exponential,steps=3,decay_rate=0.5,end_lr=0.1", "schedule=exponential takes no end_lr"),
    ("gd:lr=x", "lr='x' is not a number"),
])
def test_bad_optimizer_specs_name_the_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_optimizer(text)


@pytest.mark.parametrize("text", ["adam:lr=0.01", "adamw:lr=0.01,weight_decay=0.1", "sgd:lr=0.1,momentum=0.9",
                                  "adam:lr=0.1,schedule=warmup-cosine,warmup=2,steps=6,end_lr=0.001"])
def test_optax_optimizers_match_optax_and_resume_from_their_arrays(text: str) -> None:
    require_jax()
    import jax.numpy as jnp
    import optax

    from flexgc.common import jax_models  # noqa: F401  (64-bit JAX, as on the master)

    spec = parse_optimizer(text)
    kw = spec.kw
    lr = kw["lr"]
    if kw["schedule"] == "warmup-cosine":
        lr = optax.warmup_cosine_decay_schedule(0.0, kw["lr"], kw["warmup"], kw["steps"], kw["end_lr"])
    tx = {"adam": lambda: optax.adam(lr), "adamw": lambda: optax.adamw(lr, weight_decay=kw["weight_decay"]),
          "sgd": lambda: optax.sgd(lr, momentum=kw["momentum"])}[spec.family]()
    w0 = np.linspace(-1, 1, 9)
    grads = _grads(9, 6, seed=3)

    # Prepare: the reference is optax itself, step by step
    ref, ref_state = jnp.asarray(w0), tx.init(jnp.asarray(w0))
    for g in grads:
        updates, ref_state = tx.update(jnp.asarray(g), ref_state, ref)
        ref = optax.apply_updates(ref, updates)

    # Execute: three steps, the state saved as arrays, a new optimizer of the same spec takes over
    first = make_optimizer(text)
    w, state = w0.copy(), first.init(w0)
    for g in grads[:3]:
        w, state = first.step(w, g, state)
    saved = tuple(a.copy() for a in state)
    second = make_optimizer(spec.spec)
    for g in grads[3:]:
        w, saved = second.step(w, g, saved)

    # Assert
    assert all(isinstance(a, np.ndarray) for a in saved)
    assert w.dtype == np.float64
    np.testing.assert_allclose(w, np.asarray(ref), rtol=1e-13, atol=1e-15)
