"""Delay models (docs/design.md §3.1) and the ``--delay SPEC`` grammar shared by the analysis and the live worker.

A spec is a base model, optionally followed by modifiers, joined with ``/``::

    none
    shifted-exp:a=1,mu=1,p=0.1            model A: a fraction x of the data takes x * (a + X_i),
                                          X_i ~ Exp(mu) (mean 1/mu) per worker and iteration
    per-partition:a=1,mu=1,p=0            model B: each partition (size 1/k) takes (a + Exp(mu)) / k
    pareto:a=1,alpha=2,xm=1,p=0           model A with X_i ~ Pareto(alpha, scale xm)
    trace:file=bytedance-se,loop=1,seed=0,p=0
                                          replay a matrix F of slowdown factors: worker w in iteration t
                                          computes a fraction x in x * F[t, col(w)] (docs/traces.md)
    lognormal:preset=gpu-dp               fitted to trace figures: a fraction x takes
                                          factor * (a + b * x), factor = persistent * transient log-normal
                                          * heavy straggler (Markov) * slow class (docs/traces.md)
    .../slow:workers=0+3,factor=5         persistent slow slots: their times are multiplied by factor
    .../slow:workers=3,factor=4,from=30   ... from iteration 30 on (a worker that becomes slow)
    .../dead:workers=7                    persistent dead slots: they never answer

``p`` is the probability that a worker is unresponsive in an iteration (it never answers). Every base
model except ``none`` also takes ``unit_s`` (seconds per model time unit, default 1; ``scale`` is the same
key for ``trace``): the live worker sleeps ``model time * unit_s``. Times are "model time" everywhere
except `Realization.durations_s`.

Two samplers share the distributions: `realize` (one worker, one iteration, deterministic in
``(seed, iteration, slot)`` so every code faces the same realization) and `sample_durations`
(vectorized, for Monte Carlo; trial t of a trace is iteration ``start + t``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from flexgc.common.codes import Code
from flexgc.common.errors import ConfigError
from flexgc.common.specs import Spec, as_float, as_int, as_int_list, parse_spec, reject_unknown
from flexgc.common.traces import SHIPPED, load_factors

BaseKind = Literal["none", "shifted-exp", "per-partition", "pareto", "trace", "lognormal"]
Modifier = Literal["slow", "dead"]
BASE_KINDS: tuple[str, ...] = get_args(BaseKind)
MODIFIERS: tuple[str, ...] = get_args(Modifier)

# allowed numeric keys and defaults per base model, in canonical order; `unit_s` is accepted by every base
# model except `none`, `file` (required) by `trace`, `preset` by `lognormal`
_DEFAULTS: dict[str, dict[str, float]] = {
    "none": {},
    "shifted-exp": {"a": 1.0, "mu": 1.0, "p": 0.0},
    "per-partition": {"a": 1.0, "mu": 1.0, "p": 0.0},
    "pareto": {"a": 1.0, "alpha": 2.0, "xm": 1.0, "p": 0.0},
    "trace": {"loop": 1.0, "seed": 0.0, "p": 0.0},
    # rho defaults to ph (heavy stragglers independent across iterations)
    "lognormal": {"a": 0.0, "b": 1.0, "sigma_u": 0.0, "sigma_e": 0.1, "ph": 0.0, "fh": 1.0, "rho": 0.0,
                  "q": 0.0, "fq": 1.0, "p": 0.0},
}
# spec key -> DelayModel field, where they differ
_FIELD = {"file": "trace", "seed": "trace_seed"}
_AT_LEAST_ZERO = {"a", "b", "sigma_u", "sigma_e"}
_PROBABILITIES = {"p", "ph", "rho"}  # in [0, 1)
_FACTORS = {"fh", "fq"}  # >= 1
# everything else numeric (mu, alpha, xm, unit_s) is > 0; loop is 0 or 1, seed an integer >= 0, q in [0, 1]

# `lognormal:preset=NAME`: values fitted to public trace figures (docs/traces.md gives each one's source);
# keys given beside the preset override it
PRESETS: dict[str, dict[str, float]] = {
    # Alibaba PAI data-parallel jobs: body of the homogeneous jobs, tail of all 100 jobs, model time 1 = the
    # median time of one worker on the whole data set
    "gpu-dp": {"a": 0.0, "b": 1.0, "sigma_u": 0.06, "sigma_e": 0.035, "ph": 0.028, "fh": 5.0, "rho": 0.5,
               "q": 0.0, "fq": 1.0, "p": 0.001},
    # AWS Lambda profiles (London, Sydney, Tokyo medians), in seconds: fixed invocation cost a, b per load
    # (no rho: independent invocations, rho = ph, also when ph is overridden)
    "serverless": {"a": 1.9, "b": 0.207, "sigma_u": 0.0, "sigma_e": 0.115, "ph": 0.0035, "fh": 11.0,
                   "q": 0.0, "fq": 1.0, "p": 0.0},
    # Alibaba PAI heterogeneous job 4: half the workers 4.3x slower, persistently
    "two-class": {"a": 0.0, "b": 1.0, "sigma_u": 0.14, "sigma_e": 0.035, "ph": 0.0, "fh": 1.0, "rho": 0.0,
                  "q": 0.5, "fq": 4.3, "p": 0.0},
}
# a '/' inside a trace's file path does not start a modifier; one followed by NAME: does
_MODIFIER_SPLIT = re.compile(r"/(?=\s*[A-Za-z][\w-]*\s*:)")


@dataclass(frozen=True, slots=True)
class SlowWorkers:
    """Slots whose every duration is multiplied by `factor` (>= 1), from iteration `start` on (``from=T``:
    a worker that becomes slow during the job)."""

    slots: tuple[int, ...]
    factor: float
    start: int = 0


@dataclass(frozen=True, slots=True)
class DelayModel:
    """A parsed ``--delay`` spec. Build it with `parse_delay`; `spec` is its canonical text.

    kind: base model, one of BASE_KINDS.
    a: shifted-exp, per-partition, pareto: deterministic shift per unit of data (model time); lognormal:
        the fixed cost a worker pays once per iteration (before the factor). b: lognormal's time per unit
        of data. mu: rate of the exponential part.
    alpha, xm: Pareto shape and scale (``pareto`` only).
    sigma_u, sigma_e: lognormal's persistent (per slot) and transient (per iteration and slot) log-speed
        standard deviations; ph, fh, rho: heavy straggler probability, factor and persistence
        P(heavy at t+1 | heavy at t); q, fq: fraction of slow-class slots and their factor.
    trace: the trace's short name (traces.SHIPPED) or path; loop: wrap iterations past its last row;
        trace_seed: the seed of the column choice when n exceeds its width.
    p: probability that a worker is unresponsive in an iteration, in [0, 1).
    unit_s: seconds per model time unit (live worker only).
    slow: persistent slow slots; dead: persistent dead slots (sorted, unique).
    """

    kind: str = "none"
    a: float = 0.0
    mu: float = 1.0
    p: float = 0.0
    alpha: float = 2.0
    xm: float = 1.0
    unit_s: float = 1.0
    slow: tuple[SlowWorkers, ...] = ()
    dead: tuple[int, ...] = ()
    spec: str = "none"
    b: float = 1.0
    sigma_u: float = 0.0
    sigma_e: float = 0.0
    ph: float = 0.0
    fh: float = 1.0
    rho: float = 0.0
    q: float = 0.0
    fq: float = 1.0
    trace: str = ""
    loop: bool = True
    trace_seed: int = 0

    @property
    def is_model_a(self) -> bool:
        """True for ``shifted-exp`` without modifiers or unresponsive workers (the closed forms' setting)."""
        return self.kind == "shifted-exp" and self.p == 0.0 and not self.slow and not self.dead

    def slot_factors(self, n: int, iterations: np.ndarray | None = None) -> np.ndarray:
        """Duration multiplier per slot, ``(n,)`` (the slowness in force from iteration 0 on), or per iteration
        of `iterations` and slot, ``(len(iterations), n)``; raises ConfigError if a modifier names a slot >= n."""
        self.check_slots(n)
        its = np.zeros(1, dtype=np.int64) if iterations is None else np.asarray(iterations)
        factors = np.ones((len(its), n))
        for group in self.slow:
            on = its >= group.start
            factors[np.ix_(on, np.asarray(group.slots, dtype=np.int64))] *= group.factor
        return factors[0] if iterations is None else factors

    def dead_mask(self, n: int) -> np.ndarray:
        """``(n,)`` bool, True for persistent dead slots."""
        self.check_slots(n)
        mask = np.zeros(n, dtype=bool)
        mask[list(self.dead)] = True
        return mask

    def check_slots(self, n: int) -> None:
        """Raise ConfigError if a slow or dead slot is not one of the n slots."""
        for name, slots in [("slow", s.slots) for s in self.slow] + [("dead", self.dead)]:
            bad = [i for i in slots if i >= n]
            if bad:
                raise ConfigError(f"delay={self.spec!r}: {name}:workers={'+'.join(map(str, slots))} names "
                                  f"slot {bad[0]}; allowed: 0..{n - 1} (workers={n})")

    def check_iterations(self, iterations: int) -> None:
        """Raise ConfigError if iterations 0..iterations-1 go past the end of a trace replayed with loop=0."""
        if self.kind == "trace" and not self.loop:
            _trace_rows(self, np.arange(max(iterations, 0)), len(load_factors(self.trace)))

    def with_dead(self, slots: tuple[int, ...] | list[int]) -> DelayModel:
        """This model with extra persistent dead slots (used to plot latency against dead workers)."""
        dead = tuple(sorted(set(self.dead) | {int(i) for i in slots}))
        model = dataclasses.replace(self, dead=dead)
        return dataclasses.replace(model, spec=_canonical(model))


@dataclass(frozen=True, slots=True)
class Realization:
    """One worker's delays in one iteration.

    durations_s: ``(len(order),)`` float64 seconds per partition, in the worker's order; ``math.inf`` for
        every partition of an unresponsive or dead worker.
    unresponsive: the worker never answers this iteration (drawn with probability p, or a dead slot).
    x: the worker's random slowdown X_i in model time (``shifted-exp``, ``pareto``); the mean of its
        partitions' exponential draws for ``per-partition``; the replayed factor F[row, column] for
        ``trace``; the factor for ``lognormal``; 0 for ``none``.
    """

    durations_s: np.ndarray
    unresponsive: bool
    x: float


# ---------------------------------------------------------------------------------------------
# parsing


def parse_delay(text: str, field_name: str = "delay") -> DelayModel:
    """Parse ``BASE[:key=value,...][/MODIFIER:key=value,...]...`` (see the module docstring).

    A trace's file is read here, so a missing or malformed file is refused when the spec is parsed."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{field_name}={text!r}: empty spec; expected one of {', '.join(BASE_KINDS)}, "
                          f"optionally followed by /slow:... or /dead:...")
    parts = [part.strip() for part in _split_parts(text)]
    base = parse_spec(parts[0], field_name)
    if base.family not in BASE_KINDS:
        where = "must follow a base model" if base.family in MODIFIERS else "unknown base model"
        raise ConfigError(f"{field_name}={text!r}: {base.family!r} {where}; allowed: "
                          f"{', '.join(BASE_KINDS)}")
    values = _base_values(base, field_name)
    slow: list[SlowWorkers] = []
    dead: set[int] = set()
    for part in parts[1:]:
        mod = parse_spec(part, field_name)
        if mod.family == "slow":
            reject_unknown(mod, {"workers", "factor", "from"}, field_name)
            slots = _slots(mod, field_name)
            if "factor" not in mod.params:
                raise ConfigError(f"{field_name}={text!r}: slow needs factor=F (F >= 1)")
            start = as_int(mod, "from", field_name, minimum=0) if "from" in mod.params else 0
            slow.append(SlowWorkers(slots, as_float(mod, "factor", field_name, minimum=1.0), start))
        elif mod.family == "dead":
            reject_unknown(mod, {"workers"}, field_name)
            dead.update(_slots(mod, field_name))
        else:
            allowed = "modifier" if mod.family not in BASE_KINDS else "modifier (one base model only)"
            raise ConfigError(f"{field_name}={text!r}: {mod.family!r} after '/' is not a {allowed}; "
                              f"allowed: {', '.join(MODIFIERS)}")
    model = DelayModel(kind=base.family, slow=tuple(slow), dead=tuple(sorted(dead)), **values)
    return dataclasses.replace(model, spec=_canonical(model))


def _split_parts(text: str) -> list[str]:
    """The base model and its modifiers; a trace's file path may hold '/' (only '/NAME:' starts a modifier)."""
    if text.partition(":")[0].strip().lower() == "trace":
        return _MODIFIER_SPLIT.split(text)
    return text.split("/")


def _base_values(spec: Spec, field_name: str) -> dict[str, Any]:
    """The DelayModel fields a base spec sets, checked (every refusal names the key and what is allowed)."""
    defaults = _DEFAULTS[spec.family]
    extra = {"none": set(), "trace": {"file", "unit_s", "scale"}, "lognormal": {"preset", "unit_s"}}
    reject_unknown(spec, set(defaults) | extra.get(spec.family, {"unit_s"}), field_name)
    values: dict[str, Any] = dict(defaults)
    if spec.family == "lognormal" and "preset" in spec.params:
        name = spec.params["preset"]
        if name not in PRESETS:
            raise ConfigError(f"{field_name}: preset={name!r}; allowed: {', '.join(PRESETS)} (in {spec.text!r})")
        values.update(PRESETS[name])
    if spec.family == "trace":
        _trace_values(spec, field_name, values)
    for key in spec.params.keys() - {"preset", "file", "scale", "loop", "seed"}:
        values[key] = _number(spec, key, field_name)
    if spec.family == "lognormal":
        if "rho" not in spec.params and "rho" not in PRESETS.get(spec.params.get("preset", ""), {}):
            values["rho"] = values["ph"]  # heavy stragglers independent across iterations
        if values["ph"] > 0 and values["rho"] < values["ph"]:
            raise ConfigError(f"{field_name}: rho={values['rho']:g} must be >= ph={values['ph']:g} (rho = ph: "
                              f"heavy stragglers independent across iterations; closer to 1: more persistent) (in "
                              f"{spec.text!r})")
    return {_FIELD.get(key, key): value for key, value in values.items()}


def _trace_values(spec: Spec, field_name: str, values: dict[str, Any]) -> None:
    if "file" not in spec.params or not spec.params["file"]:
        raise ConfigError(f"{field_name}={spec.text!r}: trace needs file=NAME or file=PATH; shipped traces: "
                          f"{', '.join(SHIPPED)} (docs/traces.md)")
    if "scale" in spec.params and "unit_s" in spec.params:
        raise ConfigError(f"{field_name}={spec.text!r}: scale and unit_s are the same key (seconds per model "
                          f"time unit); give one")
    if "scale" in spec.params:
        values["unit_s"] = as_float(spec, "scale", field_name, minimum=0.0, strict_min=True)
    values["file"] = spec.params["file"]
    load_factors(values["file"], field_name)  # refuse a missing or malformed file now, not in a worker
    if "loop" in spec.params:
        loop = as_int(spec, "loop", field_name, minimum=0)
        if loop > 1:
            raise ConfigError(f"{field_name}: loop={loop}; allowed: 0 (refuse iterations past the last row), "
                              f"1 (wrap around) (in {spec.text!r})")
        values["loop"] = loop
    if "seed" in spec.params:
        values["seed"] = as_int(spec, "seed", field_name, minimum=0)
    values["loop"], values["seed"] = bool(values["loop"]), int(values["seed"])


def _number(spec: Spec, key: str, field_name: str) -> float:
    if key in _AT_LEAST_ZERO:
        return as_float(spec, key, field_name, minimum=0.0)
    if key in _FACTORS:
        return as_float(spec, key, field_name, minimum=1.0)
    if key == "q":
        return as_float(spec, key, field_name, minimum=0.0, maximum=1.0)
    if key in _PROBABILITIES:
        value = as_float(spec, key, field_name, minimum=0.0)
        if value >= 1.0:
            raise ConfigError(f"{field_name}: {key}={value} must be in [0, 1) (in {spec.text!r})")
        return value
    return as_float(spec, key, field_name, minimum=0.0, strict_min=True)  # mu, alpha, xm, unit_s


def _slots(spec: Spec, field_name: str) -> tuple[int, ...]:
    if "workers" not in spec.params:
        raise ConfigError(f"{field_name}={spec.text!r}: {spec.family} needs workers=I+J+... (slot indices "
                          f">= 0)")
    slots = as_int_list(spec, "workers", field_name)
    if not slots or min(slots) < 0:
        raise ConfigError(f"{field_name}: workers={spec.params['workers']!r} in {spec.text!r}; need one or "
                          f"more slot indices >= 0 joined with '+'")
    return tuple(sorted(set(slots)))


def _written(value: float) -> str:
    """A value as the canonical spec writes it: short (%g) where that reads back exactly, else every digit
    (so the spec parses back to the same model, and to the same text)."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


def _canonical(model: DelayModel) -> str:
    items = [f"file={model.trace}"] if model.kind == "trace" else []
    for key in _DEFAULTS[model.kind]:
        value = getattr(model, _FIELD.get(key, key))
        items.append(f"{key}={int(value)}" if key in ("loop", "seed") else f"{key}={_written(value)}")
    if model.unit_s != 1.0:
        items.append(f"unit_s={_written(model.unit_s)}")
    text = model.kind + (":" + ",".join(items) if items else "")
    for group in model.slow:
        text += f"/slow:workers={'+'.join(map(str, group.slots))},factor={_written(group.factor)}"
        if group.start:
            text += f",from={group.start}"
    if model.dead:
        text += f"/dead:workers={'+'.join(map(str, model.dead))}"
    return text


# ---------------------------------------------------------------------------------------------
# sampling


def realize(model: DelayModel, seed: int, iteration: int, slot: int, order: tuple[int, ...] | list[int],
            k: int) -> Realization:
    """The delays of worker `slot` in `iteration`: a pure function of ``(seed, iteration, slot)`` (model B:
    each partition's draw also of its partition index; trace: of the file's contents), so every code faces
    the same realization.

    order: the partitions the worker computes, in its order; k: number of partitions (a partition is 1/k
    of the data). Returns durations in seconds (model time * unit_s), see `Realization`.
    """
    if k < 1 or slot < 0 or iteration < 0:
        raise ConfigError(f"realize: k={k}, slot={slot}, iteration={iteration}; need k >= 1, slot >= 0 and "
                          f"iteration >= 0")
    m = len(order)
    # seeding a generator costs ~10 us: skip it where nothing is drawn (delay=none, the common fast path)
    uses_rng = model.kind not in ("none", "per-partition", "trace") or model.p > 0
    rng = np.random.default_rng([seed, iteration, slot]) if uses_rng else None
    x = 0.0
    if model.kind == "none":
        per_part = np.zeros(m)
    elif model.kind == "per-partition":
        draws = np.array([np.random.default_rng([seed, iteration, slot, int(j)]).exponential(1 / model.mu)
                          for j in order])
        x = float(draws.mean()) if m else 0.0
        per_part = (model.a + draws) / k
    elif model.kind == "trace":
        F = load_factors(model.trace)
        x = float(F[_trace_rows(model, np.array([iteration]), len(F))[0],
                    _trace_column(model.trace_seed, slot, F.shape[1])])
        per_part = np.full(m, x / k)
    elif model.kind == "lognormal":
        assert rng is not None
        x = _lognormal_factor(model, rng, seed, iteration, slot)
        per_part = np.full(m, x * model.b / k)
        per_part[:1] += x * model.a  # the fixed cost, paid once, with the first partition
    else:
        assert rng is not None
        x = float(_draw_x(model, rng, ()))
        per_part = np.full(m, (model.a + x) / k)
    unresponsive = slot in model.dead or (rng is not None and model.p > 0 and bool(rng.random() < model.p))
    factor = math.prod(g.factor for g in model.slow if slot in g.slots and iteration >= g.start)
    durations_s = np.full(m, math.inf) if unresponsive else per_part * (factor * model.unit_s)
    return Realization(durations_s.astype(np.float64), unresponsive, x)


def _draw_x(model: DelayModel, rng: np.random.Generator, size: tuple[int, ...]) -> np.ndarray:
    """X_i for model A (Exp(mu), mean 1/mu) or Pareto(alpha, scale xm) = xm * (1 + Lomax(alpha))."""
    if model.kind == "pareto":
        return model.xm * (1.0 + rng.pareto(model.alpha, size))
    return rng.exponential(1.0 / model.mu, size)


def sample_durations(model: DelayModel, code: Code, trials: int, rng: np.random.Generator, *,
                     start: int = 0) -> np.ndarray:
    """Per-partition model-time durations for Monte Carlo, ``(trials, n, max_parts)``.

    Entry ``[t, i, j]`` is how long slot i takes for the j-th partition of ``code.order[i]`` in trial t
    (``inf`` for a dead or unresponsive worker, and for ``j >= len(order[i])``). Same distributions as
    `realize`. The draws depend on (model, n, k, trials, rng) only, not on the code's order, so codes
    simulated with the same seed face the same per-(slot, partition) realizations.

    start: the iteration of trial 0. A trace's trial t replays iteration ``start + t`` exactly as `realize`
    does (rows, columns; p still draws from `rng`), so a caller sampling in chunks passes the trials done
    so far. The random models draw every trial afresh and ignore it; ``lognormal`` draws its persistent
    parts (per-slot speed, slow class) afresh per trial too, so the Monte Carlo averages over clusters, and
    runs its heavy-straggler chain across the trials of one call.
    """
    n, k = code.n, code.k
    if trials < 1:
        raise ConfigError(f"trials={trials}; need >= 1")
    factors = model.slot_factors(n, np.arange(start, start + trials))
    dead = model.dead_mask(n)
    max_parts = max(len(o) for o in code.order)
    idx = np.zeros((n, max_parts), dtype=np.int64)
    valid = np.zeros((n, max_parts), dtype=bool)
    for i, o in enumerate(code.order):
        idx[i, : len(o)] = o
        valid[i, : len(o)] = True
    if model.kind == "none":
        durations = np.zeros((trials, n, max_parts))
    elif model.kind == "per-partition":
        draws = rng.exponential(1.0 / model.mu, (trials, n, k))
        durations = (model.a + draws[:, np.arange(n)[:, None], idx]) / k
    elif model.kind == "trace":
        F = load_factors(model.trace)
        rows = _trace_rows(model, np.arange(start, start + trials), len(F))
        cols = np.array([_trace_column(model.trace_seed, slot, F.shape[1]) for slot in range(n)])
        durations = np.repeat((F[np.ix_(rows, cols)] / k)[:, :, None], max_parts, axis=2)
    elif model.kind == "lognormal":
        f = _lognormal_factors(model, rng, (trials, n))
        durations = np.repeat((f * model.b / k)[:, :, None], max_parts, axis=2)
        durations[:, :, 0] += f * model.a
    else:
        x = _draw_x(model, rng, (trials, n))
        durations = np.repeat(((model.a + x) / k)[:, :, None], max_parts, axis=2)
    durations *= factors[:, :, None]
    gone = np.broadcast_to(dead, (trials, n))
    if model.p > 0:
        gone = gone | (rng.random((trials, n)) < model.p)
    durations[gone] = math.inf
    durations[:, ~valid] = math.inf
    return durations


# ---------------------------------------------------------------------------------------------
# trace replay


def _trace_rows(model: DelayModel, iterations: np.ndarray, steps: int) -> np.ndarray:
    """The trace row of each iteration: the iteration itself, wrapped around with loop=1."""
    if model.loop:
        return iterations % steps
    if len(iterations) and int(iterations.max()) >= steps:
        raise ConfigError(f"delay={model.spec!r}: iteration {int(iterations.max())} is past the end of the "
                          f"trace ({steps} rows: iterations 0..{steps - 1}); use loop=1 to wrap around, or at "
                          f"most {steps} iterations (trials)")
    return iterations


def _trace_column(trace_seed: int, slot: int, width: int) -> int:
    """The trace column slot replays: slot itself below the trace's width, so n <= width replays columns
    0..n-1; beyond it, block b = slot // width (b >= 1) is a permutation of all columns drawn from
    (trace_seed, b), so every column serves once per block. Independent of n (the worker does not know it)."""
    block, position = divmod(slot, width)
    return position if block == 0 else int(_column_permutation(trace_seed, block, width)[position])


@functools.lru_cache(maxsize=256)
def _column_permutation(trace_seed: int, block: int, width: int) -> np.ndarray:
    return np.random.default_rng([trace_seed, block, width, _COLUMN_KEY]).permutation(width)


# ---------------------------------------------------------------------------------------------
# lognormal

# keys that keep these streams apart from the [seed, iteration, slot] ones (no run reaches such an index)
_COLUMN_KEY = 0x636F6C73
_PERSISTENT_KEY = 0x70657273
_REFRESH_STREAM, _STATE_STREAM = 1, 2


def _lognormal_factor(model: DelayModel, rng: np.random.Generator, seed: int, iteration: int, slot: int) -> float:
    """One worker's factor in one iteration: exp(sigma_u Z_slot + sigma_e Z_t) (median 1), times fq for a
    slow-class slot, times fh while the slot's heavy chain is on (docs/traces.md)."""
    z_slot, u_class = _persistent_draws(seed, slot)
    factor = math.exp(model.sigma_u * z_slot + model.sigma_e * float(rng.standard_normal()))
    if u_class < model.q:
        factor *= model.fq
    if model.ph > 0 and _heavy(model, seed, iteration, slot):
        factor *= model.fh
    return factor


@functools.lru_cache(maxsize=4096)
def _persistent_draws(seed: int, slot: int) -> tuple[float, float]:
    """The slot's persistent log-speed N(0, 1) and its class uniform, drawn once per (seed, slot)."""
    rng = np.random.default_rng([seed, slot, _PERSISTENT_KEY])
    return float(rng.standard_normal()), float(rng.random())


def _copy_probability(model: DelayModel) -> float:
    """c of the heavy chain: each iteration keeps the previous state with probability c, else draws afresh
    (heavy with probability ph). Then P(heavy) = ph at every iteration and P(heavy at t+1 | heavy at t)
    = c + (1 - c) ph = rho."""
    return (model.rho - model.ph) / (1.0 - model.ph)


def _heavy(model: DelayModel, seed: int, iteration: int, slot: int) -> bool:
    """The heavy state of (slot, iteration): the fresh draw of the last refresh at or before `iteration`
    (iteration 0 always refreshes). Its coins are hashes of (seed, slot, iteration); the look-back
    (geometric, mean 1/(1 - c)) reads the first few one by one, then in vectorized windows of doubling
    length, so even rho near 1 stays cheap."""
    copy = _copy_probability(model)
    key = _hash_key(seed, slot, _REFRESH_STREAM)
    refresh, top = -1, iteration
    while refresh < 0 and top >= 0 and iteration - top < 8:
        refresh = top if top == 0 or _uniform(key, top) >= copy else -1
        top -= 1
    window = 64
    while refresh < 0:
        low = max(0, top - window + 1)
        js = np.arange(top, low - 1, -1, dtype=np.uint64)  # top, top - 1, ..., low
        hits = np.flatnonzero(_uniforms(key, js) >= copy)
        refresh = top - int(hits[0]) if hits.size else (0 if low == 0 else -1)
        top, window = low - 1, 2 * window
    return _uniform(_hash_key(seed, slot, _STATE_STREAM), refresh) < model.ph


def _lognormal_factors(model: DelayModel, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """``(trials, n)`` factors with the distribution of `_lognormal_factor`; trial t is iteration t of the
    heavy chains (trial 0 refreshes, like iteration 0)."""
    factor = np.exp(model.sigma_u * rng.standard_normal(shape) + model.sigma_e * rng.standard_normal(shape))
    if model.q > 0:
        factor[rng.random(shape) < model.q] *= model.fq
    if model.ph > 0:
        refresh = rng.random(shape) >= _copy_probability(model)
        refresh[0] = True
        fresh = rng.random(shape) < model.ph
        last = np.maximum.accumulate(np.where(refresh, np.arange(shape[0])[:, None], 0), axis=0)
        factor[np.take_along_axis(fresh, last, axis=0)] *= model.fh
    return factor


# SplitMix64's output function (Steele, Lea and Flood, OOPSLA 2014): a counter-based hash, so the coin of any
# iteration is computed directly; the scalar and the uint64-array versions give the same bits
_MASK64 = (1 << 64) - 1
_GAMMA, _M1, _M2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _mix(z: int) -> int:
    z = (z + _GAMMA) & _MASK64
    z = ((z ^ (z >> 30)) * _M1) & _MASK64
    z = ((z ^ (z >> 27)) * _M2) & _MASK64
    return z ^ (z >> 31)


def _mix_array(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(_GAMMA)  # uint64 arrays wrap around
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
    return z ^ (z >> np.uint64(31))


def _hash_key(seed: int, slot: int, stream: int) -> int:
    return _mix(_mix(_mix(seed & _MASK64) ^ slot) ^ stream)


def _uniform(key: int, iteration: int) -> float:
    """A uniform in [0, 1), a pure function of (key, iteration)."""
    return (_mix(key ^ iteration) >> 11) * (1.0 / (1 << 53))


def _uniforms(key: int, iterations: np.ndarray) -> np.ndarray:
    """`_uniform` of each of `iterations` (uint64)."""
    return (_mix_array(np.uint64(key) ^ iterations) >> np.uint64(11)) * (1.0 / (1 << 53))


def realized_durations(code: Code, model: DelayModel, seed: int, iterations: list[int]) -> np.ndarray:
    """``(len(iterations), n, max_parts)`` injected seconds per partition, in each slot's order under `code`:
    exactly what the live workers of a run with this delay seed sleep (inf: unresponsive, or no partition)."""
    m = max(len(o) for o in code.order)
    out = np.full((len(iterations), code.n, m), math.inf)
    for t, it in enumerate(iterations):
        for i in range(code.n):
            real = realize(model, seed, it, i, code.order[i], code.k)
            out[t, i, :len(code.order[i])] = real.durations_s
    return out


DeadPattern = Literal["contiguous", "spread", "random"]
DEAD_PATTERNS: tuple[str, ...] = get_args(DeadPattern)


def dead_slots(n: int, r: int, pattern: str = "contiguous", seed: int = 0) -> tuple[int, ...]:
    """Which r of n slots are dead: 0..r-1 (contiguous), spread evenly, or a seeded random choice that is
    the same for every code (random: the first r of a permutation drawn from `seed`)."""
    if not 0 <= r <= n:
        raise ConfigError(f"dead workers r={r}; allowed 0..{n}")
    if pattern == "contiguous":
        return tuple(range(r))
    if pattern == "spread":
        return tuple(sorted({(j * n) // r for j in range(r)})) if r else ()
    if pattern == "random":
        return tuple(sorted(int(x) for x in np.random.default_rng([seed, 0xDEAD]).permutation(n)[:r]))
    raise ConfigError(f"dead pattern={pattern!r}; allowed: {', '.join(DEAD_PATTERNS)}")
