"""Optimizers over the decoded gradient, selected by a spec string like the codes (``--optimizer``).

The master's trainer turns each decoded gradient into a parameter update. Its state travels in the
checkpoint as a tuple of arrays, so a resumed run continues exactly (`master/trainer.py`, TrainState).

| spec | update | needs |
| --- | --- | --- |
| ``gd[:lr=,momentum=]`` | heavy-ball: v ← momentum·v + g/N, w ← w − lr·v | numpy |
| ``sgd:lr=0.01,momentum=0,nesterov=false`` | ``optax.sgd`` | extra ``flexgc[jax]`` |
| ``adam:lr=1e-3,b1=0.9,b2=0.999,eps=1e-8`` | ``optax.adam`` | extra |
| ``adamw:lr=1e-3,b1=,b2=,eps=,weight_decay=1e-4`` | ``optax.adamw`` | extra |

gd's lr and momentum default to ``--lr`` and ``--momentum``; the other families ignore those options.

The optax families take a learning-rate schedule: ``schedule=constant`` (default), ``cosine`` (from lr
to ``end_lr`` over ``steps``), ``warmup-cosine`` (0 → lr over ``warmup`` steps, then cosine to ``end_lr``
at ``steps``) or ``exponential`` (× ``decay_rate`` every ``steps``). Its step counter lives in the optax
state, so it resumes with it. The optax update is jitted once and runs in float64 (JAX x64, set by
`flexgc.common.jax_models`), the master's parameter dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from flexgc.common.errors import ConfigError
from flexgc.common.specs import Spec, as_float, as_int, parse_spec, reject_unknown

OPTIMIZERS = ("gd", "sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup-cosine", "exponential")
_SCHEDULE_KEYS = {"schedule", "steps", "warmup", "end_lr", "decay_rate"}
_KEYS = {"gd": {"lr", "momentum"}, "sgd": {"lr", "momentum", "nesterov"} | _SCHEDULE_KEYS,
         "adam": {"lr", "b1", "b2", "eps"} | _SCHEDULE_KEYS,
         "adamw": {"lr", "b1", "b2", "eps", "weight_decay"} | _SCHEDULE_KEYS}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "sgd": {"lr": 0.01, "momentum": 0.0, "nesterov": False},
    "adam": {"lr": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8},
    "adamw": {"lr": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 1e-4},
}


@dataclass(frozen=True, slots=True)
class OptimizerSpec:
    """A parsed ``--optimizer``: the family, its values (every default filled in) and the canonical text."""

    family: str
    values: tuple[tuple[str, Any], ...]

    @property
    def kw(self) -> dict[str, Any]:
        """The values as a dict."""
        return dict(self.values)

    @property
    def spec(self) -> str:
        """Canonical text; parses back to the same optimizer (stored in checkpoints)."""
        items = ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else repr(v) if isinstance(v, float) else v}"
                         for k, v in self.values)
        return f"{self.family}:{items}"

    @property
    def needs_jax(self) -> bool:
        """Whether the optimizer is optax's (extra flexgc[jax])."""
        return self.family != "gd"


def parse_optimizer(text: str, lr: float = 0.5, momentum: float = 0.0, field: str = "optimizer") -> OptimizerSpec:
    """Parse an optimizer spec; `lr` and `momentum` (``--lr``, ``--momentum``) are gd's defaults."""
    spec = parse_spec(text, field)
    if spec.family not in OPTIMIZERS:
        raise ConfigError(f"{field}={text!r}: unknown optimizer {spec.family!r}; allowed: {', '.join(OPTIMIZERS)}")
    reject_unknown(spec, _KEYS[spec.family], field)
    values: dict[str, Any] = {"lr": lr, "momentum": momentum} if spec.family == "gd" else dict(_DEFAULTS[spec.family])
    for key in spec.params:
        if key in ("steps", "warmup"):
            values[key] = as_int(spec, key, field, minimum=1 if key == "steps" else 0)
        elif key == "schedule":
            if spec.params[key] not in SCHEDULES:
                raise ConfigError(f"{field}: schedule={spec.params[key]!r}; allowed: {', '.join(SCHEDULES)} "
                                  f"(in {text!r})")
            values[key] = spec.params[key]
        elif key == "nesterov":
            values[key] = _as_bool(spec, key, field)
        elif key in ("momentum", "b1", "b2"):
            values[key] = as_float(spec, key, field, minimum=0.0, maximum=1.0)
        else:
            values[key] = as_float(spec, key, field, minimum=0.0)
    if spec.family == "gd" and not 0.0 <= values["momentum"] < 1.0:
        raise ConfigError(f"{field}: momentum={values['momentum']}; must be in [0, 1) (in {text!r})")
    if spec.family != "gd":
        _check_schedule(spec, values, field)
    return OptimizerSpec(spec.family, tuple(values.items()))


def _as_bool(spec: Spec, key: str, field: str) -> bool:
    raw = spec.params[key].lower()
    if raw not in ("true", "false"):
        raise ConfigError(f"{field}: {key}={spec.params[key]!r}; allowed: true, false (in {spec.text!r})")
    return raw == "true"


def _check_schedule(spec: Spec, values: dict[str, Any], field: str) -> None:
    schedule = values.setdefault("schedule", "constant")
    needs = {"constant": set(), "cosine": {"steps"}, "warmup-cosine": {"steps", "warmup"},
             "exponential": {"steps", "decay_rate"}}[schedule]
    missing = sorted(needs - set(values))
    if missing:
        raise ConfigError(f"{field}: schedule={schedule} needs {', '.join(missing)} (in {spec.text!r})")
    extra = sorted((_SCHEDULE_KEYS - {"schedule"} - needs - {"end_lr"}) & set(values))
    if extra or (schedule in ("constant", "exponential") and "end_lr" in values):
        raise ConfigError(f"{field}: schedule={schedule} takes no {', '.join(extra or ['end_lr'])} "
                          f"(in {spec.text!r})")
    if schedule == "warmup-cosine" and values["warmup"] >= values["steps"]:
        raise ConfigError(f"{field}: warmup={values['warmup']} must be < steps={values['steps']} (in {spec.text!r})")
    if schedule in ("cosine", "warmup-cosine"):
        values.setdefault("end_lr", 0.0)


class Optimizer(Protocol):
    """An update rule with its state as a tuple of arrays (what a checkpoint stores)."""

    spec: str

    def init(self, params: np.ndarray) -> tuple[np.ndarray, ...]:
        """The initial state for parameters (d,)."""
        ...

    def step(self, params: np.ndarray, grad: np.ndarray, state: tuple[np.ndarray, ...]
             ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """New parameters (d,) float64 and state after the mean gradient `grad` (d,)."""
        ...


class HeavyBall:
    """Plain gradient descent with heavy-ball momentum, in numpy (the update flexgc always had)."""

    def __init__(self, spec: OptimizerSpec) -> None:
        self.spec = spec.spec
        self.lr, self.momentum = float(spec.kw["lr"]), float(spec.kw["momentum"])

    def init(self, params: np.ndarray) -> tuple[np.ndarray, ...]:
        """The velocity v = 0, (d,)."""
        return (np.zeros_like(params),)

    def step(self, params: np.ndarray, grad: np.ndarray, state: tuple[np.ndarray, ...]
             ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """v ← momentum·v + g; w ← w − lr·v."""
        velocity = self.momentum * state[0] + grad
        return params - self.lr * velocity, (velocity,)


class OptaxOptimizer:
    """An optax GradientTransformation over float64 parameters; its state pytree is flattened to arrays
    with ``jax.tree_util`` (the tree structure comes back from ``init`` of the same spec)."""

    def __init__(self, spec: OptimizerSpec) -> None:
        try:
            import optax

            from flexgc.common import jax_models  # noqa: F401  (x64 and XLA's one thread)
        except ImportError as exc:
            raise ConfigError(f"optimizer={spec.spec!r} needs optax ({exc}): pip install 'flexgc[jax]'") from None
        import jax

        self.spec = spec.spec
        self._jax = jax
        kw = spec.kw
        lr = _schedule(optax, kw)
        if spec.family == "sgd":
            tx = optax.sgd(lr, momentum=kw["momentum"] or None, nesterov=kw["nesterov"])
        elif spec.family == "adam":
            tx = optax.adam(lr, b1=kw["b1"], b2=kw["b2"], eps=kw["eps"])
        else:
            tx = optax.adamw(lr, b1=kw["b1"], b2=kw["b2"], eps=kw["eps"], weight_decay=kw["weight_decay"])
        self._tx = tx
        self._treedef: Any = None

        def update(w: Any, g: Any, state: Any) -> tuple[Any, Any]:
            updates, state = tx.update(g, state, w)
            return optax.apply_updates(w, updates), state

        self._update = jax.jit(update)

    def init(self, params: np.ndarray) -> tuple[np.ndarray, ...]:
        """optax's initial state, flattened to arrays (counters keep their integer dtype)."""
        state = self._tx.init(self._jax.numpy.asarray(params, dtype=np.float64))
        leaves, self._treedef = self._jax.tree_util.tree_flatten(state)
        return tuple(np.asarray(leaf) for leaf in leaves)

    def check(self, params: np.ndarray, state: tuple[np.ndarray, ...]) -> None:
        """ValueError unless `state` has the leaves (count, shapes, dtypes) this optimizer's state has."""
        fresh = self.init(params)
        if len(fresh) != len(state) or any(a.shape != b.shape or a.dtype != b.dtype for a, b in zip(fresh, state)):
            raise ValueError(f"optimizer state does not fit {self.spec}")

    def step(self, params: np.ndarray, grad: np.ndarray, state: tuple[np.ndarray, ...]
             ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """One jitted optax update in float64."""
        jnp = self._jax.numpy
        if self._treedef is None:
            self.init(params)
        tree = self._jax.tree_util.tree_unflatten(self._treedef, [jnp.asarray(leaf) for leaf in state])
        w, tree = self._update(jnp.asarray(params, dtype=np.float64), jnp.asarray(grad, dtype=np.float64), tree)
        leaves = self._jax.tree_util.tree_leaves(tree)
        return np.asarray(w, dtype=np.float64), tuple(np.asarray(leaf) for leaf in leaves)


def _schedule(optax: Any, kw: dict[str, Any]) -> Any:
    lr, schedule = kw["lr"], kw["schedule"]
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps=kw["steps"], alpha=kw["end_lr"] / lr if lr else 0.0)
    if schedule == "warmup-cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps=kw["warmup"], decay_steps=kw["steps"],
                                                  end_value=kw["end_lr"])
    return optax.exponential_decay(lr, transition_steps=kw["steps"], decay_rate=kw["decay_rate"])


def make_optimizer(text: str, lr: float = 0.5, momentum: float = 0.0) -> HeavyBall | OptaxOptimizer:
    """The optimizer of a spec (optax is imported only for the optax families)."""
    spec = parse_optimizer(text, lr, momentum)
    return HeavyBall(spec) if spec.family == "gd" else OptaxOptimizer(spec)
