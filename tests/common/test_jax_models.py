"""JAX models (extra flexgc[jax]): flat parameters by ravel_pytree, jitted value_and_grad per shape."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from flexgc.common.errors import ConfigError
from flexgc.common.models import DataSpec, accuracy, build_model, partial_gradient, row_chunks
from tests.jax_support import require_jax

require_jax()


def _spec(model: str, features: int = 16, classes: int = 3) -> DataSpec:
    return DataSpec(model=model, source="master", samples=40, features=features, classes=classes, partitions=4)


def _data(features: int = 16, rows: int = 40, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    return rng.standard_normal((rows, features)), rng.integers(0, classes, rows).astype(np.float64)


@pytest.mark.parametrize(("model", "d"), [
    ("jax-mlp:hidden=8,dtype=float64", 16 * 8 + 8 + 8 * 3 + 3),
    ("jax-mlp:hidden=4,depth=2,dtype=float64", 16 * 4 + 4 + 4 * 4 + 4 + 4 * 3 + 3),
    # conv 1->2 (3x3) + conv 2->4 + linear 4*2*2 -> 5 + linear 5 -> 3 on 4x4 images
    ("jax-cnn:channels=2,hidden=5,dtype=float64", (9 * 2 + 2) + (2 * 9 * 4 + 4) + (16 * 5 + 5) + (5 * 3 + 3)),
])
def test_the_gradient_is_the_derivative_of_the_summed_loss(model: str, d: int) -> None:
    m = build_model(_spec(model))
    X, y = _data()
    w = m.init_params(3)
    rng = np.random.default_rng(0)

    loss, grad = m.loss_and_grad(w, X, y)

    assert m.d == d and w.shape == (d,) and grad.shape == (d,) and grad.dtype == np.float64
    for _ in range(3):  # directional derivatives along random directions, central differences
        u = rng.standard_normal(d)
        h = 1e-5
        numeric = (m.loss_and_grad(w + h * u, X, y)[0] - m.loss_and_grad(w - h * u, X, y)[0]) / (2 * h)
        assert numeric == pytest.approx(float(grad @ u), rel=1e-7, abs=1e-8)
    assert np.isfinite(loss) and loss > 0


def test_initial_parameters_are_a_pure_function_of_the_seed() -> None:
    m = build_model(_spec("jax-cnn:channels=2,hidden=5"))

    assert np.array_equal(m.init_params(1), m.init_params(1))
    assert not np.array_equal(m.init_params(1), m.init_params(2))
    assert m.init_params(1).dtype == np.float64


def test_partition_sums_add_up_to_the_whole_batch_in_float64() -> None:
    m = build_model(_spec("jax-cnn:channels=2,hidden=5,dtype=float64"))
    X, y = _data()
    w = m.init_params(0)
    whole_loss, whole_grad = m.loss_and_grad(w, X, y)

    parts = [m.loss_and_grad(w, X[a:a + 10], y[a:a + 10]) for a in range(0, 40, 10)]

    assert sum(loss for loss, _ in parts) == pytest.approx(whole_loss, rel=1e-13)
    np.testing.assert_allclose(sum(g for _, g in parts), whole_grad, rtol=1e-11, atol=1e-13)


def test_float32_models_compute_in_float32() -> None:
    m32 = build_model(_spec("jax-mlp:hidden=8"))
    m64 = build_model(_spec("jax-mlp:hidden=8,dtype=float64"))
    X, y = _data()
    w = m64.init_params(0)

    _, g32 = m32.loss_and_grad(w, X, y)
    _, g64 = m64.loss_and_grad(w, X, y)

    assert g32.dtype == np.float32 and g64.dtype == np.float64
    init32 = m32.init_params(0)
    assert np.array_equal(init32.astype(np.float32).astype(np.float64), init32)   # float32 values, held as float64
    rel = np.linalg.norm(g32 - g64) / np.linalg.norm(g64)
    assert 1e-10 < rel < 1e-5


def test_a_jitted_partition_is_one_chunk_compiled_once_per_shape() -> None:
    m = build_model(_spec("jax-mlp:hidden=7,dtype=float64"))   # a model no other test built (models are cached)
    X, y = _data()
    w = m.init_params(0)
    out = np.empty(m.d + 1)
    jitted = m._value_and_grad  # type: ignore[attr-defined]
    before = jitted._cache_size()
    calls: list[int] = []

    def stop() -> bool:
        calls.append(1)
        return False

    assert not row_chunks(m)
    assert partial_gradient(m, w, X, y, out, rows_per_chunk=3, should_stop=stop)
    partial_gradient(m, w + 1.0, X, y, out, rows_per_chunk=3)
    assert jitted._cache_size() == before + 1        # a second call with the same shape does not compile
    partial_gradient(m, w, X[:7], y[:7], out)
    assert jitted._cache_size() == before + 2        # a new shape (e.g. a partition one row shorter) does
    assert calls == [1]                              # one chunk: the cancel check runs once, before it


def test_predictions_and_accuracy() -> None:
    m = build_model(_spec("jax-mlp:hidden=8"))
    X, y = _data()

    scores = m.predict(m.init_params(0), X)  # type: ignore[attr-defined]

    assert scores.shape == (40, 3)
    assert 0.0 <= accuracy(m, m.init_params(0), X, y) <= 1.0


@pytest.mark.parametrize("model", ["jax-mlp:hidden=8,dtype=float64", "jax-cnn:channels=2,hidden=5,dtype=float64"])
def test_unflatten_gives_the_equinox_module_of_the_parameters(model: str) -> None:
    import equinox as eqx
    import jax

    m = build_model(_spec(model))
    X, _ = _data()
    params = np.random.default_rng(2).standard_normal(m.d)

    module: Any = m.unflatten(params)  # type: ignore[attr-defined]

    scores = np.asarray(jax.vmap(module)(X))
    assert isinstance(module, eqx.Module)
    np.testing.assert_allclose(scores, m.predict(params, X), rtol=1e-12)  # type: ignore[attr-defined]


def test_shapes_the_networks_cannot_take_are_refused() -> None:
    with pytest.raises(ConfigError, match="needs square single-channel images: features=15"):
        build_model(_spec("jax-cnn", features=15))
    with pytest.raises(ConfigError, match="needs integer labels with >= 2 classes, got 1"):
        build_model(_spec("jax-mlp", classes=1))
