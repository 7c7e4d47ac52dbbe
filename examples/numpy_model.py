"""A user model in plain numpy: robust (Huber) linear regression with a bias, by import path.

    flexgc master --model examples.numpy_model:build,delta=0.5 --data PATH.csv ...
    flexgc worker --model-modules examples ...

The master and every worker import this module (run them from the repository root with
``PYTHONPATH=.``, or install it), and a worker imports it only if ``--model-modules`` allows it. The
factory gets the dataset's ``features`` and ``classes`` and the spec's ``key=value`` pairs (numbers
converted); it returns any object with ``d``, ``init_params(seed)`` and ``loss_and_grad(params, X, y)``
(`flexgc.common.models.Model`). ``labels`` on the factory says which labels it trains on (here real
numbers; the default is ``multiclass``), so synthetic data and label checks fit.
"""

from __future__ import annotations

import numpy as np


class HuberRegression:
    """Σ_rows huber_δ(x·w + b − y); parameters [w (features,), b]: d = features + 1."""

    row_chunks = True  # a sum over rows: the worker may split a partition into row chunks (cancel between them)
    labels = "real"    # what it trains on, for a model handed over as an object (the factory says it below)

    def __init__(self, features: int, delta: float) -> None:
        self.features, self.delta = features, delta
        self.d = features + 1

    def init_params(self, seed: int) -> np.ndarray:
        """Small random weights from `seed`, (d,) float64."""
        return 0.01 * np.random.default_rng(seed).standard_normal(self.d)

    def loss_and_grad(self, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Summed Huber loss and its gradient (d,) over the rows X (m, features), y (m,)."""
        r = X @ params[:-1] + params[-1] - y
        small = np.abs(r) <= self.delta
        loss = np.where(small, 0.5 * r * r, self.delta * (np.abs(r) - 0.5 * self.delta))
        dr = np.where(small, r, self.delta * np.sign(r))           # d loss / d r per row
        return float(loss.sum()), np.concatenate([X.T @ dr, [dr.sum()]])

    def predict(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Predictions (m,)."""
        return X @ params[:-1] + params[-1]

    def unflatten(self, params: np.ndarray) -> dict[str, np.ndarray]:
        """{"w": (features,), "b": ()}: what `flexgc.load_run(DIR).unflatten()` gives back."""
        return {"w": params[:-1].copy(), "b": params[-1].copy()}


def build(features: int, classes: int, delta: float = 1.0) -> HuberRegression:
    """The factory named on the command line: ``examples.numpy_model:build[,delta=...]``."""
    return HuberRegression(features, float(delta))


build.labels = "real"  # type: ignore[attr-defined]
