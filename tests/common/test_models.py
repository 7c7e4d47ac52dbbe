"""The model interface, the numpy models, model specs, import-path models and the mini-batch schedule."""

from __future__ import annotations

import numpy as np
import pytest

from examples import numpy_model
from flexgc.common import local_models
from flexgc.common.errors import ConfigError
from flexgc.common.models import (
    DataSpec,
    Model,
    accuracy,
    batch_rows,
    build_model,
    check_model_allowed,
    full_gradient,
    is_model_object,
    label_kind,
    object_spec,
    parse_model,
    partial_gradient,
    synthetic_partition,
)


def _spec(model: str, **kw: object) -> DataSpec:
    base: dict[str, object] = dict(model=model, samples=103, features=5, classes=3 if model == "softmax" else 1,
                                   seed=4, partitions=4)
    base.update(kw)
    return DataSpec(**base)  # type: ignore[arg-type]


def _numeric_grad(model: Model, w: np.ndarray, X: np.ndarray, y: np.ndarray, h: float = 1e-6) -> np.ndarray:
    g = np.empty_like(w)
    for i in range(w.size):
        e = np.zeros_like(w)
        e[i] = h
        g[i] = (model.loss_and_grad(w + e, X, y)[0] - model.loss_and_grad(w - e, X, y)[0]) / (2 * h)
    return g


@pytest.mark.parametrize("name", ["logistic", "softmax", "least-squares", "examples.numpy_model:build,delta=0.3"])
def test_gradient_is_the_derivative_of_the_summed_loss(name: str) -> None:
    spec = _spec(name)
    model = build_model(spec)
    X, y = synthetic_partition(spec, 1)
    w = np.random.default_rng(0).standard_normal(model.d) * 0.5

    loss, grad = model.loss_and_grad(w, X, y)

    assert grad.shape == (model.d,) and np.isfinite(loss)
    np.testing.assert_allclose(grad, _numeric_grad(model, w, X, y), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["logistic", "softmax", "least-squares"])
def test_row_chunks_sum_to_the_whole_partition(name: str) -> None:
    spec = _spec(name)
    model = build_model(spec)
    X, y = synthetic_partition(spec, 0)
    w = np.random.default_rng(1).standard_normal(model.d)
    whole, chunked = np.empty(model.d + 1), np.empty(model.d + 1)

    assert partial_gradient(model, w, X, y, whole, rows_per_chunk=10_000)
    assert partial_gradient(model, w, X, y, chunked, rows_per_chunk=4)

    loss, grad = model.loss_and_grad(w, X, y)
    assert np.array_equal(whole, np.append(grad, loss))      # one chunk: exactly the model's own sums
    np.testing.assert_allclose(chunked, whole, rtol=1e-12, atol=1e-12)


def test_a_cancel_between_chunks_stops_the_partition() -> None:
    spec = _spec("logistic")
    model = build_model(spec)
    X, y = synthetic_partition(spec, 0)
    calls: list[int] = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 2

    assert not partial_gradient(model, np.zeros(model.d), X, y, np.empty(model.d + 1), rows_per_chunk=5,
                                should_stop=stop)
    assert len(calls) == 3   # checked before each chunk: two chunks ran, the third was refused


def test_numpy_models_keep_their_parameter_counts_and_start_at_zero() -> None:
    for name, d in (("logistic", 5), ("least-squares", 5), ("softmax", 15)):
        model = build_model(_spec(name))
        assert model.d == _spec(name).d == d
        assert np.array_equal(model.init_params(7), np.zeros(d))


def test_accuracy_of_binary_and_multiclass_scores() -> None:
    spec = _spec("softmax")
    model = build_model(spec)
    X = np.eye(5)[:3]
    W = np.zeros((5, 3))
    W[0, 2] = W[1, 0] = W[2, 1] = 1.0

    assert accuracy(model, W.reshape(-1), X, np.array([2.0, 0.0, 1.0])) == 1.0
    assert accuracy(model, W.reshape(-1), X, np.array([2.0, 1.0, 1.0])) == pytest.approx(2 / 3)
    logistic = build_model(_spec("logistic"))
    assert accuracy(logistic, np.array([1.0, -1, 0, 0, 0]), X[:2], np.array([1.0, 0.0])) == 1.0


# -- specs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "family", "target", "canonical"), [
    ("logistic", "logistic", None, "logistic"),
    ("jax-mlp:hidden=128", "jax-mlp", None, "jax-mlp:hidden=128"),
    ("JAX-CNN:hidden=8,channels=4", "jax-cnn", None, "jax-cnn:channels=4,hidden=8"),
    ("examples.numpy_model:build", "import", "examples.numpy_model:build", "examples.numpy_model:build"),
    ("pkg.mod:make,width=3,b=x", "import", "pkg.mod:make", "pkg.mod:make,b=x,width=3"),
])
def test_model_specs_parse_to_a_canonical_form(text: str, family: str, target: str | None, canonical: str) -> None:
    ms = parse_model(text)

    assert (ms.family, ms.target, ms.text) == (family, target, canonical)
    assert parse_model(ms.text) == ms


@pytest.mark.parametrize(("text", "message"), [
    ("svm", "unknown model; allowed: logistic, softmax, least-squares, jax-mlp, jax-cnn"),
    ("jax-mlp:hidden=0", "hidden=0 must be >= 1"),
    ("jax-cnn:kernel=3", "unknown option kernel"),
    ("logistic:x=1", "unknown option x"),
    ("pkg.mod:1make", "unknown model"),
    ("", "empty"),
])
def test_bad_model_specs_name_the_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_model(text)


def test_import_path_model_errors_say_what_is_wrong() -> None:
    with pytest.raises(ConfigError, match="cannot import 'no_such_module_xyz'"):
        build_model(_spec("no_such_module_xyz:build"))
    with pytest.raises(ConfigError, match="has no factory or model object 'nothing'"):
        build_model(_spec("examples.numpy_model:nothing"))
    with pytest.raises(ConfigError, match="the factory raised TypeError"):
        build_model(_spec("examples.numpy_model:build,width=3"))
    with pytest.raises(ConfigError, match="must return an object with an int d"):
        build_model(_spec("builtins:dict"))


# a model object at module level: what `object_spec` finds and `--model tests.common.test_models:HUBER` names
HUBER = numpy_model.build(features=5, classes=1, delta=0.5)


def test_an_import_path_may_name_a_model_object() -> None:
    model = build_model(_spec("tests.common.test_models:HUBER"))

    assert model is HUBER
    with pytest.raises(ConfigError, match="is a model object, not a factory: it takes no key=value options"):
        build_model(_spec("tests.common.test_models:HUBER,delta=1"))


def test_the_import_path_of_a_model_object_is_derived_from_where_it_is_bound() -> None:
    elsewhere = numpy_model.build(features=5, classes=1)        # bound to no module-level name

    assert object_spec(HUBER) == "tests.common.test_models:HUBER"
    assert object_spec(elsewhere) is None
    assert is_model_object(HUBER) and not is_model_object(numpy_model.build)
    assert not is_model_object(numpy_model.HuberRegression)     # a class is a factory, not a model


def test_in_process_model_objects_are_found_by_name_while_registered() -> None:
    first, second = numpy_model.build(features=5, classes=1), numpy_model.build(features=5, classes=1)

    spec = local_models.register(first)
    try:
        assert spec == "flexgc.common.local_models:HuberRegression"
        assert local_models.register(first) == spec                     # the same object: the same name
        other = local_models.register(second)
        assert other == spec + "_2"                                     # another object: a name of its own
        assert build_model(_spec(spec)) is first and build_model(_spec(other)) is second
        local_models.unregister(other)
    finally:
        local_models.unregister(spec)
    with pytest.raises(ConfigError, match="has no factory or model object 'HuberRegression'"):
        build_model(_spec(spec))


@pytest.mark.parametrize(("model", "classes", "names"), [("logistic", 1, ["w"]), ("least-squares", 1, ["w"]),
                                                         ("softmax", 3, ["W"])])
def test_unflatten_gives_the_numpy_models_weights_in_their_shape(model: str, classes: int, names: list[str]) -> None:
    m = build_model(_spec(model))
    params = np.arange(m.d, dtype=float)
    X = np.random.default_rng(0).standard_normal((4, 5))

    weights = m.unflatten(params)  # type: ignore[attr-defined]

    assert list(weights) == names
    weight = weights[names[0]]
    assert weight.shape == ((5, classes) if model == "softmax" else (5,))
    if model != "logistic":
        np.testing.assert_allclose(X @ weight, m.predict(params, X))  # type: ignore[attr-defined]
    params[0] = -1.0
    assert weight.flat[0] == 0.0                                   # a copy: the run's vector is not aliased


def test_labels_of_import_path_models_come_from_the_factory() -> None:
    assert label_kind("examples.numpy_model:build") == "real"
    assert label_kind("softmax") == "multiclass" and label_kind("jax-cnn") == "multiclass"


def test_a_worker_imports_only_the_modules_it_allows() -> None:
    check_model_allowed("jax-cnn", None)                         # named models need no permission
    check_model_allowed("examples.numpy_model:build", "examples")
    check_model_allowed("examples.numpy_model:build", "other, examples.numpy_model")
    with pytest.raises(ConfigError, match=r"module 'examples\.numpy_model' is not allowed on this worker; start "
                                          r"it with --model-modules examples"):
        check_model_allowed("examples.numpy_model:build", None)
    with pytest.raises(ConfigError, match="not allowed"):
        check_model_allowed("examples_evil.mod:build", "examples")   # a prefix of the name is not a parent


# -- mini-batches ---------------------------------------------------------------------------------


def _rows(spec: DataSpec, j: int, t: int) -> np.ndarray:
    rows = batch_rows(spec, j, t)
    assert rows is not None
    return rows


def test_batches_are_seeded_distinct_rows_that_cycle_through_each_partition() -> None:
    spec = _spec("logistic", batch=7, batch_seed=3)       # partitions of 26 or 25 rows: 3 batches an epoch
    for j in range(spec.partitions):
        start, stop = spec.partition_bounds(j)
        m = stop - start
        epoch = [_rows(spec, j, t) for t in range(m // 7)]
        for rows in epoch:
            assert rows.size == 7 and np.all(np.diff(rows) > 0) and rows.max() < m
        seen = np.concatenate(epoch)
        assert np.unique(seen).size == seen.size           # no row twice within an epoch
        assert np.array_equal(_rows(spec, j, 0), epoch[0])
    other_seed = _spec("logistic", batch=7, batch_seed=4)
    assert not np.array_equal(_rows(spec, 0, 0), _rows(other_seed, 0, 0))
    assert not np.array_equal(_rows(spec, 0, 0), _rows(spec, 0, 3))   # the next epoch reshuffles
    assert spec.batch_samples(5) == 7 * 4
    assert batch_rows(_spec("logistic"), 0, 0) is None and _spec("logistic").batch_samples(0) == 103


def test_the_batch_gradient_is_the_gradient_of_the_union_of_the_partition_batches() -> None:
    spec = _spec("softmax", batch=5, batch_seed=1)
    parts = [synthetic_partition(spec, j) for j in range(spec.partitions)]
    w = np.random.default_rng(2).standard_normal(spec.d)
    model = build_model(spec)

    for t in (0, 9):
        total = full_gradient(spec, w, parts, iteration=t)
        picked = [batch_rows(spec, j, t) for j in range(spec.partitions)]
        X = np.concatenate([X[r] for (X, _), r in zip(parts, picked)])   # type: ignore[index]
        y = np.concatenate([y[r] for (_, y), r in zip(parts, picked)])   # type: ignore[index]
        loss, grad = model.loss_and_grad(w, X, y)
        assert X.shape[0] == spec.batch_samples(t) == 20
        np.testing.assert_allclose(total, np.append(grad, loss), rtol=1e-12)


def test_batch_size_is_checked_against_the_smallest_partition() -> None:
    with pytest.raises(ConfigError, match=r"batch_size=26; must be in 0..25"):
        _spec("logistic", batch=26)


def test_a_numpy_job_never_imports_jax() -> None:
    """The master and workers of a numpy-model job with gd import no JAX (the extra stays optional)."""
    import subprocess
    import sys

    script = ("import sys\n"
              "from flexgc.common.config import master_config\n"
              "from flexgc.common.codes import parse_code\n"
              "from flexgc.common.optim import make_optimizer\n"
              "from flexgc.master.data import JobData\n"
              "from flexgc.worker.compute import PartitionCompute\n"
              "from flexgc.common.models import build_model\n"
              "cfg = master_config(model='softmax', classes=3, batch_size=10)\n"
              "data = JobData.from_config(cfg, parse_code(cfg.code, cfg.workers))\n"
              "opt = make_optimizer(cfg.optimizer, cfg.lr, cfg.momentum)\n"
              "w = build_model(data.spec).init_params(0)\n"
              "opt.step(w, w, opt.init(w))\n"
              "assert not [m for m in sys.modules if m.split('.')[0] in ('jax', 'equinox', 'optax')], 'jax imported'\n")

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
