"""The training loop: one iteration at a time, the optimizer step, checkpoints and atomic writes.

The trainer starts an iteration on the coordinator, awaits its outcome (decoded, approximated or failed at
the deadline), applies the job's optimizer (`flexgc.common.optim`: heavy-ball gradient descent, or an
optax optimizer) to the decoded mean gradient, hands the iteration to the run log, and checkpoints every
K iterations (parameters and optimizer state, so a resumed run continues exactly). It never reaches into
the coordinator's state: it asks it to start, to wait, and whether an iteration is settled.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from flexgc.common.codes import Code, removed_slots
from flexgc.common.config import MasterConfig
from flexgc.common.errors import FlexgcError, TrainingDivergedError, TrainingFailedError
from flexgc.common.models import DataSpec, build_model, full_gradient
from flexgc.common.optim import make_optimizer
from flexgc.master.accounting import RunLog
from flexgc.master.adapt import Adapter
from flexgc.master.coordinator import Coordinator, Outcome
from flexgc.master.data import JobData
from flexgc.master.evaluation import Validation
from flexgc.master.hooks import IterationHook, iteration_info
from flexgc.master.metrics import Metrics
from flexgc.master.rundir import write_atomic
from flexgc.master.stragglers import StragglerScores

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
ACK_WAIT_S = 1.0  # after the last iteration, how long its cancel acks may take (for the accounting)
PROGRESS_S = 5.0  # at most one progress line this often (and one per iteration when they are slower)


@dataclass
class TrainState:
    """What a checkpoint holds: parameters, the optimizer (its canonical spec) and its state as arrays
    (`Optimizer.init`: the velocity for gd, optax's flattened state otherwise), the next iteration and RNG
    seeds."""

    params: np.ndarray
    opt_state: tuple[np.ndarray, ...]
    optimizer: str = ""                  # canonical optimizer spec ("" in checkpoints older than optimizers)
    iteration: int = 0
    data_seed: int = 0
    delay_seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        """Write the state to `path` atomically (npz, no pickle; optimizer state as opt_0, opt_1, ...)."""
        arrays = {f"opt_{i}": a for i, a in enumerate(self.opt_state)}
        write_atomic(path, lambda fh: np.savez(fh, params=self.params, optimizer=self.optimizer,
                                               opt_count=len(self.opt_state), iteration=self.iteration,
                                               data_seed=self.data_seed, delay_seed=self.delay_seed,
                                               extra=json.dumps(self.extra), **arrays))  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path) -> TrainState:
        """The state saved at `path` (a checkpoint from before optimizers holds gd's velocity)."""
        with np.load(path, allow_pickle=False) as f:
            if "opt_count" in f:
                opt_state = tuple(f[f"opt_{i}"].copy() for i in range(int(f["opt_count"])))
                optimizer = str(f["optimizer"])
            else:
                opt_state, optimizer = (f["velocity"].copy(),), ""
            return cls(params=f["params"].copy(), opt_state=opt_state, optimizer=optimizer,
                       iteration=int(f["iteration"]), data_seed=int(f["data_seed"]),
                       delay_seed=int(f["delay_seed"]), extra=json.loads(str(f["extra"])))


def _initial_params(spec: DataSpec, seed: int) -> np.ndarray:
    """The model's initial parameters, or TrainingFailedError in one line naming the model (a user model's
    init_params that raises or returns the wrong shape ends the job before it starts)."""
    try:
        params = np.asarray(build_model(spec).init_params(seed), dtype=np.float64)
    except FlexgcError:
        raise
    except Exception as exc:  # the user's code: any exception, said in one line
        raise TrainingFailedError(f"model={spec.model!r}: init_params({seed}) raised {type(exc).__name__}: "
                                  f"{exc}") from None
    if params.shape != (spec.d,) or not np.all(np.isfinite(params)):
        raise TrainingFailedError(f"model={spec.model!r}: init_params({seed}) returned "
                                  f"{'non-finite values' if params.shape == (spec.d,) else f'shape {params.shape}'}; "
                                  f"need ({spec.d},) finite floats (the model's d)")
    return params


class Trainer:
    """Runs one job's iterations on a coordinator, from a checkpoint if there is one."""

    def __init__(self, cfg: MasterConfig, code: Code, data: JobData, coordinator: Coordinator,
                 metrics: Metrics, runlog: RunLog, on_record: Callable[[dict[str, Any]], None] | None = None,
                 adapter: Adapter | None = None, on_iteration: IterationHook | None = None) -> None:
        self.cfg, self.code, self.job_data, self.data = cfg, code, data, data.spec
        self.coordinator = coordinator
        self.metrics = metrics
        self.runlog = runlog
        self.on_record = on_record
        self.adapter = adapter
        self._verify_data: list[tuple[np.ndarray, np.ndarray]] | None = None
        self.out = Path(cfg.out) if cfg.out else None
        self.optimizer = make_optimizer(cfg.optimizer, cfg.lr, cfg.momentum)
        params = _initial_params(self.data, cfg.init_seed)
        self.state = TrainState(params, self.optimizer.init(params), self.optimizer.spec, 0, cfg.data_seed,
                                cfg.delay_seed)
        self.stopped_early = False
        self.on_iteration = on_iteration  # after every step; True stops the job (the Python API's callbacks)
        self.stopped_by_callback = False
        self.validation = Validation(self.data, data.validation) if data.validation is not None else None
        self.last_validation: dict[str, Any] | None = None  # the latest evaluation's figures (the summary's)
        self.outcomes: Counter[str] = Counter()
        self._progress_at = -math.inf
        self.last_loss: float | None = None
        self.stragglers = StragglerScores(code.k, metrics)  # who straggles, by worker id and host
        self._log_error: BaseException | None = None   # from a run-log flush run as a loop callback

    def restore(self) -> None:
        """Continue from OUT/checkpoint.npz when it exists (the run directory is this job's: rundir.py)."""
        if self.out is None:
            return
        path = self.out / "checkpoint.npz"
        if path.exists():
            state = TrainState.load(path)
            if state.params.shape != (self.data.d,):
                _log.warning("checkpoint ignored path=%s reason=shape %s != %s", path, state.params.shape,
                             (self.data.d,))
                return
            fresh = self.optimizer.init(state.params)
            if state.optimizer not in ("", self.optimizer.spec) or len(fresh) != len(state.opt_state) or any(
                    a.shape != b.shape or a.dtype != b.dtype for a, b in zip(fresh, state.opt_state)):
                _log.warning("checkpoint ignored path=%s reason=optimizer %s != %s", path,
                             state.optimizer or "gd (no spec)", self.optimizer.spec)
                return
            state.optimizer = self.optimizer.spec
            self.state = state
            if self.adapter is not None and "adapt" in state.extra:
                self.adapter.restore(state.extra["adapt"])
            _log.info("resumed path=%s iteration=%d", path, state.iteration)

    def checkpoint(self) -> None:
        """Write the training state to OUT/checkpoint.npz atomically (nothing without --out)."""
        if self.out is not None:
            if self.adapter is not None:
                self.state.extra["adapt"] = self.adapter.state()  # the plan in use: a resume runs the same code
            self.out.mkdir(parents=True, exist_ok=True)
            self.state.save(self.out / "checkpoint.npz")

    def _verify(self, gradient: np.ndarray) -> float:
        if self._verify_data is None:
            self._verify_data = [self.job_data.partition(j) for j in range(self.data.partitions)]
        direct = full_gradient(self.data, self.state.params, self._verify_data, self.state.iteration)
        return float(np.linalg.norm(gradient - direct)) / max(float(np.linalg.norm(direct)), 1e-300)

    async def run(self, stop: asyncio.Event) -> None:
        """Train until --iterations, the target loss, or `stop`; every iteration reaches the run log."""
        cfg, c = self.cfg, self.coordinator
        if self.state.iteration >= cfg.iterations:
            _log.warning("the checkpoint in %s is at iteration %d of %d: the job is complete, nothing to run "
                         "(use another --out, or raise --iterations to continue it)", cfg.out,
                         self.state.iteration, cfg.iterations)
            return
        # the slots with work under the plan in use (a resumed elastic plan holds nothing for removed slots)
        holders = c.code.n - len(removed_slots(c.code))
        if self.adapter is not None and self.adapter.policy.elastic:
            # elastic: once an exact decode is possible, wait for the rest at most --replace-after-s (a worker gone
            # for good is removed from the plan that long after the start anyway), and never past the join timeout
            started = time.monotonic()
            joined = await _until(c.members.wait_for_workers(holders - c.code.s_max, cfg.join_timeout_s), stop,
                                  c.failures.ended_event)
            if joined:
                rest = self.adapter.policy.replace_after_s
                if cfg.join_timeout_s:
                    rest = min(rest, cfg.join_timeout_s - (time.monotonic() - started))
                joined = await _until(c.members.wait_for_workers(holders, max(rest, 1e-3)), stop,
                                      c.failures.ended_event)
        else:
            joined = await _until(c.members.wait_for_workers(holders, cfg.join_timeout_s), stop,
                                  c.failures.ended_event)
        if stop.is_set():
            return
        self._check_failures()
        if not joined:
            need = holders - c.code.s_max
            if c.members.joined < need:
                # nothing could decode exactly: end now rather than fail one iteration per --deadline-s
                raise TrainingFailedError(
                    f"only {c.members.joined} of {holders} workers joined within --join-timeout-s="
                    f"{cfg.join_timeout_s:g}; an exact decode needs at least {need} ({c.code.spec} does without "
                    f"at most {c.code.s_max}): are the workers started, and can they reach this master?")
            # a worker that joins later gets the current iteration's task at once (pods scheduled late,
            # restarts); while fewer than n - s_max answer, iterations end at --deadline-s by the policy
            _log.warning("join timeout joined=%d of n=%d after --join-timeout-s=%g (an exact decode needs %d); "
                         "starting with them: iterations wait up to --deadline-s=%g for late workers, then "
                         "--on-deadline %s", c.members.joined, holders, cfg.join_timeout_s, need,
                         cfg.deadline_s, cfg.on_deadline)
        d = self.data.d
        for t in range(self.state.iteration, cfg.iterations):
            if stop.is_set():
                break
            if self.adapter is not None:
                for event in await self.adapter.boundary(t):  # a plan switch happens here, between iterations
                    self.runlog.event(event)
            it = c.start_iteration(t, self.state.params)
            # the previous iterations' records, after this iteration's tasks: call_soon runs in order, so
            # the Work streams that start_iteration woke hand their tasks to gRPC first
            asyncio.get_running_loop().call_soon(self._flush_log, t - 1)
            await _until(asyncio.shield(it.done), stop)
            if self._log_error is not None:
                raise self._log_error  # a run log that cannot be written stops the job, as before
            if not it.done.done():
                break
            outcome = it.done.result()
            loss = None
            verify = None
            if outcome.gradient is not None:
                if cfg.verify:
                    verify = self._verify(outcome.gradient)
                N = self._rows_decoded(t, it.code, outcome)  # rows behind the decoded sums
                grad = np.divide(outcome.gradient[:d], N, dtype=np.float64)  # widened here, not in the decode
                loss = float(outcome.gradient[d]) / N
                params, opt_state = self.optimizer.step(self.state.params, grad, self.state.opt_state)
                if not (math.isfinite(loss) and np.isfinite(grad).all() and np.isfinite(params).all()):
                    # the parameters stay the last finite ones (checkpointed as such)
                    raise TrainingDivergedError(f"training diverged at iteration {t} (loss={loss:.6g}): the loss, "
                                                f"gradient or parameters became NaN or Inf; lower the learning rate")
                self.state.params, self.state.opt_state = params, opt_state
                self.last_loss = loss
                self.metrics.loss.set(loss)
                if outcome.decoding is not None:
                    self.metrics.level_used.labels(level=str(outcome.decoding.level)).inc()
                self.metrics.decode_seconds.observe(outcome.decode_ms / 1e3)
            self.state.iteration = t + 1
            if cfg.snapshot_every and self.out is not None and (t + 1) % cfg.snapshot_every == 0:
                snapshots = self.out / "snapshots"
                snapshots.mkdir(parents=True, exist_ok=True)
                write_atomic(snapshots / f"params-{t + 1:06d}.npy",  # after t + 1 iterations
                             functools.partial(np.save, arr=self.state.params))
            self.metrics.iterations.labels(outcome=outcome.phase.name).inc()
            self.metrics.iteration_latency.observe(outcome.latency_ms / 1e3)
            self.metrics.connected.set(c.members.connected)
            self.runlog.add(it, outcome, loss, verify)
            self._check_failures()
            self._progress(t, outcome, loss)
            evaluated = None
            if self.validation is not None and cfg.eval_every and (t + 1) % cfg.eval_every == 0:
                evaluated = await self._evaluate(t)
            if self.on_iteration is not None and self.on_iteration(
                    iteration_info(it, outcome, loss, cfg.iterations, self.state.params, evaluated)):
                self.stopped_by_callback = True
                _log.info("stopped by a callback iteration=%d", t)
            if cfg.checkpoint_every and (t + 1) % cfg.checkpoint_every == 0:
                # the run log must hold every iteration before the checkpoint, or a resume leaves a gap
                self._emit(self.runlog.flush(self.code, force=True))
                self.checkpoint()
            if cfg.target_loss is not None and loss is not None and loss <= cfg.target_loss:
                self.stopped_early = True
                _log.info("target loss reached iteration=%d loss=%.6g", t, loss)
                break
            if self.stopped_by_callback:
                break
        if self.validation is not None and self.state.iteration and not stop.is_set() and (
                self.last_validation is None or self.last_validation["iteration"] != self.state.iteration - 1):
            await self._evaluate(self.state.iteration - 1)  # the final parameters, once
        # give the last iteration's cancel acks a moment to arrive, for the accounting
        await _until(c.wait_settled(self.state.iteration - 1, ACK_WAIT_S), stop)
        self._emit(self.runlog.flush(self.code, force=True))

    def _rows_decoded(self, t: int, code: Code, outcome: Outcome) -> float:
        """How many rows the decoded sums stand for: every sample (or the k batches) for an exact decode; for a
        least-squares one, the rows of each partition weighted by how much of it the decode holds (a_F^T B_F),
        so that the mean loss and gradient are those of the rows decoded (a partition no received message
        covers counts 0, not as a loss of 0)."""
        dec = outcome.decoding
        if dec is None or dec.exact or not dec.messages:
            return float(self.data.batch_samples(t))
        coverage = np.zeros(code.k)
        for m, w in zip(dec.messages, dec.weights):
            level, slot = code.message_of(m)
            coverage += w * code.B[level, slot]
        rows = float(coverage @ self.data.partition_samples())
        return rows if rows >= 1.0 else float(self.data.batch_samples(t))  # nothing decoded: no mean to take

    def _check_failures(self) -> None:
        """End the job when its workers cannot compute it (failures.py), or computed NaN/Inf."""
        failures = self.coordinator.failures
        if failures.fatal is not None:
            raise failures.fatal
        div = failures.divergence
        if div is not None:
            before = "" if self.last_loss is None else f"; loss={self.last_loss:.6g} at iteration {div.iteration - 1}"
            raise TrainingDivergedError(f"training diverged at iteration {div.iteration} ({div.reason}, computed by "
                                        f"worker {div.worker_id}{before}); lower the learning rate")

    async def _evaluate(self, t: int) -> dict[str, Any]:
        """The validation figures of the parameters after iteration t's step (off the event loop), also
        appended to the run log as an ``eval`` event."""
        assert self.validation is not None
        figures = await asyncio.get_running_loop().run_in_executor(None, self.validation.evaluate,
                                                                   self.state.params)
        self.last_validation = {"iteration": t, **figures}
        self.runlog.event({"event": "eval", **self.last_validation})
        _log.info("evaluated iteration=%d %s", t, " ".join(f"{k}={v:.6g}" for k, v in figures.items()))
        return figures

    def _progress(self, t: int, outcome: Outcome, loss: float | None) -> None:
        """One INFO line per iteration, or per PROGRESS_S when iterations are faster (whichever is rarer)."""
        self.outcomes[outcome.phase.name] += 1
        now = time.monotonic()
        if now - self._progress_at < PROGRESS_S and t + 1 < self.cfg.iterations:
            return
        self._progress_at = now
        dec = outcome.decoding
        code = self.coordinator.code
        stragglers = code.holders - len({code.message_of(m)[1] for m in dec.messages}) if dec else code.holders
        slowest = self.stragglers.slowest()
        who = "" if slowest is None else (f" slowest={slowest.label} slowest_vs_median={slowest.relative:.2f} "
                                           f"window={slowest.samples}")
        # iteration: its number as run.jsonl, the report and every other line count (from 0); done: how many ran
        _log.info("progress iteration=%d done=%d/%d loss=%s latency_ms=%.1f level=%s stragglers=%d exact=%d "
                  "approximate=%d failed=%d%s", t, t + 1, self.cfg.iterations, "-" if loss is None else f"{loss:.6g}",
                  outcome.latency_ms, "-" if dec is None else dec.level, stragglers, self.outcomes["EXACT"],
                  self.outcomes["APPROXIMATE"], self.outcomes["FAILED"], who)

    def _flush_log(self, newest: int) -> None:
        try:
            self._emit(self.runlog.flush(self.code, newest=newest))
        except Exception as exc:
            self._log_error = exc

    def _emit(self, records: list[dict[str, Any]]) -> None:
        for rec in records:
            for w in rec["workers"]:
                for level, ms in enumerate(w["result_arrival_ms"]):
                    if ms is not None and w["task_sent_ms"] is not None:
                        self.metrics.result_latency.labels(slot=str(w["slot"]), level=str(level)).observe(
                            (ms - w["task_sent_ms"]) / 1e3)
                if w["partitions_done"] is not None and w["task_sent_ms"] is not None:
                    left = self.coordinator.code.max_partitions(w["slot"]) - w["partitions_done"]
                    self.metrics.cancelled_partitions.inc(max(0, left))
            self.stragglers.observe(rec)
            if self.adapter is not None:
                self.adapter.observe(rec)
            self.metrics.bytes.labels(direction="up").inc(rec["bytes_up"])
            self.metrics.bytes.labels(direction="down").inc(rec["bytes_down"])
            if self.on_record is not None:
                self.on_record(rec)


async def _until(aw: Awaitable[_T], stop: asyncio.Event, *more: asyncio.Event) -> _T | None:
    """Await `aw` unless `stop` (or one of `more`) is set first; returns aw's result or None."""
    task = asyncio.ensure_future(aw)
    stoppers = [asyncio.ensure_future(event.wait()) for event in (stop, *more)]
    done, _ = await asyncio.wait({task, *stoppers}, return_when=asyncio.FIRST_COMPLETED)
    for stopper in stoppers:
        stopper.cancel()
    if task in done:
        return task.result()
    task.cancel()
    return None


