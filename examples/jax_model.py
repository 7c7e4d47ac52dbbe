"""A user model in JAX: any Equinox module, wrapped by flexgc's `JaxModel` (extra ``flexgc[jax]``).

    flexgc master --model examples.jax_model:build,width=32 --data sklearn:digits --optimizer adam:lr=3e-3 ...
    flexgc worker --model-modules examples ...

`JaxModel` ravels the module's float arrays into the flat (d,) vector with ``ravel_pytree``, and computes
the summed loss and gradient of a partition with one jitted ``jax.value_and_grad`` (compiled once per
input shape). The module maps one input row (features,) to class scores (classes,); the default loss is
softmax cross-entropy on integer labels (``loss=squared_error`` for regression). Build every layer with
the model's dtype.
"""

from __future__ import annotations

import equinox as eqx
import jax

from flexgc.common.jax_models import JaxModel


class ResidualMLP(eqx.Module):
    """x -> tanh(W_in x) -> h + tanh(W_h h) -> W_out h."""

    inp: eqx.nn.Linear
    hidden: eqx.nn.Linear
    out: eqx.nn.Linear

    def __init__(self, features: int, classes: int, width: int, dtype: str, key: jax.Array) -> None:
        k1, k2, k3 = jax.random.split(key, 3)
        self.inp = eqx.nn.Linear(features, width, dtype=dtype, key=k1)
        self.hidden = eqx.nn.Linear(width, width, dtype=dtype, key=k2)
        self.out = eqx.nn.Linear(width, classes, dtype=dtype, key=k3)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Class scores (classes,) of one row x (features,)."""
        h = jax.nn.tanh(self.inp(x))
        h = h + jax.nn.tanh(self.hidden(h))
        return self.out(h)


def build(features: int, classes: int, width: int = 32, dtype: str = "float32") -> JaxModel:
    """The factory named on the command line: ``examples.jax_model:build[,width=...,dtype=...]``."""
    return JaxModel(lambda key: ResidualMLP(features, classes, width, dtype, key), dtype=dtype)
