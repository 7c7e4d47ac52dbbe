"""Models, datasets and the mini-batch schedule.

**The model interface.** Gradient coding needs one thing from a model: the gradient of the loss over one
data partition as a flat vector, since the code combines partitions linearly and any sum of
per-partition gradients decodes exactly (docs/design.md §1). A model (`Model`) is therefore

- ``d``, the number of parameters, and ``init_params(seed) -> (d,)`` float64, the initial flat vector;
- ``loss_and_grad(params, X_part, y_part) -> (loss_sum, grad_sum)``: the *summed* loss (a float) and the
  summed gradient, shape (d,), over the rows of one partition (or of its mini-batch).

Optional: ``row_chunks`` (default True: a partition may be computed in row chunks whose results are
summed, so a Cancel is noticed between chunks; a jitted JAX gradient sets False and is one chunk),
``predict(params, X)`` (scores, for accuracies and the validation split) and ``unflatten(params)`` (the
flat vector in the model's own form, for reading a run back: `flexgc.load_run`). The numpy models here
(`logistic`, `softmax`, `least-squares`), the JAX networks of `flexgc.common.jax_models` (`jax-mlp`, `jax-cnn`, extra
``flexgc[jax]``) and user models given by import path (``--model module:factory[,key=value...]``, see
docs/models.md) all implement it; the master, the worker loop and the decoder never ask which one runs.

Every coded vector carries one extra trailing element: the partition's loss sum at the same parameters,
which the decoder recovers exactly like the gradient (the loss is linear in the partitions too). The
master divides both by the number of rows N of the iteration (all samples, or the mini-batch).

**Datasets**: ``synthetic`` is generated partition by partition from (seed, partition), so a worker makes
only the rows it needs and the master needs none; ``.npz`` (arrays X, y) and ``.csv`` (last column y)
files, and scikit-learn's bundled datasets (``sklearn:digits`` etc., no download), are loaded by the master
and streamed to workers on demand.

**Mini-batches** (``DataSpec.batch`` = B rows per partition and iteration, 0 = every row): partition j's
batch in iteration t is a pure function of (batch_seed, j, t) (`batch_rows`): each epoch of partition j
is a seeded permutation of its rows cut into ⌊m_j / B⌋ batches of B rows. The master and the workers
compute it alike, so the decoded gradient is exactly the gradient of the union of the k batches.
"""

from __future__ import annotations

import csv
import functools
import importlib
import logging
import re
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np

from flexgc.common.errors import ConfigError, ModelOutputError
from flexgc.common.specs import Spec, as_int, parse_spec, reject_unknown

_log = logging.getLogger(__name__)

NUMPY_MODELS: tuple[str, ...] = ("logistic", "softmax", "least-squares")
JAX_MODELS: tuple[str, ...] = ("jax-mlp", "jax-cnn")
MODELS: tuple[str, ...] = NUMPY_MODELS + JAX_MODELS  # usable by name; any other model by MODULE:FACTORY
SKLEARN_DATASETS = ("iris", "wine", "breast_cancer", "digits", "diabetes")

LabelKind = Literal["binary", "multiclass", "real"]
LABEL_KINDS: tuple[str, ...] = ("binary", "multiclass", "real")
_LABELS: dict[str, LabelKind] = {"logistic": "binary", "softmax": "multiclass", "least-squares": "real",
                                 "jax-mlp": "multiclass", "jax-cnn": "multiclass"}
# keys each named family takes (values checked again when the model is built)
_KEYS: dict[str, set[str]] = {"logistic": set(), "softmax": set(), "least-squares": set(),
                              "jax-mlp": {"hidden", "depth", "dtype"},
                              "jax-cnn": {"channels", "hidden", "dtype"}}
_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


@runtime_checkable
class Model(Protocol):
    """What flexgc needs of a model (module docstring): d, initial parameters and per-partition sums."""

    d: int

    def init_params(self, seed: int) -> np.ndarray:
        """The initial flat parameters, (d,) float64, a pure function of `seed`."""
        ...

    def loss_and_grad(self, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Summed loss and summed gradient (d,) over the rows X (m, features), y (m,) at params (d,)."""
        ...


# ---------------------------------------------------------------------------------------------
# model specs


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A parsed ``--model``: a named family (``jax-mlp:hidden=128``) or an import path
    (``module:factory[,key=value...]``, `target` set)."""

    family: str                          # a name of MODELS, or "import"
    params: tuple[tuple[str, str], ...]  # key=value pairs as written (sorted)
    target: str | None = None            # "module:factory" for an import-path model
    text: str = ""

    @property
    def kwargs(self) -> dict[str, str]:
        """The key=value pairs as a dict."""
        return dict(self.params)

    @property
    def needs_jax(self) -> bool:
        """Whether the model is one of the built-in JAX networks."""
        return self.family in JAX_MODELS

    @property
    def module(self) -> str | None:
        """The module an import-path model names (None for a named family)."""
        return self.target.split(":", 1)[0] if self.target else None


def parse_model(text: str, field: str = "model") -> ModelSpec:
    """``logistic``, ``jax-cnn:channels=8``, or ``pkg.mod:factory[,key=value...]``; ConfigError naming the field."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{field}={text!r}: empty; allowed: {', '.join(MODELS)} or MODULE:FACTORY")
    text = text.strip()
    head, _, rest = text.partition(",")
    family = head.split(":", 1)[0].strip().lower()
    if family in MODELS:
        spec = parse_spec(text, field)
        reject_unknown(spec, _KEYS[family], field)
        _check_named(spec, field)
        params = tuple(sorted(spec.params.items()))
        canonical = family + (":" + ",".join(f"{k}={v}" for k, v in params) if params else "")
        return ModelSpec(family, params, None, canonical)
    if not _IMPORT_PATH.match(head.strip()):
        raise ConfigError(f"{field}={text!r}: unknown model; allowed: {', '.join(MODELS)}, or a user model "
                          f"by import path MODULE:FACTORY[,key=value...]")
    rest_spec = parse_spec("import:" + rest, field) if rest else Spec("import", {}, text)
    params = tuple(sorted(rest_spec.params.items()))
    canonical = head.strip() + "".join(f",{k}={v}" for k, v in params)
    return ModelSpec("import", params, head.strip(), canonical)


def _check_named(spec: Spec, field: str) -> None:
    for key in ("hidden", "depth", "channels"):
        if key in spec.params:
            as_int(spec, key, field, minimum=1)
    if spec.params.get("dtype", "float32") not in ("float32", "float64"):
        raise ConfigError(f"{field}: dtype={spec.params['dtype']!r}; allowed: float32, float64 (in {spec.text!r})")


def label_kind(model: str) -> LabelKind:
    """What labels `model` trains on: ``binary`` (0/1), ``multiclass`` (0..C-1) or ``real``.

    An import-path model says so with a ``labels`` attribute on its factory (default ``multiclass``)."""
    ms = parse_model(model)
    if ms.target is None:
        return _LABELS[ms.family]
    kind = getattr(_target(ms), "labels", "multiclass")
    if kind not in LABEL_KINDS:
        raise ConfigError(f"model={model!r}: factory.labels={kind!r}; allowed: {', '.join(LABEL_KINDS)}")
    return kind  # type: ignore[return-value]


def _target(ms: ModelSpec) -> Any:
    """What an import-path spec names: a factory, or a model object (`is_model_object`)."""
    assert ms.target is not None
    module, _, name = ms.target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"model={ms.text!r}: cannot import {module!r} ({exc}); the module must be importable "
                          f"on the master and every worker (installed, or on PYTHONPATH)") from None
    target = getattr(mod, name, None)
    if not (callable(target) or is_model_object(target)):
        raise ConfigError(f"model={ms.text!r}: {module!r} has no factory or model object {name!r}")
    return target


def is_model_object(obj: Any) -> bool:
    """Whether `obj` is a model itself (d, init_params, loss_and_grad), not a factory or a class."""
    return isinstance(obj, Model) and not isinstance(obj, type)


def object_spec(obj: Any) -> str | None:
    """The import path ``module:name`` of a model object: a module-level name bound to this very object in
    an importable module (its class's module first, then every loaded one); None when there is none
    (an object made in a function, or one that lives in ``__main__``: a script or a notebook)."""
    home = getattr(type(obj), "__module__", None)
    names = sorted(sys.modules, key=lambda m: (m != home, m))
    for module_name in names:
        mod = sys.modules.get(module_name)
        if module_name in ("__main__", "__mp_main__") or module_name.startswith("flexgc.common.local_models") or \
                getattr(mod, "__spec__", None) is None or not _IMPORT_PATH.match(f"{module_name}:x"):
            continue
        for name, value in list(vars(mod).items()):
            if value is obj and _IMPORT_PATH.match(f"{module_name}:{name}"):
                return f"{module_name}:{name}"
    return None


def check_model_allowed(model: str, allowed_modules: str | None) -> None:
    """A worker imports an import-path model only from modules its ``--model-modules`` allows (the name is
    chosen by the master, so naming is not enough to run code on a worker)."""
    ms = parse_model(model)
    if ms.module is None:
        return
    prefixes = [p.strip() for p in (allowed_modules or "").split(",") if p.strip()]
    if not any(ms.module == p or ms.module.startswith(p + ".") for p in prefixes):
        raise ConfigError(f"model={ms.text!r}: module {ms.module!r} is not allowed on this worker; start it "
                          f"with --model-modules {ms.module.split('.')[0]} (allowed now: "
                          f"{', '.join(prefixes) or 'none'})")


def build_model(spec: DataSpec) -> Model:
    """The model of `spec` (cached per model, features and classes: JAX compiles once per process; a spec
    that names a model object is that object, looked up each time)."""
    ms = spec.model_spec
    if ms.target is not None:
        target = _target(ms)
        if is_model_object(target):
            if ms.params:
                raise ConfigError(f"model={ms.text!r}: {ms.target} is a model object, not a factory: it takes no "
                                  f"key=value options")
            return _checked(target, spec.model)
    return _build(spec.model, spec.features, spec.classes)


@functools.lru_cache(maxsize=16)
def _build(model: str, features: int, classes: int) -> Model:
    ms = parse_model(model)
    built: Any
    if ms.family == "least-squares":
        built = LeastSquares(features)
    elif ms.family == "logistic":
        built = Logistic(features)
    elif ms.family == "softmax":
        built = Softmax(features, classes)
    elif ms.needs_jax:
        try:
            from flexgc.common import jax_models
        except ImportError as exc:
            raise ConfigError(f"model={model!r} needs JAX ({exc}): pip install 'flexgc[jax]'") from None
        built = jax_models.build_named(ms.family, ms.kwargs, features, classes)
    else:
        kwargs = {k: _literal(v) for k, v in ms.params}
        try:
            built = _target(ms)(features=features, classes=classes, **kwargs)
        except ConfigError:
            raise
        except Exception as exc:  # a user factory: say whose error it is
            raise ConfigError(f"model={model!r}: the factory raised {type(exc).__name__}: {exc}") from exc
    return _checked(built, model)


def _checked(built: Any, model: str) -> Model:
    if not isinstance(built, Model) or not isinstance(built.d, int) or built.d < 1:
        raise ConfigError(f"model={model!r}: the factory must return an object with an int d >= 1, "
                          f"init_params(seed) and loss_and_grad(params, X, y) (flexgc.common.models.Model)")
    return built


def _literal(raw: str) -> Any:
    """A user model's spec value: int, float, true/false, else the string."""
    for convert in (int, float):
        try:
            return convert(raw)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(raw.lower(), raw)


def row_chunks(model: Model) -> bool:
    """Whether a partition of `model` may be computed in row chunks (default True)."""
    return bool(getattr(model, "row_chunks", True))


def accuracy(model: Model, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows classified right: scores (m,) are P(y = 1), scores (m, C) are per class."""
    predict = getattr(model, "predict", None)
    if predict is None:
        raise ConfigError(f"{type(model).__name__} has no predict(params, X)")
    scores = np.asarray(predict(params, X))
    labels = (scores > 0.5) if scores.ndim == 1 else np.argmax(scores, axis=1)
    return float(np.mean(labels == y))


# ---------------------------------------------------------------------------------------------
# the numpy models


@dataclass(frozen=True, slots=True)
class LeastSquares:
    """0.5 (x·w − y)² per row; d = features."""

    features: int
    row_chunks: ClassVar[bool] = True

    @property
    def d(self) -> int:
        """Parameter count."""
        return self.features

    def init_params(self, seed: int) -> np.ndarray:
        """Zeros (the convex models start at the origin whatever the seed)."""
        return np.zeros(self.d)

    def loss_and_grad(self, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Summed loss and gradient X^T r, r = Xw − y."""
        r = X @ params - y
        return 0.5 * float(r @ r), X.T @ r

    def predict(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Xw, (m,)."""
        return X @ params

    def unflatten(self, params: np.ndarray) -> dict[str, np.ndarray]:
        """{"w": (features,)}."""
        return {"w": np.array(params, dtype=np.float64)}


@dataclass(frozen=True, slots=True)
class Logistic:
    """log(1 + e^z) − y z per row, z = x·w, y in {0, 1}; d = features."""

    features: int
    row_chunks: ClassVar[bool] = True

    @property
    def d(self) -> int:
        """Parameter count."""
        return self.features

    def init_params(self, seed: int) -> np.ndarray:
        """Zeros."""
        return np.zeros(self.d)

    def loss_and_grad(self, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Summed loss and gradient X^T (σ(z) − y), both evaluated stably."""
        z = X @ params
        p = 0.5 * (1.0 + np.tanh(0.5 * z))  # stable sigmoid
        return float(np.sum(np.logaddexp(0.0, z) - y * z)), X.T @ (p - y)

    def predict(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        """P(y = 1), (m,)."""
        return 0.5 * (1.0 + np.tanh(0.5 * (X @ params)))

    def unflatten(self, params: np.ndarray) -> dict[str, np.ndarray]:
        """{"w": (features,)}."""
        return {"w": np.array(params, dtype=np.float64)}


@dataclass(frozen=True, slots=True)
class Softmax:
    """Cross-entropy of softmax(x W), W (features, classes) row-major in the flat vector; d = features × classes."""

    features: int
    classes: int
    row_chunks: ClassVar[bool] = True

    @property
    def d(self) -> int:
        """Parameter count."""
        return self.features * self.classes

    def init_params(self, seed: int) -> np.ndarray:
        """Zeros."""
        return np.zeros(self.d)

    def loss_and_grad(self, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Summed cross-entropy and gradient X^T (P − onehot(y)), flattened row-major."""
        W = params.reshape(X.shape[1], self.classes)
        Z = X @ W
        Z -= Z.max(axis=1, keepdims=True)
        E = np.exp(Z)
        S = E.sum(axis=1, keepdims=True)
        P = E / S
        idx = y.astype(np.int64)
        loss = float(np.sum(np.log(S[:, 0]) - Z[np.arange(len(idx)), idx]))
        P[np.arange(len(idx)), idx] -= 1.0
        return loss, (X.T @ P).reshape(-1)

    def predict(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Class scores X W, (m, classes)."""
        return X @ params.reshape(X.shape[1], self.classes)

    def unflatten(self, params: np.ndarray) -> dict[str, np.ndarray]:
        """{"W": (features, classes)}, the flat vector's row-major layout."""
        return {"W": np.array(params, dtype=np.float64).reshape(self.features, self.classes)}


# ---------------------------------------------------------------------------------------------
# the job's data description and the batch schedule


@dataclass(frozen=True, slots=True)
class DataSpec:
    """Describes the dataset, the model and the batch schedule; shipped to workers in JoinReply."""

    model: str = "logistic"           # a model spec (parse_model): a name of MODELS or MODULE:FACTORY[,...]
    source: str = "synthetic"         # "synthetic" or a path / sklearn:NAME loaded by the master
    samples: int = 20_000
    features: int = 100
    classes: int = 2
    seed: int = 0
    partitions: int = 1
    noise: float = 0.1
    batch: int = 0                    # B rows per partition and iteration (0: every row, full batch)
    batch_seed: int = 0
    _parsed: ModelSpec = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_parsed", parse_model(self.model))
        if self.samples < self.partitions:
            raise ConfigError(f"samples={self.samples}; need >= partitions={self.partitions}")
        if self.features < 1:
            raise ConfigError(f"features={self.features}; need >= 1")
        if self._parsed.family == "softmax" and self.classes < 2:
            raise ConfigError(f"classes={self.classes}; softmax needs >= 2")
        smallest = self.samples // max(self.partitions, 1)
        if not 0 <= self.batch <= smallest:
            raise ConfigError(f"batch_size={self.batch}; must be in 0..{smallest} (rows of the smallest of the "
                              f"{self.partitions} partitions; 0: full batch)")

    @property
    def model_spec(self) -> ModelSpec:
        """The parsed model spec."""
        return self._parsed

    @property
    def d(self) -> int:
        """Gradient length (without the trailing loss element): the model's parameter count."""
        return build_model(self).d

    def partition_bounds(self, j: int) -> tuple[int, int]:
        """Rows [start, stop) of partition j: contiguous, sizes differing by at most one."""
        base, extra = divmod(self.samples, self.partitions)
        start = j * base + min(j, extra)
        return start, start + base + (1 if j < extra else 0)

    def batch_samples(self, iteration: int) -> int:
        """N of iteration t: rows whose gradients the decoded vector sums (k·B, or every sample)."""
        return self.batch * self.partitions if self.batch else self.samples

    def partition_samples(self) -> np.ndarray:
        """``(k,)`` rows of each partition in an iteration's sums (B each, or the partition's rows)."""
        if self.batch:
            return np.full(self.partitions, float(self.batch))
        return np.array([b - a for a, b in map(self.partition_bounds, range(self.partitions))], dtype=float)


def batch_rows(spec: DataSpec, j: int, iteration: int) -> np.ndarray | None:
    """Rows of partition j (indices into it, sorted, (B,)) in iteration t's mini-batch; None: every row.

    Epoch e = t // ⌊m_j/B⌋ of partition j is a permutation of its m_j rows drawn from
    (batch_seed, j, e); step t mod ⌊m_j/B⌋ takes its next B rows (the last m_j mod B rows sit the epoch out)."""
    if not spec.batch:
        return None
    start, stop = spec.partition_bounds(j)
    m, B = stop - start, spec.batch
    epoch, step = divmod(iteration, m // B)
    perm = np.random.default_rng([spec.batch_seed, 0xBA7C, j, epoch]).permutation(m)
    return np.sort(perm[step * B:(step + 1) * B])


def synthetic_partition(spec: DataSpec, j: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of partition j of the seeded synthetic dataset: X (m, features) float64, y (m,)."""
    start, stop = spec.partition_bounds(j)
    return _synthetic_rows(spec, np.random.default_rng([spec.seed, 1, j]), stop - start)


def synthetic_validation(spec: DataSpec, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """`rows` more rows of the synthetic dataset's distribution (the same true weights), from a stream of
    their own: the validation split of synthetic data, which leaves every training partition as it is."""
    return _synthetic_rows(spec, np.random.default_rng([spec.seed, 2]), rows)


def _synthetic_rows(spec: DataSpec, rng: np.random.Generator, m: int) -> tuple[np.ndarray, np.ndarray]:
    kind = label_kind(spec.model)
    truth_rng = np.random.default_rng([spec.seed, 0xF1E8])
    if kind == "multiclass":
        w = truth_rng.standard_normal((spec.features, spec.classes))
    else:
        w = truth_rng.standard_normal(spec.features)
    X = rng.standard_normal((m, spec.features)) / np.sqrt(spec.features)
    z = X @ w
    if kind == "real":
        y = z + spec.noise * rng.standard_normal(m)
    elif kind == "binary":
        y = (rng.random(m) < 1.0 / (1.0 + np.exp(-4 * z))).astype(np.float64)
    else:
        y = np.argmax(4 * z + rng.gumbel(size=z.shape), axis=1).astype(np.float64)
    return X, y


def load_dataset(source: str, model: str) -> tuple[np.ndarray, np.ndarray]:
    """Load a whole dataset on the master: ``path.npz`` (X, y), ``path.csv`` (last column y) or
    ``sklearn:NAME`` (standardized features)."""
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
            X, y = _read_npz(path, source)
        elif path.suffix == ".csv":
            X, y = _read_csv(path, source)
        else:
            raise ConfigError(f"data={source!r}: unknown file type; allowed: .npz, .csv")
    try:
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"data={source!r}: X and y must be numbers ({exc})") from None
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise ConfigError(f"data={source!r}: need X (samples, features) and y (samples,), got {X.shape} and "
                          f"{y.shape}")
    for name, arr in (("X", X), ("y", y.reshape(-1, 1))):
        bad = np.argwhere(~np.isfinite(arr))
        if bad.size:
            row, col = (int(v) for v in bad[0])
            where = f"feature column {col + 1}" if name == "X" else "the label"
            raise ConfigError(f"data={source!r}: {arr[row, col]} in sample {row + 1}, {where} (1-based); every "
                              f"value must be finite")
    kind = label_kind(model)
    if kind == "binary" and not np.isin(y, (0.0, 1.0)).all():
        raise ConfigError(f"data={source!r}: model {model!r} needs labels in {{0, 1}}")
    if kind == "multiclass" and (y.min() < 0 or not np.all(y == np.round(y))):
        raise ConfigError(f"data={source!r}: model {model!r} needs integer labels 0..C-1")
    return X, y


def _read_npz(path: Path, source: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise ConfigError(f"data={source!r} is a single .npy array, not a .npz archive with arrays X and "
                                  f"y (write one with numpy.savez(path, X=X, y=y))")
            if "X" not in f or "y" not in f:
                raise ConfigError(f"data={source!r}: the .npz needs arrays 'X' and 'y' (it has "
                                  f"{', '.join(f.files) or 'none'})")
            return f["X"], f["y"]
    except ConfigError:
        raise  # (a ValueError too) an archive that lacks X or y, said as such
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ConfigError(f"data={source!r} is not a readable .npz archive ({type(exc).__name__}); write one with "
                          f"numpy.savez(path, X=X, y=y)") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_delimiter(first_line: str) -> str:
    """The CSV's delimiter, from its first line: ';' where it has one (the files that write decimal commas
    separate with it), else ',' where it has one, else a tab, else ','."""
    return next((d for d in ";,\t" if d in first_line), ",")


def _read_csv(path: Path, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows of numbers separated by commas, semicolons or tabs (`csv_delimiter`), the last column the label; a
    first row with any non-number is a header (skipped, logged); a text column, a row of another width or an
    empty file is refused naming the row/column."""
    try:
        with path.open(newline="") as fh:
            delimiter = csv_delimiter(fh.readline())
            fh.seek(0)
            rows = [(line, r) for line, r in enumerate(csv.reader(fh, delimiter=delimiter), start=1)
                    if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"data={source!r}: cannot read it as CSV ({exc})") from None
    if not rows:
        raise ConfigError(f"data={source!r}: the file holds no rows")
    header: list[str] | None = None
    if not all(_is_number(c) for c in rows[0][1]):
        header = [c.strip() for c in rows[0][1]]
        rows = rows[1:]
        _log.info("data=%s: the first row is a header (%s); skipped", source, ", ".join(header))
    if not rows:
        raise ConfigError(f"data={source!r}: the file holds a header and no data rows")
    width = len(header) if header is not None else len(rows[0][1])
    if width < 2:
        raise ConfigError(f"data={source!r}: need at least one feature column and the label column")
    for line, r in rows:
        if len(r) != width:
            raise ConfigError(f"data={source!r}: line {line} has {len(r)} columns, the file {width}; every row "
                              f"needs the same columns")
        for j, cell in enumerate(r):
            if not _is_number(cell):
                name = f"column {j + 1} ({header[j]!r})" if header else f"column {j + 1}"
                comma = re.fullmatch(r"\s*[-+]?\d*,\d+\s*", cell) is not None
                raise ConfigError(f"data={source!r}: {name} holds text ({cell.strip()!r} on line {line}); every "
                                  f"column must be numbers: " + ("write decimals with a point (1.5, not 1,5)" if
                                                                 comma else "encode it as numbers or drop it"))
    raw = np.array([r for _, r in rows], dtype=np.float64)
    return raw[:, :-1], raw[:, -1]


# ---------------------------------------------------------------------------------------------
# partial gradients


def partial_gradient(model: Model, w: np.ndarray, X: np.ndarray, y: np.ndarray, out: np.ndarray,
                     rows_per_chunk: int = 4096, should_stop: Callable[[], bool] | None = None) -> bool:
    """Summed (gradient, loss) of the rows X (m, features), y (m,) at w (d,) into `out` (d+1,).

    Computed in row chunks (one chunk when the model's `row_chunks` is False) so a cancel is noticed
    within one chunk. Returns False (out is garbage) if `should_stop` fired."""
    d = out.size - 1
    out[:] = 0.0
    step = rows_per_chunk if row_chunks(model) else max(1, X.shape[0])
    for start in range(0, X.shape[0], step):
        if should_stop is not None and should_stop():
            return False
        loss, grad = model.loss_and_grad(w, X[start:start + step], y[start:start + step])
        if np.shape(grad) != (d,) or np.ndim(loss) != 0:
            # a gradient that merely broadcasts (a scalar, shape (1,)) would be summed in silently
            raise ModelOutputError(f"loss_and_grad returned a gradient of shape {np.shape(grad)} and a loss of shape "
                                   f"{np.shape(loss)}; expected ({d},) and a scalar")
        out[:d] += grad
        out[d] += loss
    return True


def full_gradient(spec: DataSpec, w: np.ndarray, partitions: list[tuple[np.ndarray, np.ndarray]],
                  iteration: int = 0) -> np.ndarray:
    """Centralized reference: sum of every partition's (gradient, loss) on iteration t's batch, (d+1,)."""
    model = build_model(spec)
    total = np.zeros(spec.d + 1)
    tmp = np.empty(spec.d + 1)
    for j, (X, y) in enumerate(partitions):
        rows = batch_rows(spec, j, iteration)
        if rows is not None:
            X, y = X[rows], y[rows]
        partial_gradient(model, w, X, y, tmp)
        total += tmp
    return total
