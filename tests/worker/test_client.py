"""The worker's Session against a scripted in-process gRPC master: malformed tasks are rejected with a
clear TaskRejected, the stream stays up, and the next good task is computed exactly.

The fake master is a real grpc.aio server on loopback; the test plays the master's side of the Work
stream message by message. A last test runs the Session against the real CoordinatorService.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest

import flexgc.worker.client as client
from flexgc.common import wire
from flexgc.common.codes import parse_code
from flexgc.common.config import worker_config
from flexgc.common.models import DataSpec, full_gradient, synthetic_partition
from flexgc.master.coordinator import Coordinator
from flexgc.master.service import CoordinatorService, add_coordinator_service
from flexgc.v1 import coordinator_pb2 as pb
from flexgc.v1 import coordinator_pb2_grpc as pb_grpc
from flexgc.worker.client import Session, SessionEnd, WorkerState, reason_kind
from flexgc.worker.compute import PartitionCompute, TaskRun

CODE = parse_code("nested:levels=0,1", 3)
SLOT = 0
SPEC = DataSpec(model="logistic", samples=60, features=4, partitions=CODE.k)
D = SPEC.d                       # parameters on the wire; results carry D + 1 (the loss)
CHUNK_BYTES = 16                 # 2 float64 per chunk: every task has 2 params chunks, every result 3 chunks
WAIT_S = 5.0


def slot_code(slot: int = SLOT) -> wire.SlotCode:
    parts = CODE.order[slot]
    return wire.SlotCode(parts, tuple(int(x) for x in CODE.prefix[:, slot]), CODE.levels,
                         np.stack([CODE.B[level, slot, list(parts)] for level in range(CODE.n_levels)]),
                         CODE.signaling)


def join_reply(spec: DataSpec = SPEC) -> pb.JoinReply:
    reply = pb.JoinReply(slot=SLOT, session_id="session-1", n=CODE.n, k=CODE.k, code_spec=CODE.spec,
                         chunk_bytes=CHUNK_BYTES, heartbeat_interval_s=60.0, delay_spec="none", delay_seed=0,
                         data=pb.DataSpec(model=spec.model, source="synthetic", samples=spec.samples,
                                          features=spec.features, classes=spec.classes, seed=spec.seed,
                                          partitions=spec.partitions, dtype="float64", noise=spec.noise))
    reply.slot_code.CopyFrom(wire.slot_code_to_proto(slot_code()))
    return reply


def make_compute(spec: DataSpec = SPEC) -> PartitionCompute:
    sc = slot_code()
    data = {j: synthetic_partition(spec, j) for j in sc.partitions}
    return PartitionCompute(sc, spec, data, np.dtype("<f8"), rows_per_chunk=7)


def expected_coded(params: np.ndarray) -> dict[int, np.ndarray]:
    """Level -> coded message of SLOT for `params`, computed directly from the partitions."""
    sc = slot_code()
    partials = [full_gradient(SPEC, params, [synthetic_partition(SPEC, j)]) for j in sc.partitions]
    return {level: sum(sc.coefficients[level, m] * partials[m] for m in range(prefix))
            for level, prefix in enumerate(sc.level_prefix)}


async def within(aw: Awaitable[Any], what: str, timeout_s: float = WAIT_S) -> Any:
    try:
        return await asyncio.wait_for(aw, timeout_s)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}") from None


class FakeMaster(pb_grpc.CoordinatorServicer):
    """The master side of Work, played by the test: `send` to the worker, `receive` what it says."""

    def __init__(self) -> None:
        self.to_worker: asyncio.Queue[pb.MasterMessage | None] = asyncio.Queue()
        self.from_worker: asyncio.Queue[pb.WorkerMessage] = asyncio.Queue()
        self.streams = 0

    async def Work(self, request_iterator: AsyncIterator[pb.WorkerMessage],
                   context: grpc.aio.ServicerContext) -> AsyncIterator[pb.MasterMessage]:
        self.streams += 1

        async def read() -> None:
            async for msg in request_iterator:
                if msg.WhichOneof("kind") != "heartbeat":
                    self.from_worker.put_nowait(msg)

        reader = asyncio.create_task(read())
        try:
            while (msg := await self.to_worker.get()) is not None:
                yield msg
        finally:
            reader.cancel()

    def send(self, *messages: pb.MasterMessage) -> None:
        for msg in messages:
            self.to_worker.put_nowait(msg)

    async def receive(self, what: str) -> pb.WorkerMessage:
        return await within(self.from_worker.get(), what)

    async def receive_kind(self, kind: str) -> Any:
        msg = await self.receive(kind)
        assert msg.WhichOneof("kind") == kind, f"expected {kind}, got {msg}"
        return getattr(msg, kind)

    def pending(self) -> list[pb.WorkerMessage]:
        out = []
        while not self.from_worker.empty():
            out.append(self.from_worker.get_nowait())
        return out


@dataclass
class Wiring:
    """A servicer on a loopback grpc.aio server, a channel to it, and the worker's compute executor."""

    target: str
    stub: pb_grpc.CoordinatorStub
    executor: concurrent.futures.Executor
    runs: list[asyncio.Task[SessionEnd]] = field(default_factory=list)

    def start(self, reply: pb.JoinReply, compute: PartitionCompute) -> asyncio.Task[SessionEnd]:
        grant, job = wire.joined(reply)
        session = Session(worker_config(master=self.target, worker_id="w0"), grant, job, self.stub, compute,
                          self.executor)
        self.runs.append(asyncio.create_task(session.run()))
        return self.runs[-1]


@contextlib.asynccontextmanager
async def served(servicer: pb_grpc.CoordinatorServicer) -> AsyncIterator[Wiring]:
    server = grpc.aio.server()
    add_coordinator_service(servicer, server)  # as the master registers it
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    wiring = Wiring(f"127.0.0.1:{port}", pb_grpc.CoordinatorStub(channel),
                    concurrent.futures.ThreadPoolExecutor(max_workers=1))
    try:
        yield wiring
    finally:
        for run in wiring.runs:
            if not run.done():
                run.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await run
        await channel.close()
        await server.stop(0)
        wiring.executor.shutdown(wait=True, cancel_futures=True)


async def with_session(script: Callable[[FakeMaster, asyncio.Task[SessionEnd]], Awaitable[None]]) -> None:
    """Start a fake master and a Session connected to it, run `script`, clean everything up."""
    fake = FakeMaster()
    async with served(fake) as wiring:
        run = wiring.start(join_reply(), make_compute())
        hello = await fake.receive_kind("hello")
        assert (hello.slot, hello.session_id, hello.worker_id) == (SLOT, "session-1", "w0")
        assert (await fake.receive_kind("ready")).after_iteration == -1
        await script(fake, run)


def run_async(make: Callable[[], Awaitable[None]], timeout_s: float = 20.0) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(make(), timeout_s)
    asyncio.run(bounded())


async def compute_good_task(fake: FakeMaster, iteration: int) -> None:
    """Send a valid task and check every level's coded result. The last chunk of the last level is
    flagged task_done: the worker is idle and ready. A Cancel then sent (as a master that decoded before
    that chunk arrived would) gets no ack: the flagged chunk is the ack, and the next test step proves
    it by receiving its own answer first."""
    params = np.linspace(-0.5, 0.5, D)
    fake.send(*wire.task_messages(iteration, params, CHUNK_BYTES, CODE.n_levels))
    rows = {level: np.zeros(D + 1) for level in range(CODE.n_levels)}
    filled = dict.fromkeys(rows, 0)
    done: set[int] = set()
    flagged = []
    while done != set(rows):
        chunk = await fake.receive_kind("result")
        wire.result_header(chunk, "<f8", D + 1, CODE.n_levels, CODE.max_partitions(SLOT))
        assert (chunk.iteration, chunk.slot) == (iteration, SLOT)
        filled[chunk.level] = wire.accept_chunk(rows[chunk.level], filled[chunk.level], chunk)
        if chunk.last:
            done.add(chunk.level)
        if chunk.task_done:
            flagged.append((chunk.level, chunk.last, len(done)))
    for level, vector in expected_coded(params).items():
        np.testing.assert_allclose(rows[level], vector, rtol=1e-12, atol=1e-12)
    assert flagged == [(CODE.n_levels - 1, True, CODE.n_levels)], flagged
    fake.send(pb.MasterMessage(cancel=pb.Cancel(iteration=iteration)))


async def probe(fake: FakeMaster) -> None:
    """Everything the worker says before this returns was said before it read the probe (one stream, in
    order): a params chunk without a task header, answered by TaskRejected and Ready."""
    fake.send(pb.MasterMessage(params=pb.ParamsChunk(iteration=10**6, offset=0, data=np.zeros(2).tobytes(),
                                                     last=True)))
    assert (await fake.receive_kind("task_rejected")).reason == "params chunk without a task header"
    await fake.receive_kind("ready")


# -- the good path ------------------------------------------------------------------------------


def test_good_tasks_are_computed_exactly_and_shutdown_ends_the_session() -> None:
    async def script(fake: FakeMaster, run: asyncio.Task[SessionEnd]) -> None:
        await compute_good_task(fake, 0)
        await compute_good_task(fake, 1)
        await probe(fake)  # neither Cancel, each crossing a task_done chunk, was acknowledged

        fake.send(pb.MasterMessage(shutdown=pb.Shutdown(reason="job finished")))

        assert await within(run, "the session to end") is SessionEnd.SHUTDOWN
        assert fake.streams == 1

    run_async(lambda: with_session(script))


# -- malformed tasks ----------------------------------------------------------------------------


def _task(iteration: int = 0, params: np.ndarray | None = None, **header: Any) -> list[pb.MasterMessage]:
    messages = wire.task_messages(iteration, np.zeros(D) if params is None else params, CHUNK_BYTES,
                                  CODE.n_levels)
    for key, value in header.items():
        setattr(messages[0].task, key, value)
    return messages


def _with_nan(index: int) -> np.ndarray:
    params = np.zeros(D)
    params[index] = np.nan
    return params


def _edit_params(messages: list[pb.MasterMessage], index: int, **changes: Any) -> list[pb.MasterMessage]:
    """Change the `index`-th ParamsChunk (messages[0] is the Task header)."""
    chunk = messages[1 + index]
    assert chunk.WhichOneof("kind") == "params"
    for key, value in changes.items():
        setattr(chunk.params, key, value)
    return messages


MALFORMED = [
    pytest.param(_task(total_elements=D + 1), 0, "total_elements=5, expected 4", id="wrong-total-elements"),
    pytest.param(_task(dtype="float64"), 0, "dtype='float64'; allowed: <f4, <f8", id="wrong-dtype"),
    pytest.param(_task(max_levels=3), 0, "max_levels=3; allowed 1..2", id="too-many-levels"),
    pytest.param(_task(params=_with_nan(0)), 0, "params of iteration 0: NaN/Inf", id="nan-in-first-params-chunk"),
    pytest.param(_edit_params(_task(), 0, offset=1), 0, "params chunk: 2 elements at 1 do not fit (0/4)",
                 id="params-out-of-order"),
    pytest.param(_task(params=_with_nan(D - 1)), 0, "params of iteration 0: NaN/Inf", id="nan-in-last-params-chunk"),
    pytest.param(_task(params=np.array([0.0, 0.0, 0.0, np.inf])), 0, "params of iteration 0: NaN/Inf",
                 id="inf-in-last-params-chunk"),
    pytest.param(_edit_params(_task(), 1, data=b"\x00" * 9), 0, "params chunk of 9 B is not a multiple of 8",
                 id="ragged-last-params-chunk"),
    pytest.param(_edit_params(_task(), 1, iteration=3), 0, "params chunk of iteration 3 inside task 0",
                 id="last-params-chunk-of-another-iteration"),
    pytest.param(_edit_params(_task(), 0, iteration=3), 0, "params chunk of iteration 3 inside task 0",
                 id="first-params-chunk-of-another-iteration"),
]


@pytest.mark.parametrize(("messages", "iteration", "reason"), MALFORMED)
def test_malformed_task_is_rejected_once_and_the_worker_stays_connected(
        messages: list[pb.MasterMessage], iteration: int, reason: str) -> None:
    async def script(fake: FakeMaster, run: asyncio.Task[SessionEnd]) -> None:
        fake.send(*messages)

        rejected = await fake.receive_kind("task_rejected")
        ready = await fake.receive_kind("ready")

        assert reason in rejected.reason
        assert rejected.iteration == iteration
        assert ready.after_iteration >= iteration, "the master refuses a Ready older than the task it sent"
        # a good task right behind the bad one is computed, on the same stream, with nothing in between
        await compute_good_task(fake, iteration + 1)
        assert not fake.pending()
        assert not run.done() and fake.streams == 1

    run_async(lambda: with_session(script))


def test_params_chunk_without_a_task_header() -> None:
    async def script(fake: FakeMaster, run: asyncio.Task[SessionEnd]) -> None:
        fake.send(pb.MasterMessage(params=pb.ParamsChunk(iteration=0, offset=0, data=np.zeros(2).tobytes(),
                                                         last=True)))

        rejected = await fake.receive_kind("task_rejected")
        await fake.receive_kind("ready")
        await compute_good_task(fake, 0)

        assert rejected.reason == "params chunk without a task header"
        assert not run.done() and fake.streams == 1

    run_async(lambda: with_session(script))


def test_task_while_receiving_another_is_rejected() -> None:
    async def script(fake: FakeMaster, run: asyncio.Task[SessionEnd]) -> None:
        first = _task(0)
        fake.send(first[0])                                     # header only, parameters still to come
        fake.send(_task(1)[0])

        rejected = await fake.receive_kind("task_rejected")
        await fake.receive_kind("ready")
        await compute_good_task(fake, 2)

        assert rejected.reason.startswith("task 1 while RECEIVING")
        assert not run.done() and fake.streams == 1

    run_async(lambda: with_session(script))


def test_stale_cancel_and_pull_are_ignored() -> None:
    async def script(fake: FakeMaster, run: asyncio.Task[SessionEnd]) -> None:
        fake.send(pb.MasterMessage(cancel=pb.Cancel(iteration=7)), pb.MasterMessage(pull=pb.Pull(iteration=7)))

        await compute_good_task(fake, 8)

        assert not fake.pending() and not run.done()

    run_async(lambda: with_session(script))


# -- task_done against a crossing Cancel: exactly one of the flagged chunk and a CancelAck goes out -----


class RecordingCall:
    """Stands in for the Work call on the writer's side: records what the worker writes."""

    def __init__(self) -> None:
        self.written: list[pb.WorkerMessage] = []

    async def write(self, msg: pb.WorkerMessage) -> None:
        self.written.append(msg)


def _working_session(iteration: int) -> Session:
    """A Session (no stream) whose task has computed everything and queued the flagged last chunk."""
    grant, job = wire.joined(join_reply())
    session = Session(worker_config(master="127.0.0.1:1", worker_id="w0"), grant, job, None,  # type: ignore[arg-type]
                      make_compute(), concurrent.futures.ThreadPoolExecutor(max_workers=1))
    task = TaskRun(iteration, np.zeros(D), CODE.n_levels, np.zeros(CODE.max_partitions(SLOT)))
    task.partitions_done, task.finished = CODE.max_partitions(SLOT), True
    session.task, session.state = task, WorkerState.WORKING
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    session.task_future = done
    session.queue_result(iteration, CODE.n_levels - 1, np.ones(D + 1), task.times, task_done=True)
    return session


def _kinds(call: RecordingCall) -> list[str]:
    return [f"{m.WhichOneof('kind')}{'+task_done' if m.result.task_done else ''}" for m in call.written]


def test_cancel_before_the_flagged_chunk_is_written_drops_it_and_acknowledges() -> None:
    async def scenario() -> None:
        session, call = _working_session(5), RecordingCall()

        await session._cancel(5)              # the Cancel is read before the writer reaches the chunk
        session.outbox.put_nowait(None)
        await within(session._write(call), "the writer")

        assert _kinds(call) == ["cancel_ack"]
        ack = call.written[0].cancel_ack
        assert (ack.iteration, ack.finished, ack.ready) == (5, True, True)
        assert session.state is WorkerState.IDLE and session.task is None and session.last_iteration == 5

    run_async(scenario)


def test_cancel_after_the_flagged_chunk_is_written_is_not_acknowledged() -> None:
    async def scenario() -> None:
        session, call = _working_session(5), RecordingCall()
        session.outbox.put_nowait(None)
        await within(session._write(call), "the writer")   # the whole result, flagged, goes out first
        assert session.state is WorkerState.IDLE and session.task is None
        # not advanced: should the stream break before the master reads the flag, a reconnect asks for
        # iteration 5 again (Ready after 4) instead of leaving it to the deadline
        assert session.last_iteration == -1

        await session._cancel(5)
        session.outbox.put_nowait(None)
        await within(session._write(call), "the writer")

        assert _kinds(call) == ["result", "result", "result+task_done"]
        assert call.written[0].result.HasField("times") and call.written[2].result.HasField("times")

    run_async(scenario)


def test_cancel_between_chunks_of_the_flagged_level_drops_the_rest_and_acknowledges() -> None:
    async def scenario() -> None:
        session = _working_session(5)

        class CancelDuringFirstWrite(RecordingCall):
            async def write(self, msg: pb.WorkerMessage) -> None:
                await super().write(msg)
                if len(self.written) == 1:
                    await session._cancel(5)      # read while the first chunk is on its way
                    session.outbox.put_nowait(None)

        call = CancelDuringFirstWrite()
        await within(session._write(call), "the writer")

        assert _kinds(call) == ["result", "cancel_ack"]   # the flagged last chunk never went out
        assert call.written[1].cancel_ack.iteration == 5 and session.state is WorkerState.IDLE

    run_async(scenario)


# -- against the real master service ------------------------------------------------------------


def test_rejected_task_keeps_the_worker_connected_to_the_real_master() -> None:
    """A worker whose data disagrees with the master (d differs) rejects every task: it must stay connected."""

    async def scenario() -> None:
        coordinator = Coordinator(CODE, SPEC, dtype="float64", chunk_bytes=CHUNK_BYTES, deadline_s=0.0,
                                  on_deadline="fail")
        _, job = wire.joined(join_reply())
        async with served(CoordinatorService(coordinator, job)) as wiring:
            granted = await wiring.stub.Join(pb.JoinRequest(worker_id="w0", preferred_slot=SLOT), timeout=WAIT_S)
            wrong = DataSpec(model="logistic", samples=60, features=5, partitions=CODE.k)   # d = 5, not 4
            assert wire.joined(granted)[1].data.d == D
            run = wiring.start(granted, make_compute(wrong))
            live = coordinator.members.connections
            await within(_until(lambda: SLOT in live and live[SLOT].ready_after is not None), "the worker's Ready")
            coordinator.start_iteration(0, np.zeros(D))

            await within(_until(lambda: coordinator.metrics.rejected_by_kind or run.done()),
                         "the worker's TaskRejected")
            await within(_until(lambda: live.get(SLOT) is None or live[SLOT].ready_after == 0 or run.done()),
                         "the worker's Ready after the rejection")

            assert coordinator.metrics.rejected_by_kind == {"task_rejected_by_worker": 1}
            assert not run.done() and coordinator.members.connected == 1
            coordinator.shutdown("job finished")
            assert await within(run, "the session to end") is SessionEnd.SHUTDOWN

    run_async(scenario)


async def _until(predicate: Callable[[], Any], interval_s: float = 0.005) -> None:
    """Poll a condition on the loop (callers bound it with `within`)."""
    while not predicate():
        await asyncio.sleep(interval_s)


def test_a_join_refusal_that_only_changes_its_numbers_is_one_reason() -> None:
    busy = "ALREADY_EXISTS: worker_id='wA' is already connected to slot 0 from another live process (heard {} s ago)"
    assert reason_kind(busy.format("0.0")) == reason_kind(busy.format("1.7"))   # warned about once
    assert reason_kind(busy.format("0.0")) != reason_kind("connection refused by 127.0.0.1:5")


class FinishedMaster(pb_grpc.CoordinatorServicer):
    """A master whose job ended between the worker's Join and its Work stream."""

    def __init__(self, kind: str | None) -> None:
        self.kind = kind

    async def Work(self, request_iterator: AsyncIterator[pb.WorkerMessage],
                   context: grpc.aio.ServicerContext) -> AsyncIterator[pb.MasterMessage]:
        messages = aiter(request_iterator)
        # the hello and the Ready the worker sends with it, as the master reads them before refusing: a write
        # still in flight when the status arrives makes gRPC report INTERNAL instead (master/service.py Work)
        await anext(messages)
        await anext(messages)
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the job has finished; nothing to work on",
                            trailing_metadata=wire.error_metadata(self.kind) if self.kind else ())
        yield pb.MasterMessage()  # pragma: no cover (abort raised)


@pytest.mark.parametrize(("kind", "end"), [("JobFinishedError", SessionEnd.SHUTDOWN), (None, SessionEnd.DISCONNECTED)])
def test_a_stream_refused_because_the_job_finished_ends_like_a_shutdown(kind: str | None, end: SessionEnd) -> None:
    async def scenario() -> None:
        async with served(FinishedMaster(kind)) as wiring:
            assert await within(wiring.start(join_reply(), make_compute()), "the session to end") is end

    run_async(scenario)


class FullMaster(pb_grpc.CoordinatorServicer):
    """A master whose slots are all held: every Join is refused as the real one refuses it."""

    def __init__(self) -> None:
        self.joins = asyncio.Event()

    async def Join(self, request: pb.JoinRequest, context: grpc.aio.ServicerContext) -> pb.JoinReply:
        self.joins.set()
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "all 2 slots are taken",
                            trailing_metadata=wire.error_metadata("SlotsFullError"))
        return pb.JoinReply()  # pragma: no cover (abort raised)


def test_a_spare_exits_0_once_the_master_that_refused_it_as_full_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    # the master tells only its connected workers that the job finished; a spare (refused as full) whose master
    # then stays unreachable takes the job to have ended, instead of retrying forever (no join timeout set)
    monkeypatch.setattr(client, "SPARE_GONE_S", 0.5)

    ended: list[int] = []

    async def scenario() -> None:
        fake = FullMaster()
        server = grpc.aio.server()
        add_coordinator_service(fake, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        cfg = worker_config(master=f"127.0.0.1:{port}", worker_id="spare", reconnect_max_s=0.1)
        stop = asyncio.Event()
        worker = asyncio.create_task(client.run_worker(cfg, stop))
        try:
            await within(fake.joins.wait(), "the spare's first join")
            await server.stop(0)  # the job ended: the master is gone
            ended.append(await within(worker, "the spare to give up", timeout_s=30))
        finally:
            stop.set()
            if not worker.done():
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker

    run_async(scenario)
    assert ended == [0]
