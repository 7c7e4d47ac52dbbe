"""User models that fail in the ways a user's model does (tests/test_failures.py runs them through the CLI).

    --model tests.failing_models:build,fail=raise   loss_and_grad raises ValueError on every worker
    --model tests.failing_models:build,fail=shape   loss_and_grad returns a gradient of the wrong shape
    --model tests.failing_models:build,fail=env     it raises only in a process with FLEXGC_TEST_BROKEN=1
    --model tests.failing_models:build,fail=init    init_params raises (on the master, before the job starts)
    --model tests.failing_models:build,fail=init-shape   init_params returns a vector of the wrong length
"""

from __future__ import annotations

import os

import numpy as np


class Failing:
    """Least squares, d = features, that fails as `fail` says."""

    def __init__(self, features: int, fail: str) -> None:
        self.d = features
        self.fail = fail

    def init_params(self, seed: int) -> np.ndarray:
        if self.fail == "init":
            raise OSError("no such checkpoint: weights.npy")
        return np.zeros(self.d + 1 if self.fail == "init-shape" else self.d)

    def loss_and_grad(self, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        if self.fail == "raise" or (self.fail == "env" and os.environ.get("FLEXGC_TEST_BROKEN") == "1"):
            raise ValueError("boom from the user's model")
        r = X @ params - y
        grad = X.T @ r
        return float(r @ r) / 2, grad[:-1] if self.fail == "shape" else grad


def build(features: int, classes: int, fail: str = "raise") -> Failing:
    return Failing(features, fail)


build.labels = "real"  # type: ignore[attr-defined]
