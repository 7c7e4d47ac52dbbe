"""The worker process: a gRPC client that joins, pulls tasks, streams coded results and obeys Cancel.

    flexgc worker --master HOST:PORT

Lifecycle of one connection: Join -> Work stream (hello) -> Ready -> Task (+ params, inline when they fit
one chunk) -> compute (results stream out as levels complete) -> either Cancel -> CancelAck (which
doubles as the next Ready), or, under push signaling once every level is sent, the last chunk flagged
task_done (the worker is idle; the master sends it no Cancel) -> Task ... -> Shutdown. If the master goes
away the worker cancels its work and reconnects with exponential backoff, asking for its slot back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import enum
import logging
import math
import os
import random
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from threadpoolctl import threadpool_limits

from flexgc import __version__
from flexgc.common import transport, wire
from flexgc.common.config import WorkerConfig
from flexgc.common.delays import parse_delay, realize
from flexgc.common.errors import ConfigError, InvalidTransitionError, WireError
from flexgc.common.models import build_model, check_model_allowed, synthetic_partition
from flexgc.v1 import coordinator_pb2 as pb
from flexgc.v1 import coordinator_pb2_grpc as pb_grpc
from flexgc.worker.compute import PartitionCompute, TaskRun, model_failure

_log = logging.getLogger(__name__)

INLINE_COMPUTE_MS = 0.5  # a task expected to compute in less runs on the event loop (no thread hop)

# status codes after which reconnecting cannot help
_FATAL = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
          grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED}


class WorkerState(enum.Enum):
    """Lifecycle of the worker's current task on one stream."""

    IDLE = 1
    RECEIVING = 2   # task header seen, parameters arriving
    WORKING = 3
    CANCELLING = 4


_MOVES = {("IDLE", "RECEIVING"), ("RECEIVING", "WORKING"), ("RECEIVING", "IDLE"), ("WORKING", "CANCELLING"),
          ("CANCELLING", "IDLE"), ("WORKING", "IDLE")}


class SessionEnd(enum.Enum):
    """Why a Work stream ended."""

    SHUTDOWN = 1        # the master ended the job
    DISCONNECTED = 2    # stream broke: reconnect
    FATAL = 3
    MODEL_FAILED = 4    # the model cannot be computed here (reported to the master): exit 1


@dataclass(frozen=True, slots=True)
class _Outgoing:
    """A message in the writer's queue, with what the writer must know of it without reading it."""

    message: pb.WorkerMessage
    iteration: int = -1        # >= 0: work of that iteration, dropped once it is cancelled
    task_done: bool = False    # the task's last chunk: the worker is idle once it goes out


class Session:
    """One joined connection's Work stream."""

    def __init__(self, cfg: WorkerConfig, grant: wire.JoinGrant, job: wire.JobInfo, stub: pb_grpc.CoordinatorStub,
                 compute: PartitionCompute, executor: concurrent.futures.Executor, instance_id: str = "",
                 delayed_executor: concurrent.futures.Executor | None = None,
                 model_failure: str | None = None) -> None:
        self.cfg = cfg
        # the model failed (before the first task, or in one): reported to the master, then the stream ends
        self.model_failure = model_failure
        self.instance_id = instance_id
        self.grant = grant
        self.job = job
        self.slot = grant.slot
        self.stub = stub
        self.compute = compute
        self.executor = executor
        # tasks with an injected delay: the delay is served in the computing thread (an interruptible wait),
        # so slots sharing a process must not queue behind each other's delays (each slot is its own worker)
        self.delayed_executor = delayed_executor or executor
        self.delay = parse_delay(cfg.delay if cfg.delay is not None else job.delay_spec or "none")
        self.outbox: asyncio.Queue[_Outgoing | None] = asyncio.Queue()
        self.state = WorkerState.IDLE
        self.task: TaskRun | None = None
        self.task_future: asyncio.Future[None] | None = None
        self._compute_tail: asyncio.Future[None] | None = None  # the newest compute submitted (maybe returning)
        self._compute_ms = math.inf  # moving average of a whole task's compute time (first task: off the loop)
        self.last_iteration = -1
        self._params: np.ndarray | None = None
        self._params_filled = 0
        self._header: wire.TaskHeader | None = None
        self._rejected_iteration: int | None = None
        self._arriving = -1               # iteration of the task message being handled (for a rejection)
        self._cancelled_through = -1      # results of iterations up to this one are not sent any more
        self.plan = grant.plan            # the plan (code) `compute` uses now (docs/design.md §2.10)
        self.plans: dict[int, wire.SlotCode] = {grant.plan: grant.slot_code}
        self._preparing: dict[int, asyncio.Task[None]] = {}
        self._closing = False             # the writer half-closes the stream after the last message queued
        self._announced: dict[int, wire.SlotCode] = {}  # plans announced and not yet used: loaded on a task if need be

    def advance(self, to: WorkerState) -> None:
        """Move to `to`, or raise InvalidTransitionError if the table does not allow it."""
        if (self.state.name, to.name) not in _MOVES:
            raise InvalidTransitionError(f"worker slot={self.slot} {self.state.name}->{to.name}")
        self.state = to

    async def run(self) -> SessionEnd:
        """Work on this stream until the master's Shutdown, a broken stream or a fatal status."""
        call = self.stub.Work(metadata=wire.token_metadata(self.cfg.token))
        writer = asyncio.create_task(self._write(call))
        beat = asyncio.create_task(self._heartbeat())
        try:
            await call.write(wire.worker_message(wire.Hello(self.slot, self.grant.session_id, self.cfg.identity,
                                                            self.instance_id)))
            if self.model_failure is not None:  # warming the model up failed: say so, and end
                self._end_with(wire.TaskRejected(-1, self.model_failure, wire.TASK_MODEL_FAILED))
            else:
                self._send(wire.Ready(self.last_iteration))
            while True:
                msg = await call.read()
                if msg is grpc.aio.EOF:
                    return SessionEnd.MODEL_FAILED if self.model_failure else SessionEnd.DISCONNECTED
                try:
                    event = wire.master_event(msg, self.job.k)
                    if isinstance(event, wire.Shutdown):
                        _log.info("shutdown slot=%d reason=%s", self.slot, event.reason)
                        # a worker whose model failed ends as failed, whichever reached it first: its own end
                        # or the master's (which may end the job on this very failure)
                        return SessionEnd.MODEL_FAILED if self.model_failure else SessionEnd.SHUTDOWN
                    await self._handle(event)
                except WireError as exc:
                    self._reject(exc)
        except grpc.aio.AioRpcError as exc:
            if self.model_failure is not None:
                return SessionEnd.MODEL_FAILED  # reported; how the master ended the stream does not matter
            if wire.error_kind(exc) == "JobFinishedError":  # joined just before the end: like a Shutdown
                _log.info("job already finished slot=%d", self.slot)
                return SessionEnd.SHUTDOWN
            _log.warning("stream ended slot=%d code=%s details=%s", self.slot, exc.code().name, exc.details())
            return SessionEnd.FATAL if exc.code() in _FATAL else SessionEnd.DISCONNECTED
        finally:
            if self.task is not None:
                self.task.cancel.set()
            beat.cancel()
            writer.cancel()
            call.cancel()

    def _reject(self, exc: WireError) -> None:
        """A malformed task: reject it clearly, drop the rest of it, stay connected, ask for the next one."""
        iteration = self._header.iteration if self._header is not None else self._arriving
        _log.warning("task rejected slot=%d iteration=%d error=%s", self.slot, iteration, exc)
        self._reset_task()
        self._send(wire.TaskRejected(iteration, str(exc)))
        if self.state is WorkerState.IDLE and iteration >= 0:
            self._rejected_iteration = iteration
            self.last_iteration = max(self.last_iteration, iteration)
            self._send(wire.Ready(self.last_iteration))

    def _reset_task(self) -> None:
        self._header = None
        self._params = None
        self._params_filled = 0
        if self.state is WorkerState.RECEIVING:
            self.advance(WorkerState.IDLE)

    async def _handle(self, event: wire.MasterEvent) -> None:
        self._arriving = -1
        if isinstance(event, pb.Task):
            self._arriving = event.iteration
            if self.state is not WorkerState.IDLE:
                raise WireError(f"task {event.iteration} while {self.state.name} on iteration "
                                f"{self.task.iteration if self.task else '?'}")
            if event.plan != self.plan:
                await self._switch(event.plan)
            self._header = wire.task_header(event, self.compute.vector_len - 1,
                                            len(self.compute.slot_code.level_prefix))
            self._params = np.empty(self._header.total_elements, dtype=wire.numpy_dtype(self._header.dtype))
            self._params_filled = 0
            self.advance(WorkerState.RECEIVING)
            if event.params_inline:
                self._params_filled = wire.accept_inline_params(self._params, event)
                self._start()
        elif isinstance(event, pb.ParamsChunk):
            self._arriving = event.iteration
            if self.state is WorkerState.IDLE and event.iteration == self._rejected_iteration:
                return  # the rest of a task already rejected
            if self.state is not WorkerState.RECEIVING or self._header is None or self._params is None:
                raise WireError("params chunk without a task header")
            self._params_filled = wire.accept_params_chunk(self._params, self._params_filled, event,
                                                           self._header.iteration)
            if event.last:
                self._start()
        elif isinstance(event, wire.Cancel):
            await self._cancel(event.iteration)
        elif isinstance(event, wire.Pull):
            self._pull(event.iteration, event.level)
        elif isinstance(event, wire.Plan) and event.plan not in self.plans and event.plan not in self._preparing:
            self._announced[event.plan] = event.slot_code
            self._preparing[event.plan] = asyncio.create_task(self._prepare(event))

    async def _prepare(self, plan: wire.Plan) -> None:
        """Load the partitions a re-plan needs that this worker lacks, off the critical path (the current task
        goes on computing meanwhile), then tell the master it is ready for that plan."""
        missing = [j for j in plan.slot_code.partitions if j not in self.compute.data]
        t0 = time.perf_counter()
        try:
            self.compute.data.update(await load_partitions(self.stub, self.slot, self.grant.session_id, self.job,
                                                           self.cfg, missing))
        except (grpc.aio.AioRpcError, OSError, ValueError) as exc:
            # no PlanReady: the master switches without this worker after a few boundaries, and its first task
            # under the plan loads the partitions again (Session._switch)
            _log.warning("plan %d: loading its partitions failed slot=%d: %s", plan.plan, self.slot, _one_line(exc))
            return
        self.plans[plan.plan] = plan.slot_code
        _log.info("plan ready slot=%d plan=%d partitions=%d loaded=%d seconds=%.3f", self.slot, plan.plan,
                  len(plan.slot_code.partitions), len(missing), time.perf_counter() - t0)
        self.outbox.put_nowait(_Outgoing(wire.worker_message(wire.PlanReady(plan.plan))))

    async def _switch(self, plan: int) -> None:
        """Compute under `plan` from this task on: its data is loaded (waiting for a load still running)."""
        preparing = self._preparing.pop(plan, None)
        if preparing is not None:
            await preparing  # a load that failed is tried once more below, now that the task needs it
        if plan not in self.plans and plan in self._announced:
            slot_code = self._announced[plan]
            missing = [j for j in slot_code.partitions if j not in self.compute.data]
            try:
                self.compute.data.update(await load_partitions(self.stub, self.slot, self.grant.session_id, self.job,
                                                               self.cfg, missing))
            except (grpc.aio.AioRpcError, OSError, ValueError) as exc:
                raise WireError(f"task under plan {plan}: loading its partitions failed: {_one_line(exc)}") from None
            self.plans[plan] = slot_code
        if plan not in self.plans:
            raise WireError(f"task under plan {plan}, which this worker was never sent (it holds "
                            f"{sorted(self.plans)})")
        self.compute.use(self.plans[plan])
        self.plan = plan
        for old in [p for p in self.plans if p < plan]:
            del self.plans[old]  # plans only move forward
        for old in [p for p in self._announced if p <= plan]:
            del self._announced[old]

    def _start(self) -> None:
        assert self._header is not None and self._params is not None
        header = self._header
        real = realize(self.delay, self.job.delay_seed, header.iteration, self.slot,
                       self.compute.slot_code.partitions, self.job.k)
        # a fresh buffer per task: no copy when it already is float64
        task = TaskRun(header.iteration, np.asarray(self._params, dtype=np.float64), header.max_levels,
                       real.durations_s)
        self.task = task
        self._header, self._params = None, None
        self.advance(WorkerState.WORKING)
        loop = asyncio.get_running_loop()

        def emit(level: int, vector: np.ndarray) -> None:  # compute thread
            if task.cancel.is_set():
                return
            if self.compute.slot_code.signaling == "notify":
                task.vectors[level] = vector
                note = wire.LevelDone(task.iteration, level, task.times)
                loop.call_soon_threadsafe(self.outbox.put_nowait,
                                          _Outgoing(wire.worker_message(note), task.iteration))
                return
            last = level == task.max_levels - 1  # push: nothing is left to send after this vector
            loop.call_soon_threadsafe(self.queue_result, task.iteration, level, vector, task.times, last)

        previous = self._compute_tail
        idle = previous is None or previous.done()
        if idle and self._compute_ms < INLINE_COMPUTE_MS and not np.any(real.durations_s):
            # a task that computes in well under a millisecond and waits for no injected delay runs here, on
            # the event loop: the hop to a thread and back would cost more than the work (docs/style.md §7)
            self.compute.run(task, emit)
            future: asyncio.Future[None] = loop.create_future()
            future.set_result(None)
        elif idle:
            future = loop.run_in_executor(self._executor_for(task), self.compute.run, task, emit)
        else:  # the last task's compute is still returning: this slot's tasks run in order (one partial buffer)
            assert previous is not None
            future = asyncio.ensure_future(self._after(previous, task, emit))
        future.add_done_callback(lambda _: self._computed(task))
        self.task_future = self._compute_tail = future

    def _computed(self, task: TaskRun) -> None:
        """A task's compute returned: track how long a whole task computes (a moving average: small ones run
        on the loop), and report a task that could not be computed."""
        if task.finished:
            ms = sum(task.times.compute_ms)
            self._compute_ms = ms if math.isinf(self._compute_ms) else 0.8 * self._compute_ms + 0.2 * ms
        if task.failure is not None:
            self._failed(task, *task.failure)

    def _failed(self, task: TaskRun, cause: str, reason: str) -> None:
        """The model raised or returned a wrong shape (this worker cannot compute the job: it tells the master
        in one line and ends), or computed NaN/Inf (the training diverged: it tells the master, which ends the
        job, and asks for the next task meanwhile)."""
        if cause != wire.TASK_MODEL_FAILED and task.cancel.is_set():
            return  # cancelled meanwhile: the master has what it needs of this iteration
        if self.task is task and self.state is WorkerState.WORKING:
            self.task, self.task_future = None, None
            self.last_iteration = max(self.last_iteration, task.iteration)
            self.advance(WorkerState.IDLE)
        rejection = wire.TaskRejected(task.iteration, reason, cause)
        if cause == wire.TASK_MODEL_FAILED:
            self.model_failure = reason
            self._end_with(rejection)
            return
        _log.warning("task failed slot=%d iteration=%d reason=%s", self.slot, task.iteration, reason)
        self._send(rejection)
        if self.state is WorkerState.IDLE:
            self._send(wire.Ready(self.last_iteration))

    def _end_with(self, rejection: wire.TaskRejected) -> None:
        """Send `rejection` as this stream's last message and close the request side: the master ends the
        stream, and `run` returns MODEL_FAILED."""
        self._send(rejection)
        self._closing = True
        self.outbox.put_nowait(None)

    async def _after(self, previous: asyncio.Future[None], task: TaskRun,
                     emit: Callable[[int, np.ndarray], None]) -> None:
        with contextlib.suppress(Exception):
            await asyncio.shield(previous)
        await asyncio.get_running_loop().run_in_executor(self._executor_for(task), self.compute.run, task, emit)

    def _executor_for(self, task: TaskRun) -> concurrent.futures.Executor:
        return self.delayed_executor if np.any(task.durations_s) else self.executor

    def _pull(self, iteration: int, level: int) -> None:
        task = self.task
        if task is None or task.iteration != iteration or task.cancel.is_set():
            return  # stale pull: the iteration is over
        vector = task.vectors.get(level)
        if vector is None:
            raise WireError(f"pull for iteration {iteration} level {level} before LevelDone")
        self.queue_result(iteration, level, vector, task.times)

    async def _cancel(self, iteration: int) -> None:
        task = self.task
        if task is None or task.iteration != iteration:
            return  # nothing running for that iteration (already acknowledged)
        self.advance(WorkerState.CANCELLING)
        # from here on the writer drops this iteration's results, the task_done chunk included: the task
        # is still ours, so that chunk has not gone out, and this Cancel gets its ack
        self._cancelled_through = max(self._cancelled_through, iteration)
        task.cancel.set()
        if self.task_future is not None:
            await self.task_future
        self.task, self.task_future = None, None
        self.last_iteration = max(self.last_iteration, iteration)
        self.advance(WorkerState.IDLE)
        self._send(wire.CancelAck(iteration, task.partitions_done, task.times, task.finished,
                                  ready=iteration == self.last_iteration))
        if iteration != self.last_iteration:  # acknowledging an older task: ask for the newest one
            self._send(wire.Ready(self.last_iteration))

    def queue_result(self, iteration: int, level: int, vector: np.ndarray, times: wire.PartitionTimes,
                     task_done: bool = False) -> None:
        """Queue a level's coded vector for upload, in chunks; `task_done` flags the task's last chunk."""
        chunks = list(wire.result_chunks(iteration, self.slot, level, vector, self.job.chunk_bytes, times,
                                         task_done=task_done))
        for index, m in enumerate(chunks):
            self.outbox.put_nowait(_Outgoing(m, iteration, task_done=task_done and index == len(chunks) - 1))

    def _send(self, event: wire.Ready | wire.CancelAck | wire.Heartbeat | wire.TaskRejected) -> None:
        if not self._closing:
            self.outbox.put_nowait(_Outgoing(wire.worker_message(event)))

    async def _write(self, call: Any) -> None:
        while True:
            out = await self.outbox.get()
            if out is None:
                if self._closing:
                    await call.done_writing()
                return
            if 0 <= out.iteration <= self._cancelled_through:
                continue  # queued before the Cancel: never upload stale work (the ack would wait behind it)
            if out.task_done:
                self._task_done(out.iteration)
            await call.write(out.message)

    def _task_done(self, iteration: int) -> None:
        """The task's last chunk goes out now: the worker is idle, and that chunk is its Ready (and its
        answer to a Cancel that may cross it: with the task gone, `_cancel` finds nothing to acknowledge).
        The compute thread may still be returning; the next task queues behind it on the one-thread
        executor.

        `last_iteration` stays where it was: it is what a reconnect asks past, and until the master has
        read this chunk (which a broken stream may lose) iteration `iteration` may still need this slot.
        Asked for again, the worker recomputes it; the master drops the duplicates and takes the flag.
        """
        task = self.task
        if task is None or task.iteration != iteration or self.state is not WorkerState.WORKING:
            return  # cannot happen: a Cancel makes the writer drop the chunk before it gets here
        self.task, self.task_future = None, None
        self.advance(WorkerState.IDLE)

    async def _heartbeat(self) -> None:
        interval = max(0.05, self.job.heartbeat_interval_s or 2.0)
        while True:
            await asyncio.sleep(interval)
            self._send(wire.Heartbeat())


async def load_partitions(stub: pb_grpc.CoordinatorStub, slot: int, session_id: str, job: wire.JobInfo,
                          cfg: WorkerConfig, partitions: list[int] | tuple[int, ...]
                          ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """These partitions' rows: generated here (synthetic data) or fetched from the master."""
    if not partitions:
        return {}
    if job.data.source == "synthetic":
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: {j: synthetic_partition(job.data, j) for j in partitions})
    data = {}
    for j in partitions:
        receiver = wire.PartitionReceiver(j)
        ask = wire.PartitionAsk(slot, j, session_id)
        metadata = wire.token_metadata(cfg.token)
        async for chunk in stub.FetchPartition(wire.partition_request(ask), metadata=metadata):
            receiver.accept(chunk)
        data[j] = receiver.result()
    return data


EXIT_OK, EXIT_RUNTIME, EXIT_REFUSED = 0, 1, 2  # see `flexgc worker --help`
SPARE_GONE_S = 60.0
"""A spare (refused because every slot was held, never joined since) whose master has then been unreachable
this long takes the job to have ended and exits 0: the master tells only its connected workers that the job
finished, and a spare that retried forever would keep `docker compose up` (or a Job) from completing."""


async def run_workers(cfg: WorkerConfig, stop: asyncio.Event | None = None) -> int:
    """`flexgc worker`: --slots worker slots in this process, each with its own identity (worker_id-i when
    there are several), stream, task state and cancels, sharing one event loop and a pool of
    --compute-threads threads. Returns the worst exit code of the slots (see run_worker). Setting `stop`
    ends them; SIGTERM/SIGINT set it (where this loop can handle signals)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in transport.stop_signals():
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    if cfg.slots == 1:
        return await run_worker(cfg, stop)
    threads = cfg.compute_threads or min(cfg.slots, os.cpu_count() or 1)
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="compute")
    # a job with injected delays emulates a machine per slot: a thread each, so one slot's delay (a wait, no
    # CPU) never holds up another's task (threads are started only when tasks overlap)
    delayed = concurrent.futures.ThreadPoolExecutor(max_workers=max(threads, cfg.slots), thread_name_prefix="delayed")
    slots = [dataclasses.replace(cfg, worker_id=f"{cfg.identity}-{i}", slots=1,
                                 slot=cfg.slot + i if cfg.slot >= 0 else -1) for i in range(cfg.slots)]
    try:
        codes = await asyncio.gather(*(run_worker(one, stop, executor, delayed) for one in slots))
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        delayed.shutdown(wait=False, cancel_futures=True)
    return max(codes)


def reason_kind(reason: str) -> str:
    """A join failure's reason without its numbers: "heard 0.3 s ago" and "heard 0.1 s ago" are one reason,
    warned about once."""
    return re.sub(r"\d+(\.\d+)?", "#", reason)


async def run_worker(cfg: WorkerConfig, stop: asyncio.Event | None = None,
                     executor: concurrent.futures.Executor | None = None,
                     delayed_executor: concurrent.futures.Executor | None = None) -> int:
    """One worker slot: join and work until the master's Shutdown (exit 0), a refusal that retrying cannot
    fix (exit 2), no successful join within --join-timeout-s (exit 1), or `stop` (exit 0). Without `stop`
    it stops on SIGTERM/SIGINT itself; `executor` is a compute pool shared with other slots (else its own
    thread), `delayed_executor` the pool for tasks with an injected delay (default: `executor`)."""
    if stop is None:
        stop = asyncio.Event()
        for sig in transport.stop_signals():
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    threadpool_limits(cfg.blas_threads)  # workers share the cores: one BLAS thread each by default
    loop = asyncio.get_running_loop()
    tls = transport.TlsConfig(cfg.tls_cert, cfg.tls_key, cfg.tls_ca)
    # one thread of its own unless shared: a slot's tasks run in order either way (Session._start)
    own_executor = executor is None
    executor = executor or concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
    instance_id = uuid.uuid4().hex  # this process: a reconnect of it is told apart from a second process
    slot = cfg.slot
    backoff = 0.05
    compute: PartitionCompute | None = None
    last_iteration = -1
    session_id = ""
    unjoined_since = time.monotonic()
    last_reason, warned_at = "", -math.inf
    spare_since: float | None = None   # refused as full (a spare) and not joined since
    unreachable_since: float | None = None   # ... and the master unreachable since
    try:
        while not stop.is_set():
            channel = transport.aio_channel(cfg.master, tls, server_name=cfg.server_name)
            try:
                stub = pb_grpc.CoordinatorStub(channel)
                ask = wire.JoinAsk(cfg.identity, slot, __version__, instance_id, cfg.machine)
                try:
                    grant, job = wire.joined(await stub.Join(wire.join_request(ask), timeout=10,
                                                             metadata=wire.token_metadata(cfg.token)))
                except WireError as exc:
                    _log.error("cannot use the join reply of master=%s: %s (another flexgc version?)", cfg.master,
                               exc)
                    return EXIT_REFUSED
                except grpc.aio.AioRpcError as exc:
                    if wire.error_kind(exc) == "JobFinishedError":
                        _log.info("job already finished master=%s", cfg.master)
                        return await _linger(cfg, stop)
                    reason = transport.describe_failure(exc.code(), exc.details() or "", cfg.master, tls)
                    if exc.code() in _FATAL:
                        _log.error("join refused by master=%s: %s", cfg.master, reason)
                        return EXIT_REFUSED
                    if wire.error_kind(exc) == "SlotsFullError":
                        spare_since, unreachable_since = spare_since or time.monotonic(), None
                        reason += " (waiting as a spare for a slot to free)"
                    elif spare_since is not None and exc.code() == grpc.StatusCode.UNAVAILABLE:
                        unreachable_since = unreachable_since or time.monotonic()
                        if time.monotonic() - unreachable_since >= SPARE_GONE_S:
                            _log.info("job presumed finished: master=%s refused this spare as full, then has been "
                                      "unreachable for %.0f s", cfg.master, time.monotonic() - unreachable_since)
                            return EXIT_OK
                    waited = time.monotonic() - unjoined_since
                    if cfg.join_timeout_s and waited >= cfg.join_timeout_s:
                        _log.error("giving up: no join with master=%s for %.1f s (--join-timeout-s=%g); last "
                                   "error: %s", cfg.master, waited, cfg.join_timeout_s, reason)
                        return EXIT_RUNTIME
                    # the last retry lands on the timeout, not before it
                    pause = min(backoff, cfg.join_timeout_s - waited) if cfg.join_timeout_s else backoff
                    # WARNING when the reason is new (or every 30 s), INFO for the retries in between
                    now, kind = time.monotonic(), reason_kind(reason)
                    loud = kind != last_reason or now - warned_at > 30.0
                    _log.log(logging.WARNING if loud else logging.INFO, "cannot join master=%s: %s; retrying in "
                             "%.1f s", cfg.master, reason, pause)
                    last_reason, warned_at = kind, now if loud else warned_at
                    await _sleep_or_stop(pause, stop)
                    backoff = min(cfg.reconnect_max_s, backoff * 2) * (0.8 + 0.4 * random.random())
                    continue
                slot = grant.slot
                spare_since = unreachable_since = None
                failure: str | None = None
                if compute is not None and compute.spec == job.data and not _same_code(compute.slot_code,
                                                                                        grant.slot_code):
                    # the same job under another plan (an adaptive re-plan while this worker was away): load only
                    # what it lacks
                    missing = [j for j in grant.slot_code.partitions if j not in compute.data]
                    compute.data.update(await load_partitions(stub, grant.slot, grant.session_id, job, cfg, missing))
                    compute.use(grant.slot_code)
                if compute is None or not _same_code(compute.slot_code, grant.slot_code) or compute.spec != job.data:
                    try:
                        check_model_allowed(job.data.model, cfg.model_modules)
                        model = await loop.run_in_executor(executor, build_model, job.data)
                    except ConfigError as exc:  # a model this worker may not or cannot run: retrying cannot help
                        _log.error("job refused master=%s error=%s", cfg.master, exc)
                        return 2
                    data = await load_partitions(stub, grant.slot, grant.session_id, job, cfg,
                                                 grant.slot_code.partitions)
                    compute = PartitionCompute(grant.slot_code, job.data, data,
                                               wire.numpy_dtype(wire.wire_dtype(job.dtype)), cfg.rows_per_chunk, model)
                    try:
                        warm_s = await loop.run_in_executor(executor, compute.warm_up)  # compile before the first task
                    except Exception as exc:  # the model's code: the master is told in one line (Session)
                        failure = model_failure(job.data.model, exc)
                    else:
                        if warm_s:
                            _log.info("model compiled model=%s seconds=%.2f", job.data.model, warm_s)
                _log.info("joined slot=%d n=%d code=%s master=%s", slot, job.n, job.code_spec, cfg.master)
                if grant.session_id != session_id:
                    # a new master session (e.g. restarted from a checkpoint) may repeat iterations
                    session_id, last_iteration = grant.session_id, -1
                session = Session(cfg, grant, job, stub, compute, executor, instance_id, delayed_executor, failure)
                session.last_iteration = last_iteration
                backoff = 0.05
                run = asyncio.ensure_future(session.run())
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait({run, stopper}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                if not run.done():
                    run.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await run
                    return EXIT_OK
                last_iteration = session.last_iteration
                unjoined_since = time.monotonic()
                outcome = run.result()
                if outcome is SessionEnd.SHUTDOWN:
                    return await _linger(cfg, stop)
                if outcome is SessionEnd.FATAL:
                    return EXIT_REFUSED
                if outcome is SessionEnd.MODEL_FAILED:
                    _log.error("cannot compute the job slot=%d worker_id=%s: %s (the master was told)", slot,
                               cfg.identity, session.model_failure)
                    return EXIT_RUNTIME
                _log.info("reconnecting slot=%d in %.2fs", slot, backoff)
                await _sleep_or_stop(backoff, stop)
            finally:
                await channel.close()
    finally:
        if own_executor:
            executor.shutdown(wait=False, cancel_futures=True)
    return EXIT_OK


def _one_line(exc: BaseException) -> str:
    """An RPC failure as its status and details (an AioRpcError's str spans lines, debug string included)."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc)


def _same_code(a: wire.SlotCode, b: wire.SlotCode) -> bool:
    return (a.partitions == b.partitions and a.level_prefix == b.level_prefix and a.signaling == b.signaling
            and np.array_equal(a.coefficients, b.coefficients))


async def _linger(cfg: WorkerConfig, stop: asyncio.Event) -> int:
    if cfg.linger:
        _log.info("lingering until SIGTERM")
        await stop.wait()
    return 0


async def _sleep_or_stop(seconds: float, stop: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
