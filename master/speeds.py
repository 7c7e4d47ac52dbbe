"""Per-worker speed estimates from what the master measures anyway (docs/design.md §2.10).

Every settled iteration's run-log record tells, per slot, how long each partition the worker computed took (the worker's
measured compute plus the delay it served, reported with its results and its CancelAck). Their mean,
times k, is the slot's **per-unit time** in that iteration: the seconds it would need for the whole
dataset (model A: a fraction x takes x times that). A slot cancelled before its first partition finished
gives a lower bound (its time for one partition exceeds the time it was given); a slot that never
answered gives inf.

`SpeedTracker` keeps the per-unit times of the last `window` iterations per slot and two estimates of each:

* **chronic**: the median of its last `chronic_window` finite times: a persistent speed (a slow machine,
  a slow half of the cluster), which one-off stalls do not move;
* **recent**: an exponentially weighted mean of the log time (weight `fast_alpha`): transient slowness.

A slot whose worker changes (another worker id took it) starts its history anew: the estimates belong to a
worker, not to a slot. The planner (common/planner.py) reads `matrix()`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

CHRONIC_WINDOW = 8
FAST_ALPHA = 0.5


class SpeedTracker:
    """Rolling per-unit times per slot (a ``(window, n)`` ring of iterations; nan: no measurement, inf: no
    answer), and chronic and recent speed estimates from them. Vectorized: the master updates it once per
    iteration and reads it once per check."""

    def __init__(self, n: int, window: int = 30, chronic_window: int = CHRONIC_WINDOW,
                 fast_alpha: float = FAST_ALPHA) -> None:
        self.n = n
        self.window = window
        self.chronic_window = chronic_window
        self.fast_alpha = fast_alpha
        self._ring = np.full((window, n), math.nan)
        self._log_recent = np.full(n, math.nan)
        self._worker_ids = [""] * n
        self._hosts = [""] * n
        self._chronic: np.ndarray | None = None   # cached until the next observation
        self.observed = 0               # iterations observed

    def observe(self, per_unit_s: dict[int, float], worker_ids: dict[int, str],
                hosts: dict[int, str] | None = None) -> None:
        """One iteration's per-unit seconds per slot that was sent the task (inf: never answered), with who held
        each slot then (its worker id, and its host when known)."""
        self._chronic = None
        row = np.full(self.n, math.nan)
        for slot, host in (hosts or {}).items():
            self._hosts[slot] = host
        for slot, value in per_unit_s.items():
            wid = worker_ids.get(slot, self._worker_ids[slot])
            if wid != self._worker_ids[slot]:  # another worker holds the slot: its history starts anew
                self._worker_ids[slot] = wid
                self._ring[:, slot] = math.nan
                self._log_recent[slot] = math.nan
            row[slot] = value
        self._ring[self.observed % self.window] = row
        self.observed += 1
        ok = np.isfinite(row) & (row > 0)
        x = np.log(np.where(ok, row, 1.0))
        fresh = ok & np.isnan(self._log_recent)
        self._log_recent = np.where(fresh, x, self._log_recent)
        upd = ok & ~fresh
        self._log_recent[upd] = (1 - self.fast_alpha) * self._log_recent[upd] + self.fast_alpha * x[upd]

    def _rows(self, count: int | None = None) -> np.ndarray:
        """The last `count` observed rows (default: all kept), oldest first."""
        kept = min(self.observed, self.window)
        count = kept if count is None else min(count, kept)
        idx = (np.arange(self.observed - count, self.observed)) % self.window
        return self._ring[idx]

    def samples(self, slot: int) -> int:
        """How many measurements (finite or not) slot `slot` has in its window."""
        return int(np.sum(~np.isnan(self._rows()[:, slot])))

    def chronic(self) -> np.ndarray:
        """``(n,)`` chronic per-unit seconds: the median of the finite times among the last chronic_window
        iterations (nan: none)."""
        if self._chronic is not None:
            return self._chronic.copy()
        rows = self._rows(self.chronic_window)
        finite = np.where(np.isfinite(rows), rows, np.nan)
        out = np.full(self.n, math.nan)
        known = ~np.all(np.isnan(finite), axis=0)
        if known.any():
            out[known] = np.nanmedian(finite[:, known], axis=0)
        self._chronic = out
        return out.copy()

    def recent(self) -> np.ndarray:
        """``(n,)`` recent per-unit seconds (EWMA of the log; nan: none)."""
        return np.exp(self._log_recent)

    def matrix(self, rows: int | None = None) -> np.ndarray:
        """``(W, n)`` the last W iterations' per-unit times (at most `rows`); an iteration in which a slot was not
        measured (it was not sent the task, or its history started later) holds that slot's median."""
        out = self._rows(rows).copy()
        finite = np.where(np.isfinite(out), out, np.nan)
        known = ~np.all(np.isnan(finite), axis=0)
        med = np.full(self.n, math.inf)
        if known.any() and len(out):
            med[known] = np.nanmedian(finite[:, known], axis=0)
        gaps = np.isnan(out)
        out[gaps] = np.broadcast_to(med, out.shape)[gaps]
        return out

    def snapshot(self) -> list[dict[str, Any]]:
        """Per slot: worker id, host, chronic and recent per-unit seconds, samples (for the run log and metrics)."""
        chronic, recent = self.chronic(), self.recent()
        counts = np.sum(~np.isnan(self._rows()), axis=0)
        return [{"slot": i, "worker_id": self._worker_ids[i], "host": self._hosts[i] or None, "samples": int(counts[i]),
                 "chronic_s": None if math.isnan(chronic[i]) else round(float(chronic[i]), 6),
                 "recent_s": None if math.isnan(recent[i]) else round(float(recent[i]), 6)}
                for i in range(self.n)]


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
