"""gRPC servicer: decodes through `wire`, makes one domain call, maps domain errors to a status (STYLE §2)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np

from flexgc.common import wire
from flexgc.common.errors import (
    AuthError,
    DuplicateResultError,
    InvalidTransitionError,
    JobFinishedError,
    StaleIterationError,
    UnknownSlotError,
    WireError,
)
from flexgc.master.coordinator import Connection, Coordinator, SlotState, is_close
from flexgc.v1 import coordinator_pb2 as pb
from flexgc.v1 import coordinator_pb2_grpc as pb_grpc

_log = logging.getLogger(__name__)

_STATUS: dict[type[BaseException], grpc.StatusCode] = {
    WireError: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownSlotError: grpc.StatusCode.NOT_FOUND,
    StaleIterationError: grpc.StatusCode.FAILED_PRECONDITION,
    DuplicateResultError: grpc.StatusCode.ALREADY_EXISTS,
    InvalidTransitionError: grpc.StatusCode.FAILED_PRECONDITION,
    AuthError: grpc.StatusCode.UNAUTHENTICATED,
    JobFinishedError: grpc.StatusCode.FAILED_PRECONDITION,
}
_ERRORS = tuple(_STATUS)
HELLO_TIMEOUT_S = 10.0


class CoordinatorService(pb_grpc.CoordinatorServicer):
    def __init__(self, coordinator: Coordinator, join_reply_extra: dict[str, Any],
                 partition_source: Any = None) -> None:
        self._coordinator = coordinator
        self._extra = join_reply_extra
        self._partitions = partition_source  # callable(j) -> (X, y) when the master holds the data

    async def Join(self, request: pb.JoinRequest, context: grpc.aio.ServicerContext) -> pb.JoinReply:
        try:
            grant = self._coordinator.join(request.worker_id, request.preferred_slot, request.token)
        except _ERRORS as exc:
            await self._abort(context, exc)
        reply = pb.JoinReply(slot=grant.slot, session_id=grant.session_id, **self._extra)
        reply.slot_code.CopyFrom(wire.slot_code_to_proto(grant.slot_code))
        return reply

    async def Work(self, request_iterator: AsyncIterator[pb.WorkerMessage],
                   context: grpc.aio.ServicerContext) -> AsyncIterator[pb.MasterMessage]:
        try:
            first = await asyncio.wait_for(anext(aiter(request_iterator)), HELLO_TIMEOUT_S)
        except StopAsyncIteration:
            return
        except TimeoutError:
            self._coordinator.reject("no_hello")
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"no hello within {HELLO_TIMEOUT_S} s")
        if first.WhichOneof("kind") != "hello":
            self._coordinator.reject("no_hello")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message on Work must be hello")
        hello = first.hello
        try:
            conn = self._coordinator.open_stream(hello.slot, hello.worker_id, hello.session_id, hello.token)
        except _ERRORS as exc:
            await self._abort(context, exc)
        reader = asyncio.create_task(self._read(request_iterator, conn))
        failure: list[BaseException] = []
        reader.add_done_callback(lambda t: self._reader_done(t, conn, failure))
        try:
            while True:
                item = await conn.outbox.get()
                if is_close(item):
                    break
                yield item
        finally:
            reader.cancel()
            self._coordinator.close_stream(conn, "stream ended")
        if failure:
            await self._abort(context, failure[0])

    def _reader_done(self, task: asyncio.Task[None], conn: Connection, failure: list[BaseException]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            failure.append(exc)
        # end of the request stream (client gone or half-closed): never treated as completion
        self._coordinator.close_stream(conn, "request stream ended" if exc is None else type(exc).__name__)

    async def _read(self, request_iterator: AsyncIterator[pb.WorkerMessage], conn: Connection) -> None:
        c = self._coordinator
        async for msg in request_iterator:
            if conn.state is SlotState.GONE:
                # replaced by a newer connection of the same slot (or closed): whatever was still buffered
                # on this one is dropped, not judged
                c.discard("closed_connection")
                continue
            kind = msg.WhichOneof("kind")
            try:
                if kind == "result":
                    c.on_result(conn, msg.result)
                elif kind == "ready":
                    c.on_ready(conn, msg.ready.after_iteration)
                elif kind == "level_done":
                    ld = msg.level_done
                    times = (wire.times_from_proto(ld.times, c.code.max_partitions(conn.slot))
                             if ld.HasField("times") else None)
                    c.on_level_done(conn, ld.iteration, ld.level, times)
                elif kind == "cancel_ack":
                    c.on_cancel_ack(conn, msg.cancel_ack)
                elif kind == "heartbeat":
                    c.on_heartbeat(conn)
                elif kind == "task_rejected":
                    _log.warning("task rejected slot=%d iteration=%d reason=%r", conn.slot,
                                 msg.task_rejected.iteration, msg.task_rejected.reason[:200])
                    c.reject("task_rejected_by_worker")
                else:
                    raise WireError(f"slot={conn.slot}: unexpected message kind {kind!r} on Work")
            except _ERRORS as exc:
                _log.warning("rejected slot=%d kind=%s error=%s", conn.slot, kind, exc)
                raise

    async def FetchPartition(self, request: pb.PartitionRequest,
                             context: grpc.aio.ServicerContext) -> AsyncIterator[pb.PartitionChunk]:
        c = self._coordinator
        try:
            c.check_token(request.token)
            if request.session_id != c.session_id:
                raise StaleIterationError("session_id is not this job's session; join again")
            if not 0 <= request.slot < c.code.n or request.partition not in c.code.order[request.slot]:
                raise UnknownSlotError(f"slot={request.slot} does not hold partition={request.partition}")
            if self._partitions is None:
                raise WireError("this job's data is synthetic: workers generate it themselves")
        except _ERRORS as exc:
            await self._abort(context, exc)
        X, y = self._partitions(request.partition)
        for name, arr in (("X", X), ("y", y)):
            flat = np.ascontiguousarray(arr, dtype="<f8").reshape(-1)
            slices = list(wire.chunk_slices(flat.size, 8, c.chunk_bytes))
            for i, (a, b) in enumerate(slices):
                yield pb.PartitionChunk(name=name, dtype="<f8", shape=arr.shape, offset=a,
                                        data=flat[a:b].tobytes(), last=i == len(slices) - 1)

    async def _abort(self, context: grpc.aio.ServicerContext, exc: BaseException) -> Any:
        code = _STATUS.get(type(exc), grpc.StatusCode.INTERNAL)
        if code is not grpc.StatusCode.INTERNAL:
            self._coordinator.reject(type(exc).__name__)
        _log.info("rejected code=%s kind=%s", code.name, type(exc).__name__)
        await context.abort(code, str(exc))
