"""Partial-gradient compute for one task, run in a one-thread executor off the event loop (docs/style.md §7).

The worker computes its partitions in the assigned order (i, i+1, ..., i+s_max). Before each
partition it serves the injected delay as an interruptible wait on the cancel event; the gradient
itself is computed in row chunks with the cancel event checked between chunks, so a Cancel is obeyed
within one compute chunk and stale work is never finished. After the m-th partition it emits the
coded message of every level whose prefix is m.

The model is whatever the job's DataSpec names (`flexgc.common.models.build_model`); this loop only
calls its ``loss_and_grad`` on a partition's rows, or on the rows of the iteration's mini-batch
(`batch_rows`). A model whose gradient cannot be split into row chunks (a jitted JAX gradient) is one
chunk per partition, so a Cancel then waits for at most one partition's gradient. `warm_up` compiles
such a model for every input shape of the slot before the first task.
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
from flexgc.common.models import DataSpec, Model, batch_rows, build_model, partial_gradient, row_chunks

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
    failure: tuple[str, str] | None = None    # (wire.TASK_* cause, one-line reason): the task cannot be computed


def model_failure(model: str, exc: BaseException) -> str:
    """One line naming the model, the exception type and its message (never a traceback)."""
    text = " ".join(str(exc).split())
    return f"model {model}: {type(exc).__name__}{': ' + text[:200] if text else ''}"


class PartitionCompute:
    """Holds a slot's data and its code rows; computes coded messages for tasks."""

    def __init__(self, slot_code: wire.SlotCode, spec: DataSpec, data: dict[int, tuple[np.ndarray, np.ndarray]],
                 wire_dtype: np.dtype, rows_per_chunk: int = 4096, model: Model | None = None) -> None:
        self.slot_code = slot_code
        self.spec = spec
        self.model = model if model is not None else build_model(spec)
        self.data = data
        self.vector_len = self.model.d + 1          # a coded vector: gradient length d + 1 (trailing loss)
        self.wire_dtype = wire_dtype
        self.rows_per_chunk = rows_per_chunk
        self.partials = np.zeros((len(slot_code.partitions), self.vector_len))

    def use(self, slot_code: wire.SlotCode) -> None:
        """Compute under another plan's rows from the next task on (an adaptive re-plan, docs/design.md §2.10).
        Its partitions must be loaded into `data` first. A run still returning keeps the rows and the partial
        buffer it started with (`run` reads both once), so this is safe between tasks."""
        missing = [j for j in slot_code.partitions if j not in self.data]
        if missing:
            raise ValueError(f"plan needs partitions {missing[:5]} that are not loaded")
        self.slot_code = slot_code
        if len(slot_code.partitions) != len(self.partials):
            self.partials = np.zeros((len(slot_code.partitions), self.vector_len))

    def rows(self, j: int, iteration: int) -> tuple[np.ndarray, np.ndarray]:
        """Partition j's rows X (m, features), y (m,) in iteration t: all of them, or its mini-batch."""
        X, y = self.data[j]
        picked = batch_rows(self.spec, j, iteration)
        return (X, y) if picked is None else (X[picked], y[picked])

    def warm_up(self) -> float:
        """Compile a one-chunk (jitted) model for every input shape of this slot; seconds it took. A model
        that fails here raises (the caller reports it like a failed task: `model_failure`)."""
        if row_chunks(self.model):
            return 0.0
        t0 = time.perf_counter()
        w = np.zeros(self.model.d)
        out = np.empty(self.vector_len)
        shapes = {self.rows(j, 0)[0].shape: j for j in self.slot_code.partitions}
        for j in shapes.values():
            partial_gradient(self.model, w, *self.rows(j, 0), out)  # checks the shapes it returns, too
        return time.perf_counter() - t0

    def run(self, task: TaskRun, emit: Callable[[int, np.ndarray], None]) -> None:
        """Compute until done or cancelled; `emit(level, vector)` is called from this thread. A NaN/Inf is
        reported as the task's failure, not as numpy's overflow warning."""
        with np.errstate(over="ignore", invalid="ignore"):
            self._run(task, emit)

    def _run(self, task: TaskRun, emit: Callable[[int, np.ndarray], None]) -> None:
        sc, partials = self.slot_code, self.partials  # read once: `use` may swap them for the next task
        last_prefix = sc.level_prefix[task.max_levels - 1]
        for m, j in enumerate(sc.partitions[:last_prefix], start=1):
            delay = float(task.durations_s[m - 1])
            if delay > 0:
                t0 = time.perf_counter()
                if task.cancel.wait(None if math.isinf(delay) else delay):
                    return
                waited_ms = (time.perf_counter() - t0) * 1e3
            elif task.cancel.is_set():
                return
            else:
                waited_ms = 0.0  # none injected: what a wait(0) measures is scheduling, not a delay
            X, y = self.rows(j, task.iteration)
            t1 = time.perf_counter()
            try:
                ok = partial_gradient(self.model, task.params, X, y, partials[m - 1], self.rows_per_chunk,
                                      task.cancel.is_set)
            except Exception as exc:  # the model's code: reported in one line, the task ends here
                task.failure = (wire.TASK_MODEL_FAILED, model_failure(self.spec.model, exc))
                return
            if not ok:
                return
            task.times.compute_ms.append((time.perf_counter() - t1) * 1e3)
            task.times.delay_ms.append(waited_ms)
            task.partitions_done = m
            for level in sc.levels_completed_by(m):
                if level >= task.max_levels or task.cancel.is_set():
                    continue
                coded = sc.coefficients[level, :m] @ partials[:m]
                vector = coded.astype(self.wire_dtype, copy=False)
                if not np.isfinite(vector).all():  # the master would refuse it: say why instead
                    task.failure = (wire.TASK_NON_FINITE, f"loss={vector[-1]:.6g}, a NaN or Inf in the loss or "
                                    f"gradient of partition {j}")
                    return
                emit(level, vector)
        task.finished = True
