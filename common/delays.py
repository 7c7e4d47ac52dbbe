"""Delay models (docs/design.md §3.1) and the ``--delay SPEC`` grammar shared by the analysis and the live worker.

A spec is a base model, optionally followed by modifiers, joined with ``/``::

    none
    shifted-exp:a=1,mu=1,p=0.1            model A: a fraction x of the data takes x * (a + X_i),
                                          X_i ~ Exp(mu) (mean 1/mu) per worker and iteration
    per-partition:a=1,mu=1,p=0            model B: each partition (size 1/k) takes (a + Exp(mu)) / k
    pareto:a=1,alpha=2,xm=1,p=0           model A with X_i ~ Pareto(alpha, scale xm)
    .../slow:workers=0+3,factor=5         persistent slow slots: their times are multiplied by factor
    .../dead:workers=7                    persistent dead slots: they never answer

``p`` is the probability that a worker is unresponsive in an iteration (it never answers). Every base
model except ``none`` also takes ``unit_s`` (seconds per model time unit, default 1): the live worker
sleeps ``model time * unit_s``. Times are "model time" everywhere except `Realization.durations_s`.

Two samplers share the distributions: `realize` (one worker, one iteration, deterministic in
``(seed, iteration, slot)`` so every code faces the same realization) and `sample_durations`
(vectorized, for Monte Carlo).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from flexgc.common.codes import Code
from flexgc.common.errors import ConfigError
from flexgc.common.specs import Spec, as_float, as_int_list, parse_spec, reject_unknown

BaseKind = Literal["none", "shifted-exp", "per-partition", "pareto"]
Modifier = Literal["slow", "dead"]
BASE_KINDS: tuple[str, ...] = get_args(BaseKind)
MODIFIERS: tuple[str, ...] = get_args(Modifier)

# allowed keys and defaults per base model; `unit_s` is accepted by every base model except `none`
_DEFAULTS: dict[str, dict[str, float]] = {
    "none": {},
    "shifted-exp": {"a": 1.0, "mu": 1.0, "p": 0.0},
    "per-partition": {"a": 1.0, "mu": 1.0, "p": 0.0},
    "pareto": {"a": 1.0, "alpha": 2.0, "xm": 1.0, "p": 0.0},
}


@dataclass(frozen=True, slots=True)
class SlowWorkers:
    """Slots whose every duration is multiplied by `factor` (>= 1)."""

    slots: tuple[int, ...]
    factor: float


@dataclass(frozen=True, slots=True)
class DelayModel:
    """A parsed ``--delay`` spec. Build it with `parse_delay`; `spec` is its canonical text.

    kind: base model, one of BASE_KINDS.
    a: deterministic shift per unit of data (model time); mu: rate of the exponential part.
    alpha, xm: Pareto shape and scale (``pareto`` only).
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

    @property
    def is_model_a(self) -> bool:
        """True for ``shifted-exp`` without modifiers or unresponsive workers (the closed forms' setting)."""
        return self.kind == "shifted-exp" and self.p == 0.0 and not self.slow and not self.dead

    def slot_factors(self, n: int) -> np.ndarray:
        """Duration multiplier per slot, ``(n,)``; raises ConfigError if a modifier names a slot >= n."""
        self.check_slots(n)
        factors = np.ones(n)
        for group in self.slow:
            factors[list(group.slots)] *= group.factor
        return factors

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
        partitions' exponential draws for ``per-partition``; 0 for ``none``.
    """

    durations_s: np.ndarray
    unresponsive: bool
    x: float


# ---------------------------------------------------------------------------------------------
# parsing


def parse_delay(text: str, field_name: str = "delay") -> DelayModel:
    """Parse ``BASE[:key=value,...][/MODIFIER:key=value,...]...`` (see the module docstring)."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{field_name}={text!r}: empty spec; expected one of {', '.join(BASE_KINDS)}, "
                          f"optionally followed by /slow:... or /dead:...")
    parts = [part.strip() for part in text.split("/")]
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
            reject_unknown(mod, {"workers", "factor"}, field_name)
            slots = _slots(mod, field_name)
            if "factor" not in mod.params:
                raise ConfigError(f"{field_name}={text!r}: slow needs factor=F (F >= 1)")
            slow.append(SlowWorkers(slots, as_float(mod, "factor", field_name, minimum=1.0)))
        elif mod.family == "dead":
            reject_unknown(mod, {"workers"}, field_name)
            dead.update(_slots(mod, field_name))
        else:
            allowed = "modifier" if mod.family not in BASE_KINDS else "modifier (one base model only)"
            raise ConfigError(f"{field_name}={text!r}: {mod.family!r} after '/' is not a {allowed}; "
                              f"allowed: {', '.join(MODIFIERS)}")
    model = DelayModel(kind=base.family, a=values.get("a", 0.0), mu=values.get("mu", 1.0),
                       p=values.get("p", 0.0), alpha=values.get("alpha", 2.0), xm=values.get("xm", 1.0),
                       unit_s=values.get("unit_s", 1.0), slow=tuple(slow), dead=tuple(sorted(dead)))
    return dataclasses.replace(model, spec=_canonical(model))


def _base_values(spec: Spec, field_name: str) -> dict[str, float]:
    defaults = _DEFAULTS[spec.family]
    allowed = set(defaults) | ({"unit_s"} if spec.family != "none" else set())
    reject_unknown(spec, allowed, field_name)
    values = dict(defaults)
    for key in spec.params:
        if key == "a":
            values[key] = as_float(spec, key, field_name, minimum=0.0)
        elif key == "p":
            values[key] = as_float(spec, key, field_name, minimum=0.0)
            if values[key] >= 1.0:
                raise ConfigError(f"{field_name}: p={values[key]} must be in [0, 1) (in {spec.text!r})")
        else:  # mu, alpha, xm, unit_s: strictly positive
            values[key] = as_float(spec, key, field_name, minimum=0.0, strict_min=True)
    return values


def _slots(spec: Spec, field_name: str) -> tuple[int, ...]:
    if "workers" not in spec.params:
        raise ConfigError(f"{field_name}={spec.text!r}: {spec.family} needs workers=I+J+... (slot indices "
                          f">= 0)")
    slots = as_int_list(spec, "workers", field_name)
    if not slots or min(slots) < 0:
        raise ConfigError(f"{field_name}: workers={spec.params['workers']!r} in {spec.text!r}; need one or "
                          f"more slot indices >= 0 joined with '+'")
    return tuple(sorted(set(slots)))


def _canonical(model: DelayModel) -> str:
    keys = list(_DEFAULTS[model.kind])
    items = [f"{key}={getattr(model, key):g}" for key in keys]
    if model.unit_s != 1.0:
        items.append(f"unit_s={model.unit_s:g}")
    text = model.kind + (":" + ",".join(items) if items else "")
    for group in model.slow:
        text += f"/slow:workers={'+'.join(map(str, group.slots))},factor={group.factor:g}"
    if model.dead:
        text += f"/dead:workers={'+'.join(map(str, model.dead))}"
    return text


# ---------------------------------------------------------------------------------------------
# sampling


def realize(model: DelayModel, seed: int, iteration: int, slot: int, order: tuple[int, ...] | list[int],
            k: int) -> Realization:
    """The delays of worker `slot` in `iteration`: a pure function of ``(seed, iteration, slot)`` (model B:
    each partition's draw also of its partition index), so every code faces the same realization.

    order: the partitions the worker computes, in its order; k: number of partitions (a partition is 1/k
    of the data). Returns durations in seconds (model time * unit_s), see `Realization`.
    """
    if k < 1 or slot < 0:
        raise ConfigError(f"realize: k={k}, slot={slot}; need k >= 1 and slot >= 0")
    m = len(order)
    # seeding a generator costs ~10 us: skip it where nothing is drawn (delay=none, the common fast path)
    uses_rng = model.kind not in ("none", "per-partition") or model.p > 0
    rng = np.random.default_rng([seed, iteration, slot]) if uses_rng else None
    x = 0.0
    if model.kind == "none":
        per_part = np.zeros(m)
    elif model.kind == "per-partition":
        draws = np.array([np.random.default_rng([seed, iteration, slot, int(j)]).exponential(1 / model.mu)
                          for j in order])
        x = float(draws.mean()) if m else 0.0
        per_part = (model.a + draws) / k
    else:
        assert rng is not None
        x = float(_draw_x(model, rng, ()))
        per_part = np.full(m, (model.a + x) / k)
    unresponsive = slot in model.dead or (rng is not None and model.p > 0 and bool(rng.random() < model.p))
    factor = math.prod(g.factor for g in model.slow if slot in g.slots)
    durations_s = np.full(m, math.inf) if unresponsive else per_part * (factor * model.unit_s)
    return Realization(durations_s.astype(np.float64), unresponsive, x)


def _draw_x(model: DelayModel, rng: np.random.Generator, size: tuple[int, ...]) -> np.ndarray:
    """X_i for model A (Exp(mu), mean 1/mu) or Pareto(alpha, scale xm) = xm * (1 + Lomax(alpha))."""
    if model.kind == "pareto":
        return model.xm * (1.0 + rng.pareto(model.alpha, size))
    return rng.exponential(1.0 / model.mu, size)


def sample_durations(model: DelayModel, code: Code, trials: int, rng: np.random.Generator) -> np.ndarray:
    """Per-partition model-time durations for Monte Carlo, ``(trials, n, max_parts)``.

    Entry ``[t, i, j]`` is how long slot i takes for the j-th partition of ``code.order[i]`` in trial t
    (``inf`` for a dead or unresponsive worker, and for ``j >= len(order[i])``). Same distributions as
    `realize`. The draws depend on (model, n, k, trials, rng) only, not on the code's order, so codes
    simulated with the same seed face the same per-(slot, partition) realizations.
    """
    n, k = code.n, code.k
    if trials < 1:
        raise ConfigError(f"trials={trials}; need >= 1")
    factors = model.slot_factors(n)
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
    else:
        x = _draw_x(model, rng, (trials, n))
        durations = np.repeat(((model.a + x) / k)[:, :, None], max_parts, axis=2)
    durations *= factors[None, :, None]
    gone = np.broadcast_to(dead, (trials, n))
    if model.p > 0:
        gone = gone | (rng.random((trials, n)) < model.p)
    durations[gone] = math.inf
    durations[:, ~valid] = math.inf
    return durations


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
