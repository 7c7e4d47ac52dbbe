"""Time to a target loss: wall-clock seconds from a job's first iteration until its full-batch loss first
reaches a target (`flexgc bench`'s headline column, the report's time-to-target table; docs/report.md).

Definitions, for a run log's records (schema flexgc.run.v1, `flexgc.master.accounting`):

- theta_t are the parameters after t iterations (a FAILED iteration takes no step, so it only costs time).
- A loss counts only where it is the full-batch loss of theta_t: the loss of an EXACT record t (the decoded
  sum over every partition, at theta_t), or an *evaluated* loss, L(theta_t) recomputed on the job's whole
  data from a parameter snapshot (`snapshots/params-<t>.npy`, the master's `--snapshot-every`). An
  APPROXIMATE record's loss is an estimate from the partitions it decoded (ignore:s rescales n - s of
  them): it is drawn, never counted. So an approximate scheme is charged for the steps it took on
  approximate gradients: it reaches a target later, or never, and without snapshots it never does.
- theta_t exists once iteration t - 1 has decoded: its instant is that decode's, started_ms + latency_ms on
  the master's monotonic clock, in seconds since the first iteration started (theta_0: 0). A FAILED
  iteration ends at its deadline, so its wall time counts; so do the gaps between iterations. A resumed
  master restarts its clock: the next record then starts where the previous one ended (the downtime is
  left out). Records without started_ms (older masters) fall back to the sum of the latencies before them.
- Time to target: the earliest instant of a counted loss <= target; "never" when no counted loss gets there.
- The default target (`default_target`): TARGET_FRACTION = 90% of the way from the initial loss to the lowest
  counted loss of the runs compared, taking only runs without an approximate iteration when there are
  any. Exact runs of the same job follow one trajectory (the same exact gradients), so they all get there
  unless failed iterations held them back, and a fraction short of 100% keeps float rounding from turning
  an exact run's last iteration into "never".
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

_log = logging.getLogger(__name__)

TARGET_FRACTION = 0.9
SNAPSHOT_DIR = "snapshots"
_SNAPSHOT = re.compile(r"params-(\d+)\.npy")

Source = Literal["exact", "estimate", "evaluated"]
COUNTED: tuple[Source, ...] = ("exact", "evaluated")


@dataclass(frozen=True, slots=True)
class LossPoint:
    """The loss of theta_t (`steps` = t) and the wall-clock instant theta_t existed (s since the first iteration)."""

    steps: int
    time_s: float
    loss: float
    source: Source  # exact: an EXACT record's; estimate: an APPROXIMATE record's; evaluated: from a snapshot

    @property
    def counted(self) -> bool:
        return self.source in COUNTED


@dataclass(frozen=True, slots=True)
class TimeToTarget:
    """When a run first reached the target (None: never), and what it did reach."""

    target: float
    seconds: float | None
    steps: int | None           # t of the first theta_t at or below the target
    run_s: float                # the run's wall-clock length: its last decode (or deadline)
    best: float | None          # the lowest counted loss
    note: str = ""              # why never, or what the clock was

    @property
    def reached(self) -> bool:
        return self.seconds is not None

    def cell(self) -> str:
        """The table's text: seconds, or 'never'."""
        return "never" if self.seconds is None else f"{self.seconds:.2f}"

    def as_dict(self) -> dict[str, Any]:
        return {"target_loss": self.target, "time_to_target_s": _round(self.seconds),
                "target_iterations": self.steps, "run_s": _round(self.run_s),
                "best_full_batch_loss": self.best, "time_to_target_note": self.note}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def decode_instants_s(records: Sequence[Mapping[str, Any]]) -> tuple[list[float], bool]:
    """Per record, the instant its iteration ended (decode, or deadline when FAILED), in seconds since the
    first iteration started; and whether every instant came from the master's clock (started_ms) rather
    than the fallback sum of latencies."""
    ends: list[float] = []
    origin: float | None = None
    offset = 0.0
    prev_end = 0.0
    clock = True
    for rec in records:
        latency_s = float(rec.get("latency_ms") or 0.0) / 1e3
        started = rec.get("started_ms")
        if started is None:
            clock = False
            start = prev_end
        else:
            started_s = float(started) / 1e3
            if origin is None:
                origin = started_s
            start = started_s - origin + offset
            if start < prev_end - 1e-6:  # a resumed master's clock starts again: chain on
                offset += prev_end - start
                start = prev_end
        prev_end = start + latency_s
        ends.append(prev_end)
    return ends, clock


def loss_points(records: Sequence[Mapping[str, Any]], evaluated: Mapping[int, float] | None = None,
                full_batch: bool = True) -> list[LossPoint]:
    """Every loss of the run's parameters with its instant, ordered by steps (an evaluated loss replaces
    the record's for the same theta_t). `full_batch`: the job computed every row each iteration (batch_size
    0); with mini-batches even an EXACT record's loss is the batch's, an estimate."""
    if not records:
        return []
    ends, _ = decode_instants_s(records)
    iterations = [int(r["iteration"]) for r in records]
    first, last = iterations[0], iterations[-1]

    def instant(t: int) -> float:  # theta_t exists once the newest iteration before t has ended
        j = bisect.bisect_left(iterations, t)
        return ends[j - 1] if j > 0 else 0.0

    points: dict[int, LossPoint] = {}
    for t, rec in zip(iterations, records):
        loss = rec.get("loss")
        if loss is None or not math.isfinite(float(loss)):
            continue
        source: Source = "exact" if rec["outcome"] == "EXACT" and full_batch else "estimate"
        points[t] = LossPoint(t, instant(t), float(loss), source)
    for t, loss in (evaluated or {}).items():
        if first <= t <= last + 1 and math.isfinite(loss):
            points[t] = LossPoint(t, instant(t), float(loss), "evaluated")
    return [points[t] for t in sorted(points)]


def time_to_target(records: Sequence[Mapping[str, Any]], target: float,
                   evaluated: Mapping[int, float] | None = None, full_batch: bool = True) -> TimeToTarget:
    """When the run's full-batch loss first reached `target` (see the module docstring)."""
    points = loss_points(records, evaluated, full_batch)
    ends, clock = decode_instants_s(records)
    run_s = ends[-1] if ends else 0.0
    counted = [p for p in points if p.counted]
    best = min((p.loss for p in counted), default=None)
    note = "" if clock else "no started_ms in the run log: time is the sum of the latencies (gaps left out)"
    hit = next((p for p in counted if p.loss <= target), None)
    if hit is not None:
        return TimeToTarget(target, hit.time_s, hit.steps, run_s, best, note)
    if not counted:
        why = ("no full-batch loss: no exact iteration and no parameter snapshot to evaluate" if records
               else "no iterations")
    else:
        why = f"the lowest full-batch loss was {best:.6g} > target {target:.6g}"
    return TimeToTarget(target, None, None, run_s, best, "; ".join(x for x in (why, note) if x))


def default_target(curves: Sequence[tuple[Sequence[LossPoint], bool]],
                   fraction: float = TARGET_FRACTION) -> float | None:
    """The default target of a comparison: `fraction` of the way from the initial loss to the lowest counted
    loss, on the curve (points, approximate: whether the run had an approximate iteration) reaching the
    lowest, preferring runs without approximate iterations. None when no run has a counted loss."""
    counted = [[p for p in points if p.counted] for points, _ in curves]
    pool = [j for j, (c, (_, approx)) in enumerate(zip(counted, curves)) if c and not approx] or \
        [j for j, c in enumerate(counted) if c]
    if not pool:
        return None
    best = min(pool, key=lambda j: min(p.loss for p in counted[j]))
    low = min(p.loss for p in counted[best])
    # the initial loss: the reference's own theta_0 when counted, else any run's (the same initial
    # parameters), else the reference's estimate of it
    first = curves[best][0][0]
    initial = [p.loss for c in [counted[best], *counted] for p in c if p.steps == first.steps]
    start = initial[0] if initial else first.loss
    return start - fraction * (start - low) if start > low else low


class SnapshotLosses:
    """L(theta_t) on the job's whole data for every parameter snapshot of a run directory
    (`snapshots/params-<t>.npy`: theta after t iterations), each file evaluated once.

    The job's data and model come from job.json (the identity the master wrote) and the partition count
    of its first code (summary.json's, which an adaptive run splits). Anything that cannot be rebuilt here
    (a dataset file that is gone, a model whose extra is not installed) leaves `note` saying why and no
    evaluated losses. Snapshots are evaluated once the job has ended (summary.json names the code whose
    partitions the data was split into)."""

    def __init__(self, run_dir: Path | str) -> None:
        self.path = Path(run_dir)
        self.losses: dict[int, float] = {}
        self.note = ""
        self._evaluate: Any = None
        self._failed = False

    def update(self) -> dict[int, float]:
        """Evaluate the snapshots not seen yet; the losses by t."""
        folder = self.path / SNAPSHOT_DIR
        if self._failed or not folder.is_dir() or not (self.path / "summary.json").exists():
            return self.losses
        new = []
        for p in folder.iterdir():
            m = _SNAPSHOT.fullmatch(p.name)
            if m and int(m.group(1)) not in self.losses:
                new.append((int(m.group(1)), p))
        if not new:
            return self.losses
        try:
            if self._evaluate is None:
                self._evaluate = self._loss_function()
            for t, p in sorted(new):
                self.losses[t] = float(self._evaluate(np.load(p, allow_pickle=False)))
        except Exception as exc:  # a report is still worth drawing without them: say why
            self._failed = True
            self.note = f"snapshots not evaluated: {type(exc).__name__}: {exc}"
            _log.warning("snapshot losses run=%s %s", self.path, self.note)
        return self.losses

    def _loss_function(self) -> Any:
        from flexgc.common.codes import parse_code
        from flexgc.common.config import master_config
        from flexgc.common.models import full_gradient
        from flexgc.master.data import JobData
        from flexgc.master.rundir import IDENTITY_FIELDS

        job = json.loads((self.path / "job.json").read_text())
        cfg = master_config(**{k: job[k] for k in IDENTITY_FIELDS if k in job})
        first_code = str(json.loads((self.path / "summary.json").read_text())["code"])
        job_data = JobData.from_config(cfg, parse_code(first_code, cfg.workers))
        spec = dataclasses.replace(job_data.spec, batch=0)  # the full batch, whatever the job's batches were
        partitions = [job_data.partition(j) for j in range(spec.partitions)]

        def loss(params: np.ndarray) -> float:
            return float(full_gradient(spec, params, partitions)[spec.d]) / spec.samples

        return loss


def rank_key(approximate: bool, seconds: float | None, mean_ms: float | None = None) -> tuple[bool, float, float]:
    """How schemes are ranked: those without an approximate iteration first, then by time to target ("never"
    after every time), then by mean latency."""
    return (approximate, math.inf if seconds is None else seconds,
            math.inf if mean_ms is None or not math.isfinite(mean_ms) else mean_ms)
