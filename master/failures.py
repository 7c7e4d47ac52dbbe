"""Workers that cannot compute the job, and when the job cannot go on because of them.

A worker whose model raises (or returns a wrong shape) reports it in one line (TaskRejected, cause
"model") and ends; one whose loss or gradient is NaN/Inf reports that (cause "non_finite"). The master
treats a worker of the first kind as dead and says so once, at ERROR, naming it; once more than s_max
slots cannot compute, no iteration can decode exactly any more and the job ends (exit 1) with one line
saying why. A NaN/Inf ends the job at once: the training diverged (the trainer says at which iteration
and with which loss).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from flexgc.common import wire
from flexgc.common.errors import TrainingFailedError

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Divergence:
    """A worker computed a NaN/Inf loss or gradient at `iteration`."""

    iteration: int
    worker_id: str
    reason: str


class WorkerFailures:
    """Per slot, the model failure its worker reported; the job's end when they are more than tolerated."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.failed: dict[int, tuple[str, str]] = {}  # slot -> (worker_id, one-line reason)
        self.fatal: TrainingFailedError | None = None
        self.divergence: Divergence | None = None
        self.ended_event = asyncio.Event()            # set once `ended`

    @property
    def ended(self) -> bool:
        """The job cannot go on (too many workers cannot compute it, or the training diverged)."""
        return self.fatal is not None or self.divergence is not None

    def report(self, slot: int, worker_id: str, rejection: wire.TaskRejected, s_max: int) -> None:
        """A worker's TaskRejected with a cause (`wire.TASK_*`); `s_max`: how many slots may be missing."""
        if rejection.cause == wire.TASK_NON_FINITE:
            if self.divergence is None:
                self.divergence = Divergence(rejection.iteration, worker_id, rejection.reason)
                self.ended_event.set()
            return
        again = slot in self.failed
        self.failed[slot] = (worker_id, rejection.reason)
        count = len(self.failed)
        if count > s_max:
            if self.fatal is None:
                self.fatal = TrainingFailedError(
                    f"training failed: {count} of {self.n} workers cannot compute the model (an exact decode can "
                    f"do without at most {s_max}); worker {worker_id} (slot {slot}): {rejection.reason}")
                self.ended_event.set()
            return
        seen = any(reason == rejection.reason for s, (_, reason) in self.failed.items() if s != slot)
        # once per worker and reason at ERROR; the same failure on more workers or again is a WARNING
        _log.log(logging.WARNING if again or seen else logging.ERROR,
                 "worker failed worker_id=%s slot=%d: %s; treated as dead (workers that cannot compute: %d; the code "
                 "tolerates %d)", worker_id, slot, rejection.reason, count, s_max)
