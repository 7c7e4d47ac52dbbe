"""Partial-gradient compute for one task, run in a one-thread executor off the event loop (docs/style.md §7).

The worker computes its partitions in the assigned order (i, i+1, ..., i+s_max). Before each
partition it serves the injected delay as an interruptible wait on the cancel event; the gradient
itself is computed in row chunks with the cancel event checked between chunks, so a Cancel is obeyed
within one compute chunk and stale work is never finished. After the m-th partition it emits the
coded message of every level whose prefix is m.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from flexgc.common import wire

_log = logging.getLogger(__name__)


@dataclass
class TaskRun:
    """One iteration's work on one worker."""

    iteration: int
    params: np.ndarray                        # (d,) float64
    max_levels: int
    durations_s: np.ndarray                   # injected delay per partition, in order (inf: unresponsive)
    cancel: threading.Event = field(default_factory=threading.Event)
    partitions_done: int = 0
    times: wire.PartitionTimes = field(default_factory=wire.PartitionTimes)
    vectors: dict[int, np.ndarray] = field(default_factory=dict)   # level -> coded vector (notify)
    finished: bool = False


class PartitionCompute:
    """Holds a slot's data and its code rows; computes coded messages for tasks."""

    def __init__(self, slot_code: wire.SlotCode, model: str, classes: int,
                 data: dict[int, tuple[np.ndarray, np.ndarray]], vector_len: int, wire_dtype: np.dtype,
                 rows_per_chunk: int = 4096) -> None:
        self.slot_code = slot_code
        self.model = model
        self.classes = classes
        self.data = data
        self.vector_len = vector_len                # a coded vector: gradient length d + 1 (trailing loss)
        self.wire_dtype = wire_dtype
        self.rows_per_chunk = rows_per_chunk
        self.partials = np.zeros((len(slot_code.partitions), vector_len))

    def run(self, task: TaskRun, emit: Callable[[int, np.ndarray], None]) -> None:
        """Compute until done or cancelled; `emit(level, vector)` is called from this thread."""
        from flexgc.common.models import partial_gradient

        sc = self.slot_code
        last_prefix = sc.level_prefix[task.max_levels - 1]
        for m, j in enumerate(sc.partitions[:last_prefix], start=1):
            delay = float(task.durations_s[m - 1])
            t0 = time.perf_counter()
            if task.cancel.wait(None if math.isinf(delay) else delay):
                return
            waited_ms = (time.perf_counter() - t0) * 1e3
            X, y = self.data[j]
            t1 = time.perf_counter()
            ok = partial_gradient(self.model, task.params, X, y, self.classes, self.partials[m - 1],
                                  self.rows_per_chunk, task.cancel.is_set)
            if not ok:
                return
            task.times.compute_ms.append((time.perf_counter() - t1) * 1e3)
            task.times.delay_ms.append(waited_ms)
            task.partitions_done = m
            for level in sc.levels_completed_by(m):
                if level >= task.max_levels or task.cancel.is_set():
                    continue
                coded = sc.coefficients[level, :m] @ self.partials[:m]
                emit(level, coded.astype(self.wire_dtype, copy=False))
        task.finished = True
