"""Adaptive placement on the master: observe speeds, ask the pure planner, switch at a boundary (docs/design.md
§2.10).

The trainer calls `Adapter.observe` with every settled iteration's run-log record and `Adapter.boundary`
before starting the next one. `boundary` does at most one of two things:

* a plan was announced: switch to it once every connected worker has answered PlanReady (its partitions
  are loaded), or after `FORCE_AFTER` boundaries (a worker that is not ready then loads on the task);
* otherwise, when a check is due (every `replan_every` iterations, or sooner when some worker's chronic
  speed moved by more than `change_factor`), start the planner (common/planner.py, pure, ~5 ms) in a
  thread on the measured per-unit times; a later boundary that finds its answer announces the plan when
  it is predicted to save at least `min_gain`. Planning is never on an iteration's critical path.

So a switch costs no iteration: the plan is announced while an iteration runs, the data moves off the
critical path, and the next iteration is the first to use it, whole.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from flexgc.common.codes import Code, grow_slots, parse_code, removed_slots
from flexgc.common.config import ADAPT_MODES, MasterConfig, resolve_adapt
from flexgc.common.errors import ConfigError
from flexgc.common.planner import MIN_GAIN, PlanChoice, blocks_unchanged, chronic_speeds, membership_plan, plan
from flexgc.master.coordinator import Coordinator
from flexgc.master.speeds import SpeedTracker, per_unit_times

_log = logging.getLogger(__name__)

FORCE_AFTER = 3          # boundaries to wait for PlanReady before switching anyway
TRIGGERED_CHECKS = 5     # checks a detected speed change may trigger before the periodic ones take over
PLAN_SHARE = 0.02        # the planner may use at most this share of the master's wall time
MIN_SAMPLES = 5          # iterations observed before the first check


@dataclass(frozen=True, slots=True)
class AdaptPolicy:
    """When and how the master re-plans (`--adapt`, `--replan-every`, `--adapt-split`)."""

    mode: str = "off"
    replan_every: int = 10
    split: int = 4
    min_gain: float = MIN_GAIN
    change_factor: float = 1.5
    window: int = 30
    replace_after_s: float = 30.0
    grow: int = 0   # elastic growth: slots beyond --workers, up to --max-workers, that start empty

    def __post_init__(self) -> None:
        if self.mode not in ADAPT_MODES or self.mode == "auto":  # `auto` is resolved per job (AdaptPolicy.of)
            raise ConfigError(f"adapt={self.mode!r}; allowed: {', '.join(m for m in ADAPT_MODES if m != 'auto')}")
        if self.grow < 0 or (self.grow and not self.elastic):
            raise ConfigError(f"adapt: grow={self.grow}; needs mode elastic or all (a job grows only by elastic plans)")
        if self.replan_every < 1 or self.split < 1 or self.window < 2 or self.change_factor <= 1:
            raise ConfigError(f"adapt: replan_every={self.replan_every} (>= 1), split={self.split} (>= 1), "
                              f"window={self.window} (>= 2), change_factor={self.change_factor} (> 1)")

    @classmethod
    def of(cls, cfg: MasterConfig) -> AdaptPolicy:
        """The policy a master's configuration asks for (`auto` resolved for its code and n)."""
        mode = resolve_adapt(cfg.adapt, parse_code(cfg.code, cfg.workers).family, cfg.workers)
        grow = max(0, cfg.max_workers - cfg.workers) if mode in ("elastic", "all") else 0
        return cls(mode, cfg.replan_every, cfg.adapt_split, replace_after_s=cfg.replace_after_s, grow=grow)

    @property
    def on(self) -> bool:
        """Whether the master adapts at all."""
        return self.mode != "off"

    @property
    def speed(self) -> bool:
        """Whether plans follow measured speed."""
        return self.mode in ("speed", "all")

    @property
    def elastic(self) -> bool:
        """Whether plans follow membership (gone workers removed, returning ones taken back in)."""
        return self.mode in ("elastic", "all")


def job_code(spec: str, n: int, policy: AdaptPolicy) -> Code:
    """The job's first code: `spec`, on `policy.split` times finer partitions when adapting (so that a
    later plan can move load in steps of 1/k; a spec that sets split= itself keeps it), with `policy.grow`
    empty slots after its n when the job may grow (`--max-workers` under elastic adaptation)."""
    code = parse_code(spec, n)
    if policy.on and policy.split > 1 and code.k == n and "split=" not in spec:
        code = parse_code(code.spec + ("," if ":" in code.spec else ":") + f"split={policy.split}", n)
    if policy.grow:  # max_workers <= k is checked where the configuration is read (MasterConfig)
        code = grow_slots(code, policy.grow)
    return code


class Adapter:
    """Speed estimates, re-plan checks and plan switches of one job."""

    def __init__(self, policy: AdaptPolicy, coordinator: Coordinator) -> None:
        self.policy = policy
        self.coordinator = coordinator
        self.smax = coordinator.code.s_max
        self.tracker = SpeedTracker(coordinator.code.n, window=policy.window)
        self._last_check = -1
        self._checked_speeds: np.ndarray | None = None   # chronic speeds at the last check
        self._planned_speeds: np.ndarray | None = None   # ... when the plan in use was chosen (or the first check)
        self._announced_at: int | None = None
        self._regime_from = 0   # observation index where the current speeds began (a detected change)
        self._triggered = 0     # checks triggered by a speed change since the plan in use was chosen
        self._latency_ms: deque[float] = deque(maxlen=policy.window)  # measured iteration latencies
        self._plan_s = 0.0          # wall time of the last planner run
        self._checked_at = -math.inf
        self._planning: asyncio.Future[tuple[str, PlanChoice, float]] | None = None
        self._gone_since: dict[int, float] = {}     # slot -> when its worker's stream was last seen gone
        self._had_worker: set[int] = set()           # slots that had a worker with work (else a take-in is growth)
        self.switches = 0
        self.checks = 0

    def observe(self, record: dict[str, Any]) -> None:
        """Feed one settled iteration's run-log record (its per-slot timings) to the speed estimates."""
        # who held each slot when it was sent this iteration's task (the record's attribution), else who
        # holds it now: estimates belong to workers, not to slots
        held = {slot: conn.worker_id for slot, conn in self.coordinator.members.connections.items()}
        held.update({w["slot"]: w["worker_id"] for w in record["workers"] if w.get("worker_id")})
        hosts = {w["slot"]: w["host"] for w in record["workers"] if w.get("host")}
        self.tracker.observe(per_unit_times(self.coordinator.code.k, record["workers"]), held, hosts)
        if record["outcome"] != "FAILED" and record["latency_ms"] is not None:
            self._latency_ms.append(float(record["latency_ms"]))

    def _export(self) -> None:
        gauge = self.coordinator.metrics.worker_speed
        for row in self.tracker.snapshot():
            if row["chronic_s"] is not None:
                gauge.labels(slot=str(row["slot"]), worker_id=str(row["worker_id"])).set(float(row["chronic_s"]))

    def _moved(self, reference: np.ndarray | None) -> tuple[int, float] | None:
        """The slot whose chronic speed moved most beyond change_factor since `reference`, and by how much."""
        if reference is None:
            return None
        ratio = self.tracker.chronic() / reference
        moved = np.flatnonzero(np.isfinite(ratio) & ((ratio > self.policy.change_factor)
                                                     | (ratio < 1 / self.policy.change_factor)))
        if not moved.size:
            return None
        i = int(moved[np.argmax(np.abs(np.log(ratio[moved])))])
        return i, float(ratio[i])

    def _due(self, t: int) -> str | None:
        if self.tracker.observed < MIN_SAMPLES:
            return None
        if self._last_check < 0:
            return "first check"
        if time.monotonic() - self._checked_at < self._plan_s / PLAN_SHARE:
            return None  # fast iterations: planning at this pace would cost more than PLAN_SHARE of the master
        if t - self._last_check >= self.policy.replan_every:
            return f"every {self.policy.replan_every} iterations"
        # a speed moved since the plan in use was sized: check again every other iteration while the new
        # speeds' iterations accumulate (at most TRIGGERED_CHECKS times), not only every replan_every
        moved = self._moved(self._planned_speeds)
        if moved and t - self._last_check >= 2 and self._triggered < TRIGGERED_CHECKS:
            self._triggered += 1
            return f"slot {moved[0]} chronic speed changed {moved[1]:.2f}x"
        return None

    def _regime_start(self, slot: int) -> int:
        """Observation index where slot `slot`'s new speed began: its trailing run of times beyond
        change_factor of the speed the plan in use was sized for."""
        assert self._planned_speeds is not None
        rows = self.tracker.matrix(self.tracker.observed - self._regime_from)[:, slot]
        ratio = rows / self._planned_speeds[slot]
        f = self.policy.change_factor
        beyond = ((ratio > f) | (ratio < 1 / f))[::-1]  # newest first
        run = len(beyond) if beyond.all() else int(np.argmin(beyond))  # the trailing run
        return self.tracker.observed - max(run, 2)

    async def boundary(self, t: int) -> list[dict[str, Any]]:
        """Before iteration t starts: switch to an announced plan, or check whether to announce one. Returns
        the run log's event records (a switch)."""
        if not self.policy.on:
            return []
        c = self.coordinator
        if c.pending is not None:
            waited = t - (self._announced_at if self._announced_at is not None else t)
            p = c.switch_ready(force=waited >= FORCE_AFTER)
            if p is None:
                return []
            self.switches += 1
            self._announced_at = None
            c.metrics.plan.set(p.plan)
            c.metrics.plan_switches.inc()
            _log.info("plan switch iteration=%d plan=%d code=%s reason=%s predicted_gain=%s ready=%d/%d", t, p.plan,
                      p.code.spec, p.reason, p.detail.get("predicted_gain"), len(p.ready),
                      len(c.members.connections))
            return [{"event": "plan", "iteration": t, "plan": p.plan, "reason": p.reason, **p.detail,
                     "announced_boundaries_before": waited, "ready_workers": sorted(p.ready),
                     "workers": self.tracker.snapshot()}]
        changed = self._membership()
        if changed is not None:
            self._announce_membership(t, *changed)
            return []
        if self._planning is not None:
            if self._planning.done():  # a check started at an earlier boundary has its answer
                self._conclude(t, *self._planning.result())
                self._planning = None
            return []
        reason = self._due(t) if self.policy.speed else None
        if reason is None:
            return []
        moved = self._moved(self._planned_speeds)
        if moved is not None:
            # a speed changed since the plan in use was sized: plan on the iterations of the new speeds only;
            # older iterations describe a cluster that is gone
            self._regime_from = max(self._regime_from, self._regime_start(moved[0]))
        times = self.tracker.matrix(self.tracker.observed - self._regime_from)
        current = c.code
        self.checks += 1
        self._last_check = t
        self._checked_speeds = self.tracker.chronic()
        if self._planned_speeds is None:
            self._planned_speeds = self._checked_speeds  # the first check: the job's code was sized for these
        self._export()
        removed = frozenset(removed_slots(current))
        if blocks_unchanged(current, times, removed):
            return []  # speeds the grain cannot follow better than the code in use: nothing to plan
        iteration_s = float(np.mean(self._latency_ms)) / 1e3 if self._latency_ms else 0.0

        def run() -> tuple[str, PlanChoice, float]:
            started = time.monotonic()
            return reason, plan(current, times, smax=self.smax, min_gain=self.policy.min_gain,
                                iteration_s=iteration_s, removed=removed), time.monotonic() - started
        # the planner runs in a thread while the next iterations run: it is never on their critical path
        self._planning = asyncio.get_running_loop().run_in_executor(None, run)
        return []

    def _membership(self) -> tuple[frozenset[int], str] | None:
        """Under elastic adaptation: the slots a plan should hold nothing for now (their workers gone longer
        than replace_after_s), with the reason, when that differs from the plan in use; else None."""
        if not self.policy.elastic:
            return None
        c, now = self.coordinator, time.monotonic()
        live = set(c.members.connections)
        for slot in range(c.code.n):
            if slot in live:
                self._gone_since.pop(slot, None)
                if c.code.order[slot]:
                    self._had_worker.add(slot)
            else:
                self._gone_since.setdefault(slot, now)
        current = frozenset(removed_slots(c.code))
        gone = {s for s, since in self._gone_since.items() if now - since >= self.policy.replace_after_s}
        back = {s for s in current if s in live}
        removed = frozenset((current - back) | gone)
        if removed == current or len(removed) >= c.code.n:
            return None
        why = [f"slot {s} gone {now - self._gone_since[s]:.1f} s: removed" for s in sorted(removed - current)]
        why += [f"slot {s} has a worker {'again' if s in self._had_worker else 'for the first time (growth)'}: "
                f"taken in" for s in sorted(back)]
        return removed, "; ".join(why)

    def _announce_membership(self, t: int, removed: frozenset[int], reason: str) -> None:
        """Announce the plan for the workers that exist (whatever its predicted latency: it restores the
        tolerance gone workers were using up, or gives a returning worker its share)."""
        c = self.coordinator
        speeds = (chronic_speeds(self.tracker.matrix()) if self.policy.speed and self.tracker.observed
                  else np.ones(c.code.n))
        if self.policy.speed and self.tracker.observed:
            # a worker taken in has no measurement yet: size it like the typical measured worker (the next check
            # corrects it), not as a silent one (chronic_speeds' SLOW_FACTOR, for slots that never answered)
            chronic = self.tracker.chronic()
            fresh = [s for s in range(c.code.n) if s not in removed and math.isnan(chronic[s])
                     and not self.tracker.samples(s)]  # no measurement at all (not: never answered)
            measured = chronic[np.isfinite(chronic)]
            if fresh and measured.size:
                speeds[fresh] = float(np.median(measured))
        code = membership_plan(c.code, speeds, removed, self.smax)
        if code.spec == c.code.spec:
            return
        if code.s_max < self.smax:
            _log.warning("elastic plan: only %d slots remain, tolerance %d instead of %d", c.code.n - len(removed),
                         code.s_max, self.smax)
        _log.info("membership plan iteration=%d reason=%s", t, reason)
        c.announce(code, reason, {"code": code.spec, "removed": sorted(removed), "s_max": code.s_max})
        self._announced_at = t
        self._planned_speeds = speeds if self.policy.speed and self.tracker.observed else self._planned_speeds

    def _conclude(self, t: int, reason: str, choice: PlanChoice, seconds: float) -> None:
        """A planner run finished: announce its plan if it is worth a switch (and still for the code in use)."""
        c = self.coordinator
        self._checked_at, self._plan_s = time.monotonic(), seconds
        _log.debug("plan check iteration=%d reason=%s gain=%.3f switch=%s", t, reason, choice.gain, choice.switch)
        if choice.switch and math.isfinite(choice.predicted_s) and c.pending is None:
            c.announce(choice.code, reason, choice.as_dict())
            self._announced_at = t
            self._planned_speeds = np.array(choice.speeds)  # what the plan was sized for
            self._triggered = 0

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the adaptation: the plan in use (its id and spec)."""
        return {"plan": self.coordinator.plan, "code": self.coordinator.code.spec}

    def restore(self, saved: dict[str, Any]) -> None:
        """Resume under the plan a checkpoint was written with (so a resumed job runs the same code)."""
        c = self.coordinator
        number, spec = int(saved.get("plan", 0)), saved.get("code")
        if number > 0 and isinstance(spec, str):
            c.use_plan(number, parse_code(spec, c.code.n))
            _log.info("resumed plan=%d code=%s", number, spec)
