"""Models and datasets, in numpy.

A partial gradient of partition j is the *sum* over its samples of the per-sample gradient, so the
full-batch gradient is ``g = sum_j g_j`` and the master divides by the number of samples. Every coded
vector carries one extra trailing element: the partition's loss sum at the same parameters, which the
decoder recovers exactly like the gradient (the loss is linear in the partitions too).

Datasets: ``synthetic`` is generated partition by partition from (seed, partition), so a worker makes
only the rows it needs and the master needs none; ``.npz`` (arrays X, y) and ``.csv`` (last column y)
files, and scikit-learn's bundled datasets (``sklearn:iris`` etc., optional extra), are loaded by the
master and streamed to workers on demand.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from flexgc.common.errors import ConfigError

_log = logging.getLogger(__name__)

Model = Literal["logistic", "softmax", "least-squares"]
MODELS: tuple[str, ...] = get_args(Model)
SKLEARN_DATASETS = ("iris", "wine", "breast_cancer", "digits", "diabetes")


@dataclass(frozen=True, slots=True)
class DataSpec:
    """Describes the dataset and model; shipped to workers in JoinReply."""

    model: str = "logistic"
    source: str = "synthetic"         # "synthetic" or a path / sklearn:NAME loaded by the master
    samples: int = 20_000
    features: int = 100
    classes: int = 2
    seed: int = 0
    partitions: int = 1
    noise: float = 0.1

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"model={self.model!r}; allowed: {', '.join(MODELS)}")
        if self.samples < self.partitions:
            raise ConfigError(f"samples={self.samples}; need >= partitions={self.partitions}")
        if self.features < 1:
            raise ConfigError(f"features={self.features}; need >= 1")
        if self.model == "softmax" and self.classes < 2:
            raise ConfigError(f"classes={self.classes}; softmax needs >= 2")

    @property
    def d(self) -> int:
        """Gradient length (without the trailing loss element)."""
        return self.features * self.classes if self.model == "softmax" else self.features

    def partition_bounds(self, j: int) -> tuple[int, int]:
        """Rows [start, stop) of partition j: contiguous, sizes differing by at most one."""
        base, extra = divmod(self.samples, self.partitions)
        start = j * base + min(j, extra)
        return start, start + base + (1 if j < extra else 0)


def synthetic_partition(spec: DataSpec, j: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of partition j of the seeded synthetic dataset: X (m, features) float64, y (m,)."""
    start, stop = spec.partition_bounds(j)
    truth_rng = np.random.default_rng([spec.seed, 0xF1E8])
    if spec.model == "softmax":
        w = truth_rng.standard_normal((spec.features, spec.classes))
    else:
        w = truth_rng.standard_normal(spec.features)
    rng = np.random.default_rng([spec.seed, 1, j])
    X = rng.standard_normal((stop - start, spec.features)) / np.sqrt(spec.features)
    z = X @ w
    if spec.model == "least-squares":
        y = z + spec.noise * rng.standard_normal(stop - start)
    elif spec.model == "logistic":
        y = (rng.random(stop - start) < 1.0 / (1.0 + np.exp(-4 * z))).astype(np.float64)
    else:
        y = np.argmax(4 * z + rng.gumbel(size=z.shape), axis=1).astype(np.float64)
    return X, y


def load_dataset(source: str, model: str) -> tuple[np.ndarray, np.ndarray]:
    """Load a whole dataset on the master: ``path.npz`` (X, y), ``path.csv`` (last column y) or
    ``sklearn:NAME``."""
    if source.startswith("sklearn:"):
        name = source.split(":", 1)[1]
        if name not in SKLEARN_DATASETS:
            raise ConfigError(f"data={source!r}; allowed sklearn datasets: {', '.join(SKLEARN_DATASETS)}")
        try:
            from sklearn import datasets
        except ImportError:
            raise ConfigError(f"data={source!r} needs scikit-learn: pip install 'flexgc[sklearn]'") from None
        X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
        X = (X - X.mean(0)) / np.maximum(X.std(0), 1e-12)
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"data={source!r}: no such file; allowed: synthetic, PATH.npz, PATH.csv, "
                              f"sklearn:NAME")
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                if "X" not in f or "y" not in f:
                    raise ConfigError(f"data={source!r}: the .npz needs arrays 'X' and 'y'")
                X, y = f["X"], f["y"]
        elif path.suffix == ".csv":
            raw = np.loadtxt(path, delimiter=",", ndmin=2)
            X, y = raw[:, :-1], raw[:, -1]
        else:
            raise ConfigError(f"data={source!r}: unknown file type; allowed: .npz, .csv")
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if X.ndim != 2 or X.shape[0] != y.shape[0] or not np.isfinite(X).all() or not np.isfinite(y).all():
        raise ConfigError(f"data={source!r}: need finite X (samples, features) and y (samples,), got "
                          f"{X.shape} and {y.shape}")
    if model == "logistic" and not np.isin(y, (0.0, 1.0)).all():
        raise ConfigError(f"data={source!r}: logistic needs labels in {{0, 1}}")
    if model == "softmax" and (y.min() < 0 or not np.all(y == np.round(y))):
        raise ConfigError(f"data={source!r}: softmax needs integer labels 0..C-1")
    return X, y


def loss_and_gradient(model: str, w: np.ndarray, X: np.ndarray, y: np.ndarray, classes: int,
                      out: np.ndarray) -> None:
    """Write the summed gradient into ``out[:d]`` and the summed loss into ``out[d]``.

    w: (d,) float64 flat parameters (softmax: features x classes, row-major); X: (m, features).
    """
    d = w.size
    if model == "least-squares":
        r = X @ w - y
        out[:d] = X.T @ r
        out[d] = 0.5 * float(r @ r)
    elif model == "logistic":
        z = X @ w
        p = 0.5 * (1.0 + np.tanh(0.5 * z))  # stable sigmoid
        out[:d] = X.T @ (p - y)
        # log(1 + e^z) - y z, stable
        out[d] = float(np.sum(np.logaddexp(0.0, z) - y * z))
    else:
        W = w.reshape(X.shape[1], classes)
        Z = X @ W
        Z -= Z.max(axis=1, keepdims=True)
        E = np.exp(Z)
        S = E.sum(axis=1, keepdims=True)
        P = E / S
        idx = y.astype(np.int64)
        loss = float(np.sum(np.log(S[:, 0]) - Z[np.arange(len(idx)), idx]))
        P[np.arange(len(idx)), idx] -= 1.0
        out[:d] = (X.T @ P).reshape(-1)
        out[d] = loss


def partial_gradient(model: str, w: np.ndarray, X: np.ndarray, y: np.ndarray, classes: int,
                     out: np.ndarray, rows_per_chunk: int = 4096,
                     should_stop: Callable[[], bool] | None = None) -> bool:
    """Summed (gradient, loss) of a partition into `out` (d+1,), computed in row chunks so a cancel is
    noticed within one chunk. Returns False (out is garbage) if `should_stop` fired."""
    out[:] = 0.0
    tmp = np.empty_like(out)
    for start in range(0, X.shape[0], rows_per_chunk):
        if should_stop is not None and should_stop():
            return False
        stop = start + rows_per_chunk
        loss_and_gradient(model, w, X[start:stop], y[start:stop], classes, tmp)
        out += tmp
    return True


def full_gradient(spec: DataSpec, w: np.ndarray, partitions: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Centralized reference: sum of every partition's (gradient, loss), (d+1,)."""
    total = np.zeros(spec.d + 1)
    tmp = np.empty(spec.d + 1)
    for X, y in partitions:
        partial_gradient(spec.model, w, X, y, spec.classes, tmp)
        total += tmp
    return total
