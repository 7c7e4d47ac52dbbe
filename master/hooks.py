"""What the master tells user code after every iteration (the Python API's callbacks, the TensorBoard
writer): an `IterationInfo` built right after the optimizer step, so a callback sees the iteration as it
ended and can ask for the new parameters or stop the job before the next iteration starts.

The run-log record (`accounting.iteration_record`) is written later, once the iteration's cancel acks
have arrived; an `IterationInfo` is the same iteration seen at its decode: its load counts the
partitions whose results the master had received by then (the record's load, counted at the cancel
ack, can be higher).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flexgc.master.coordinator import Iteration, Outcome

IterationHook = Callable[["IterationInfo"], bool | None]  # True: stop the job after this iteration


@dataclass(frozen=True)
class IterationInfo:
    """One finished iteration, as a callback sees it.

    iteration: its number t (0-based); iterations: the job's --iterations; outcome: EXACT, APPROXIMATE or
    FAILED; loss: the mean training loss at the parameters the iteration started from (None if FAILED);
    latency_ms: task first sent -> gradient decoded; level: the highest level the decode used (None if
    FAILED); stragglers: slots with work none of whose rows the decode used; load: per slot, the fraction of the
    data whose results had arrived by the decode (0 for a slot that got no task); validation: the
    validation figures (`val_loss`, `val_accuracy` when the model classifies) when this iteration was
    evaluated (--eval-every), else None.
    """

    iteration: int
    iterations: int
    outcome: str
    loss: float | None
    latency_ms: float
    level: int | None
    stragglers: tuple[int, ...]
    load: tuple[float, ...]
    validation: dict[str, Any] | None = None
    _params: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)

    @property
    def n(self) -> int:
        """Worker slots."""
        return len(self.load)

    def params(self) -> np.ndarray:
        """A copy of the parameters after this iteration's step, (d,) float64."""
        return self._params.copy()


def iteration_info(it: Iteration, outcome: Outcome, loss: float | None, iterations: int, params: np.ndarray,
                   validation: dict[str, Any] | None = None) -> IterationInfo:
    """The info of an iteration just decoded (or failed), under the plan it ran with."""
    code = it.code
    dec = outcome.decoding
    used = {code.message_of(m)[1] for m in dec.messages} if dec is not None else set()
    load = tuple(code.load(len(it.timing[slot].compute_ms)) if slot in it.sent else 0.0 for slot in range(code.n))
    return IterationInfo(it.number, iterations, outcome.phase.name, loss, float(outcome.latency_ms),
                         dec.level if dec is not None else None,
                         tuple(i for i in range(code.n) if code.order[i] and i not in used), load, validation, params)
