"""Per-worker speed estimates from what the master measures anyway (docs/design.md §2.10).

Every settled iteration's run-log record tells, per slot, how long each partition the worker computed took (the worker's
measured compute plus the delay it served, reported with its results and its CancelAck). Their mean,
times k, is the slot's **per-unit time** in that iteration: the seconds it would need for the whole
dataset (model A: a fraction x takes x times that). A slot cancelled before its first partition finished
gives a lower bound (its time for one partition exceeds the time it was given); a slot that never
answered gives inf.

`SpeedTracker` keeps the last `window` per-unit times per slot and two estimates of each:

* **chronic**: the median of its last `chronic_window` finite times: a persistent speed (a slow machine,
  a slow half of the cluster), which one-off stalls do not move;
* **recent**: an exponentially weighted mean of the log time (weight `fast_alpha`): transient slowness.

A slot whose worker changes (another worker id took it) starts its history anew: the estimates belong to a
worker, not to a slot. The planner (common/planner.py) reads `matrix()`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CHRONIC_WINDOW = 8
FAST_ALPHA = 0.5


@dataclass
class _Slot:
    worker_id: str = ""
    times: deque[float] = field(default_factory=deque)
    log_recent: float | None = None


class SpeedTracker:
    """Rolling per-unit times per slot, and chronic and recent speed estimates from them."""

    def __init__(self, n: int, window: int = 30, chronic_window: int = CHRONIC_WINDOW,
                 fast_alpha: float = FAST_ALPHA) -> None:
        self.n = n
        self.window = window
        self.chronic_window = chronic_window
        self.fast_alpha = fast_alpha
        self._slots = [_Slot() for _ in range(n)]
        self.observed = 0               # iterations observed

    def observe(self, per_unit_s: dict[int, float], worker_ids: dict[int, str]) -> None:
        """One iteration's per-unit seconds per slot that was sent the task (inf: never answered)."""
        self.observed += 1
        for slot, value in per_unit_s.items():
            s = self._slots[slot]
            wid = worker_ids.get(slot, s.worker_id)
            if wid != s.worker_id:
                self._slots[slot] = s = _Slot(worker_id=wid)
            s.times.append(float(value))
            while len(s.times) > self.window:
                s.times.popleft()
            if math.isfinite(value) and value > 0:
                x = math.log(value)
                s.log_recent = x if s.log_recent is None else (1 - self.fast_alpha) * s.log_recent + self.fast_alpha * x

    def samples(self, slot: int) -> int:
        """How many per-unit times slot `slot` has in its window."""
        return len(self._slots[slot].times)

    def chronic(self) -> np.ndarray:
        """``(n,)`` chronic per-unit seconds (median of the last chronic_window finite times; nan: none)."""
        out = np.full(self.n, math.nan)
        for i, s in enumerate(self._slots):
            finite = [t for t in list(s.times)[-self.chronic_window:] if math.isfinite(t)]
            if finite:
                out[i] = float(np.median(finite))
        return out

    def recent(self) -> np.ndarray:
        """``(n,)`` recent per-unit seconds (EWMA of the log; nan: none)."""
        return np.array([math.exp(s.log_recent) if s.log_recent is not None else math.nan for s in self._slots])

    def matrix(self, rows: int | None = None) -> np.ndarray:
        """``(W, n)`` the last W per-unit times of every slot (W: the shortest history, at most `rows`);
        a slot with a shorter history than the others is padded at the front with its median."""
        lengths = [len(s.times) for s in self._slots]
        W = max(lengths) if lengths else 0
        if rows is not None:
            W = min(W, rows)
        out = np.full((W, self.n), math.inf)
        for i, s in enumerate(self._slots):
            times = list(s.times)[-W:] if W else []
            if len(times) < W:
                finite = [t for t in times if math.isfinite(t)]
                pad = float(np.median(finite)) if finite else math.inf
                times = [pad] * (W - len(times)) + times
            out[:, i] = times
        return out

    def snapshot(self) -> list[dict[str, object]]:
        """Per slot: worker id, chronic and recent per-unit seconds, samples (for the run log and metrics)."""
        chronic, recent = self.chronic(), self.recent()
        return [{"slot": i, "worker_id": s.worker_id, "samples": len(s.times),
                 "chronic_s": None if math.isnan(chronic[i]) else round(float(chronic[i]), 6),
                 "recent_s": None if math.isnan(recent[i]) else round(float(recent[i]), 6)}
                for i, s in enumerate(self._slots)]


def per_unit_times(k: int, workers: list[dict[str, Any]]) -> dict[int, float]:
    """Per slot sent the task, its per-unit seconds in one iteration, from the run-log record's `workers`
    (what the master measured once the iteration settled): k times the mean per-partition time (compute +
    served delay); a lower bound (the time it was given before the Cancel, times k) when it was cancelled
    before finishing a partition; inf when it never answered."""
    out: dict[int, float] = {}
    for w in workers:
        if w["task_sent_ms"] is None:
            continue
        compute, delay = w["compute_ms"], w["delay_ms"]
        done = min(len(compute), len(delay))
        if done:
            out[w["slot"]] = k * (sum(compute[:done]) + sum(delay[:done])) / done / 1e3
        elif (w["cancel_ack_ms"] is not None or w["task_done_ms"] is not None) and w["cancel_sent_ms"] is not None:
            out[w["slot"]] = k * max(w["cancel_sent_ms"] - w["task_sent_ms"], 0.0) / 1e3
        else:
            out[w["slot"]] = math.inf
    return out
