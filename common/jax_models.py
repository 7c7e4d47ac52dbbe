"""JAX models behind flexgc's model interface (the optional extra ``flexgc[jax]``; docs/models.md).

`JaxModel` turns any Equinox module into a `flexgc.common.models.Model`: its floating-point leaves are
the parameters, flattened and restored with JAX's own pytree tools (``eqx.partition`` splits the
arrays from the static structure, ``jax.flatten_util.ravel_pytree`` ravels them into the flat (d,)
vector and gives the inverse), and the summed loss and gradient of a partition come from one
``jax.jit(jax.value_and_grad(...))`` of the flat vector, compiled once per input shape (a partition's
rows, or its mini-batch). A jitted gradient cannot be interrupted, so it is one compute chunk
(``row_chunks = False``): a Cancel is noticed before and after it (docs/style.md §7).

Two networks ship, by name: ``jax-mlp[:hidden=128,depth=1,dtype=float32]`` (``eqx.nn.MLP``, ReLU) and
``jax-cnn[:channels=32,hidden=64,dtype=float32]`` (`CNN`: two 3x3 convolutions, a 2x2 max-pool and two
linear layers, on square single-channel images such as scikit-learn's 8x8 digits).

Importing this module configures JAX for flexgc's processes: 64-bit types on (``jax_enable_x64``; a
float32 model still computes in float32, since every array it makes is float32 explicitly, while the
master's optimizer and ``dtype=float64`` models get real float64), and, unless ``XLA_FLAGS`` is already
set, XLA's CPU backend on one thread, like the worker's one BLAS thread (several processes share the
cores).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from typing import Any

if "jax" not in sys.modules:  # XLA reads its flags once, when the backend starts
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from flexgc.common.errors import ConfigError

jax.config.update("jax_enable_x64", True)

Loss = Callable[[jax.Array, jax.Array], jax.Array]   # (scores (m, C), labels (m,)) -> per-row loss (m,)


def cross_entropy(scores: jax.Array, y: jax.Array) -> jax.Array:
    """Softmax cross-entropy per row: scores (m, C) logits, y (m,) integer labels."""
    return -jnp.take_along_axis(jax.nn.log_softmax(scores, axis=-1), y[:, None], axis=-1)[:, 0]


def squared_error(scores: jax.Array, y: jax.Array) -> jax.Array:
    """0.5 (score − y)² per row; scores (m,) or (m, 1)."""
    return 0.5 * (scores.reshape(y.shape) - y) ** 2


class JaxModel:
    """An Equinox module as a flexgc model.

    make: PRNG key -> module (the same structure for every key); forward: (module, X (m, features)) ->
    scores (m, C) (default: the module applied to each row with ``jax.vmap``); loss: per-row loss of
    (scores, y), ``cross_entropy`` (integer labels) by default; dtype: the compute dtype of parameters,
    inputs and gradients.
    """

    row_chunks = False  # one jitted call per partition: cancel is checked around it

    def __init__(self, make: Callable[[jax.Array], eqx.Module], *, forward: Callable[[Any, jax.Array], jax.Array]
                 | None = None, loss: Loss = cross_entropy, dtype: str = "float32") -> None:
        if dtype not in ("float32", "float64"):
            raise ConfigError(f"dtype={dtype!r}; allowed: float32, float64")
        self.dtype = jnp.dtype(dtype)
        self._make = make
        self._integer_labels = loss is cross_entropy
        # the structure from an abstract evaluation (no initializer runs: a worker never needs the values)
        shapes = eqx.filter_eval_shape(make, jax.random.PRNGKey(0))
        params, self._static = eqx.partition(shapes, _is_float_leaf)
        flat, self._unravel = ravel_pytree(jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), params))
        if flat.dtype != self.dtype:
            raise ConfigError(f"the module's parameters are {flat.dtype}, the model's dtype is {self.dtype}: "
                              f"build its layers with dtype={dtype}")
        self.d = int(flat.size)
        apply = forward or (lambda module, X: jax.vmap(module)(X))

        def total_loss(w: jax.Array, X: jax.Array, y: jax.Array) -> jax.Array:
            module = eqx.combine(self._unravel(w), self._static)
            return jnp.sum(loss(apply(module, X), y))

        def scores(w: jax.Array, X: jax.Array) -> jax.Array:
            return apply(eqx.combine(self._unravel(w), self._static), X)

        self._value_and_grad = jax.jit(jax.value_and_grad(total_loss))
        self._scores = jax.jit(scores)

    def init_params(self, seed: int) -> np.ndarray:
        """The module's initial parameters from PRNGKey(seed), raveled, as float64 (d,)."""
        params = eqx.filter(self._make(jax.random.PRNGKey(seed)), eqx.is_inexact_array)  # eager: jit compiles slower
        return np.asarray(ravel_pytree(params)[0], dtype=np.float64)

    def _inputs(self, params: np.ndarray, X: np.ndarray) -> tuple[jax.Array, jax.Array]:
        return jnp.asarray(params, dtype=self.dtype), jnp.asarray(X, dtype=self.dtype)

    def loss_and_grad(self, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Summed loss and gradient (d,) in the model's dtype, by one jitted value_and_grad."""
        w, Xj = self._inputs(params, X)
        yj = jnp.asarray(y, dtype=jnp.int32 if self._integer_labels else self.dtype)
        loss, grad = self._value_and_grad(w, Xj, yj)
        return float(loss), np.asarray(grad)

    def predict(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Scores (m, C)."""
        return np.asarray(self._scores(*self._inputs(params, X)))

    def unflatten(self, params: np.ndarray) -> Any:
        """The Equinox module with these parameters (in the model's dtype): the inverse of the raveling."""
        return eqx.combine(self._unravel(jnp.asarray(params, dtype=self.dtype)), self._static)


def _is_float_leaf(x: Any) -> bool:
    return isinstance(x, jax.ShapeDtypeStruct) and jnp.issubdtype(x.dtype, jnp.inexact)


class CNN(eqx.Module):
    """conv3x3(c) - ReLU - conv3x3(2c) - ReLU - maxpool 2x2 - linear(hidden) - ReLU - linear(classes), on one
    row of X reshaped to a (1, side, side) image."""

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    pool: eqx.nn.MaxPool2d
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear
    side: int = eqx.field(static=True)

    def __init__(self, side: int, classes: int, channels: int, hidden: int, dtype: Any, key: jax.Array) -> None:
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.side = side
        self.conv1 = eqx.nn.Conv2d(1, channels, 3, padding=1, dtype=dtype, key=k1)
        self.conv2 = eqx.nn.Conv2d(channels, 2 * channels, 3, padding=1, dtype=dtype, key=k2)
        self.pool = eqx.nn.MaxPool2d(2, stride=2)
        flat = 2 * channels * (side // 2) ** 2
        self.fc1 = eqx.nn.Linear(flat, hidden, dtype=dtype, key=k3)
        self.fc2 = eqx.nn.Linear(hidden, classes, dtype=dtype, key=k4)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Class scores (classes,) of one flat image x (side²,)."""
        h = x.reshape(1, self.side, self.side)
        h = jax.nn.relu(self.conv1(h))
        h = self.pool(jax.nn.relu(self.conv2(h)))
        return self.fc2(jax.nn.relu(self.fc1(h.reshape(-1))))


def build_named(family: str, params: dict[str, str], features: int, classes: int) -> JaxModel:
    """``jax-mlp`` or ``jax-cnn`` with the spec's keys (already checked by `models.parse_model`)."""
    dtype = params.get("dtype", "float32")
    if classes < 2:
        raise ConfigError(f"model={family!r} classifies: needs integer labels with >= 2 classes, got {classes}")
    if family == "jax-mlp":
        hidden, depth = int(params.get("hidden", 128)), int(params.get("depth", 1))
        return JaxModel(lambda key: eqx.nn.MLP(features, classes, hidden, depth, activation=jax.nn.relu,
                                               dtype=dtype, key=key), dtype=dtype)
    side = math.isqrt(features)
    if side * side != features or side < 2:
        raise ConfigError(f"model={family!r} needs square single-channel images: features={features} is not "
                          f"side² with side >= 2")
    channels, hidden = int(params.get("channels", 32)), int(params.get("hidden", 64))
    return JaxModel(lambda key: CNN(side, classes, channels, hidden, jnp.dtype(dtype), key), dtype=dtype)
