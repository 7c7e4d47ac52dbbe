"""Who straggles: per worker (its id and host, wherever its slot is), scores from the times the master records.

Every settled iteration's run-log record says, per slot, which worker held it and how long its partitions took
(`speeds.per_unit_times`: seconds per whole dataset, so that workers of different loads compare; inf: it never
answered), and which slots the decode did without (`stragglers`). Per worker, over its last `window`
iterations (a rolling history: one-off stalls do not move a median, a chronic lag does):

* **relative** score: its median per-unit time over the window against the median of all workers' medians
  (2.4: it takes 2.4 times as long as the typical worker now). Like NVIDIA resiliency-ext's relative score,
  against the other workers, but as a slowdown (>= 1 slow) rather than its inverse;
* **individual** score: its recent time (an EWMA of the log time, weight `alpha`) against its own best window
  median (2.0: twice as slow as it has been: a machine that got slower, whatever the others do);
* **straggle rate**: the share of its iterations whose decode did without it, and **stalls**: iterations in
  which it took more than 3 times its median, or never answered (one-off stalls, told apart from chronic lag).

It reads records only (the same estimates the adaptive placement makes from them, `speeds.py`), and feeds the
progress line, the summary and the Prometheus metrics.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flexgc.master.metrics import Metrics
from flexgc.master.speeds import per_unit_times

WINDOW = 50
ALPHA = 0.2
STALL_FACTOR = 3.0
MIN_SAMPLES = 3  # a worker is scored once it has this many measured iterations


@dataclass
class _Worker:
    host: str
    slot: int
    times: deque[float]                         # per-unit seconds per iteration (inf: no answer)
    straggled: deque[bool]
    log_recent: float = math.nan                # EWMA of log(per-unit seconds)
    best_median: float = math.inf
    iterations: int = 0
    straggles: int = 0
    slots: set[int] = field(default_factory=set)

    def median(self) -> float:
        finite = [t for t in self.times if math.isfinite(t)]
        return float(np.median(finite)) if finite else math.nan


@dataclass(frozen=True, slots=True)
class WorkerScore:
    """One worker's scores now (see the module docstring)."""

    worker_id: str
    host: str
    slot: int
    samples: int
    median_s: float
    relative: float
    individual: float
    straggle_rate: float
    stalls: int

    @property
    def label(self) -> str:
        """worker@host, as the progress line and the report name it."""
        return f"{self.worker_id}@{self.host}" if self.host else self.worker_id


class StragglerScores:
    """Rolling per-worker times and the scores above, updated once per settled iteration."""

    def __init__(self, k: int, metrics: Metrics | None = None, window: int = WINDOW, alpha: float = ALPHA) -> None:
        self.k = k
        self.window = window
        self.alpha = alpha
        self.metrics = metrics
        self._workers: dict[str, _Worker] = {}
        self._holder: dict[int, tuple[str, str]] = {}   # slot -> (worker_id, host) of its latest task

    def observe(self, rec: dict[str, Any]) -> None:
        """One iteration's run-log record."""
        times = per_unit_times(self.k, rec["workers"])
        stragglers = set(rec["stragglers"]) if rec["outcome"] != "FAILED" else set()
        for w in rec["workers"]:
            slot = w["slot"]
            if w["task_sent_ms"] is None or slot not in times:
                continue
            worker_id = w.get("worker_id") or f"slot-{slot}"
            host = w.get("host") or ""
            worker = self._workers.get(worker_id)
            if worker is None:
                worker = self._workers[worker_id] = _Worker(host, slot, deque(maxlen=self.window),
                                                            deque(maxlen=self.window))
            worker.host, worker.slot = host, slot
            worker.slots.add(slot)
            t = times[slot]
            worker.times.append(t)
            straggled = slot in stragglers
            worker.straggled.append(straggled)
            worker.iterations += 1
            worker.straggles += straggled
            if math.isfinite(t) and t > 0:
                x = math.log(t)
                worker.log_recent = x if math.isnan(worker.log_recent) else (
                    (1 - self.alpha) * worker.log_recent + self.alpha * x)
            if sum(math.isfinite(v) for v in worker.times) >= MIN_SAMPLES:
                worker.best_median = min(worker.best_median, worker.median())
            self._note_holder(slot, worker_id, host, straggled)
        self._publish()

    def _note_holder(self, slot: int, worker_id: str, host: str, straggled: bool) -> None:
        if self.metrics is None:
            return
        old = self._holder.get(slot)
        if old != (worker_id, host):
            if old is not None:
                self.metrics.worker_info.remove(str(slot), *old)
            self.metrics.worker_info.labels(slot=str(slot), worker_id=worker_id, host=host).set(1)
            self._holder[slot] = (worker_id, host)
        if straggled:
            self.metrics.worker_straggles.labels(worker_id=worker_id, host=host).inc()

    def scores(self) -> list[WorkerScore]:
        """Every scored worker, the slowest (highest relative score) first."""
        medians = {wid: w.median() for wid, w in self._workers.items()
                   if sum(math.isfinite(v) for v in w.times) >= MIN_SAMPLES}
        if not medians:
            return []
        typical = float(np.median(list(medians.values())))
        out = []
        for wid, median in medians.items():
            w = self._workers[wid]
            recent = math.exp(w.log_recent) if not math.isnan(w.log_recent) else math.nan
            stalls = sum(1 for t in w.times if not math.isfinite(t) or t > STALL_FACTOR * median)
            out.append(WorkerScore(wid, w.host, w.slot, len(w.times), median,
                                   median / typical if typical > 0 else math.nan,
                                   recent / w.best_median if w.best_median > 0 else math.nan,
                                   sum(w.straggled) / len(w.straggled), stalls))
        return sorted(out, key=lambda s: (-s.relative if math.isfinite(s.relative) else 0.0, s.worker_id))

    def slowest(self) -> WorkerScore | None:
        """The worker with the highest relative score, once two or more are scored."""
        scores = self.scores()
        return scores[0] if len(scores) >= 2 else None

    def summary(self) -> list[dict[str, Any]]:
        """Per worker, for summary.json: id, host, slots held, iterations, straggles and the scores now."""
        scored = {s.worker_id: s for s in self.scores()}

        def r(x: float | None, nd: int = 3) -> float | None:
            return None if x is None or not math.isfinite(x) else round(x, nd)

        out = []
        for wid, w in sorted(self._workers.items()):
            s = scored.get(wid)
            out.append({"worker_id": wid, "host": w.host, "slots": sorted(w.slots), "iterations": w.iterations,
                        "straggles": w.straggles, "relative": r(s.relative) if s else None,
                        "individual": r(s.individual) if s else None,
                        "median_unit_s": r(s.median_s, 6) if s else None, "stalls": s.stalls if s else None})
        return out

    def _publish(self) -> None:
        if self.metrics is None:
            return
        for s in self.scores():
            for kind, value in (("relative", s.relative), ("individual", s.individual)):
                if math.isfinite(value):
                    self.metrics.straggler_score.labels(worker_id=s.worker_id, host=s.host, score=kind).set(value)
