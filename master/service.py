"""gRPC servicer: decodes through `wire`, makes one domain call, maps domain errors to a status
(docs/style.md §2). The status's trailing metadata names the domain error (`wire.error_kind`), so a
client tells e.g. a finished job apart without reading the message text."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc

from flexgc.common import wire
from flexgc.common.errors import (
    AlreadyConnectedError,
    AuthError,
    DuplicateResultError,
    InvalidTransitionError,
    JobFinishedError,
    RateLimitedError,
    SlotsFullError,
    StaleIterationError,
    UnknownSlotError,
    WireError,
)
from flexgc.master.coordinator import Coordinator
from flexgc.master.data import JobData
from flexgc.master.membership import Connection, SlotState, is_close
from flexgc.master.metrics import Metrics
from flexgc.v1 import coordinator_pb2 as pb
from flexgc.v1 import coordinator_pb2_grpc as pb_grpc

_log = logging.getLogger(__name__)

SERVICE_NAME = "flexgc.v1.Coordinator"
_STATUS: dict[type[BaseException], grpc.StatusCode] = {
    WireError: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownSlotError: grpc.StatusCode.NOT_FOUND,
    StaleIterationError: grpc.StatusCode.FAILED_PRECONDITION,
    DuplicateResultError: grpc.StatusCode.ALREADY_EXISTS,
    InvalidTransitionError: grpc.StatusCode.FAILED_PRECONDITION,
    AuthError: grpc.StatusCode.UNAUTHENTICATED,
    JobFinishedError: grpc.StatusCode.FAILED_PRECONDITION,
    SlotsFullError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    AlreadyConnectedError: grpc.StatusCode.ALREADY_EXISTS,
    RateLimitedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
_ERRORS = tuple(_STATUS)
HELLO_TIMEOUT_S = 10.0
READY_WAIT_S = 1.0  # how long a finished job's refusal waits for the Ready behind a hello

class CoordinatorService(pb_grpc.CoordinatorServicer):
    """The Coordinator service of flexgc.v1 (Join, Work, FetchPartition) over one `Coordinator`."""

    def __init__(self, coordinator: Coordinator, job: wire.JobInfo, data: JobData | None = None) -> None:
        self._coordinator = coordinator
        self._job = job
        self._data = data or JobData(job.data)
        self._closing = asyncio.Event()  # the job is over: streams still waiting for their hello end now

    def close(self) -> None:
        """The job is over: end the streams that wait for their hello (with FAILED_PRECONDITION, as a stream
        opened after the end gets), so that none is still running when the server stops: gRPC cancels those
        and logs each with a traceback."""
        self._closing.set()

    async def Join(self, request: pb.JoinRequest | wire.Undecodable,
                   context: grpc.aio.ServicerContext) -> pb.JoinReply:
        """A slot for the worker and the job's description, or a status naming why not."""
        try:
            grant = self._coordinator.join(wire.join_ask(request), context.peer())
        except _ERRORS as exc:
            refusal = self._status_of(exc)
        else:
            return wire.join_reply(grant, self._job)
        del request  # the abort's exception is in a reference cycle with this frame (see Work)
        await self._abort(context, refusal)

    async def Work(self, request_iterator: AsyncIterator[pb.WorkerMessage | wire.Undecodable],
                   context: grpc.aio.ServicerContext) -> AsyncIterator[pb.MasterMessage | wire.Preserialized]:
        """One worker's session: hello, then tasks out and results in until the job or the stream ends."""
        # A stream that ends before its request stream does closes gRPC's request iterator (`_close`), and a
        # refused one ends by `_refuse` and a return, never by context.abort: either would leave the call's
        # objects in a reference cycle that only a garbage collection frees, holding the last message (up to
        # 16 MiB) and the call's buffers. Under a flood of 15 MiB junk first messages that kept gigabytes.
        c = self._coordinator
        try:
            conn = await self._open(request_iterator, context)
        except asyncio.CancelledError:
            return  # the server stops (the job is over) before this stream started: it ends without a word
        if conn is None:
            return
        c.stream_opened(conn)
        reader = asyncio.create_task(self._read(request_iterator, conn))
        failure: list[tuple[grpc.StatusCode, str, str]] = []  # code, details, kind: never the exception
        reader.add_done_callback(lambda t: self._reader_done(t, conn, failure))
        try:
            while True:
                item = await conn.outbox.get()
                if is_close(item):
                    break
                yield item
        except asyncio.CancelledError:
            return  # the server is stopping with this stream's last message still in flight: the call ends
        finally:
            reader.cancel()
            c.members.close_stream(conn, "stream ended")
        if failure:
            with contextlib.suppress(asyncio.CancelledError):
                await _close(request_iterator)  # the reader failed: it is done with the iterator
            _refuse(context, *failure.pop())

    async def _open(self, request_iterator: AsyncIterator[pb.WorkerMessage | wire.Undecodable],
                    context: grpc.aio.ServicerContext) -> Connection | None:
        """The stream's connection, opened by its hello; None when it was refused (its status set) or ended."""
        c = self._coordinator
        hello = await self._hello(request_iterator)
        if isinstance(hello, tuple):
            c.metrics.reject(hello[2])
            await _close(request_iterator)
            _refuse(context, *hello)
            return None
        if hello is None:
            return None
        refusal: tuple[grpc.StatusCode, str, str] | None = None
        try:
            return c.members.open_stream(hello)
        except _ERRORS as exc:
            refusal = self._status_of(exc)
            finished = isinstance(exc, JobFinishedError)
        if finished:
            # a worker sends its Ready right behind its hello: read it first, so that the refusal does not
            # cross that write (gRPC then reports INTERNAL to the worker instead of this status, and the
            # worker rejoins a master that is about to go instead of ending like at a Shutdown)
            with contextlib.suppress(StopAsyncIteration, TimeoutError):
                await asyncio.wait_for(anext(aiter(request_iterator)), READY_WAIT_S)
        await _close(request_iterator)
        _refuse(context, *refusal)
        return None

    async def _hello(self, request_iterator: AsyncIterator[pb.WorkerMessage | wire.Undecodable]
                     ) -> wire.Hello | tuple[grpc.StatusCode, str, str] | None:
        """The stream's hello; or the status, details and counted kind that refuse a stream without one; None:
        it ended first. No message or exception of the stream outlives this call."""
        reading = asyncio.ensure_future(anext(aiter(request_iterator)))
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait((reading, closing), timeout=HELLO_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            if not reading.done():
                reading.cancel()
        if not reading.done() or reading.cancelled():
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await reading  # its cancellation is through before the iterator is closed
            if self._closing.is_set():
                return grpc.StatusCode.FAILED_PRECONDITION, "the job has finished; nothing to work on", \
                    "JobFinishedError"
            return grpc.StatusCode.DEADLINE_EXCEEDED, f"no hello within {HELLO_TIMEOUT_S} s", "no_hello"
        try:
            first = reading.result()
        except StopAsyncIteration:
            return None
        del reading
        try:
            return wire.hello(first)
        except WireError as exc:
            return grpc.StatusCode.INVALID_ARGUMENT, str(exc), "no_hello"

    def _reader_done(self, task: asyncio.Task[None], conn: Connection,
                     failure: list[tuple[grpc.StatusCode, str, str]]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        reason = "request stream ended"
        if exc is not None:
            # keep the status, not the exception: its traceback holds the frames that held the message
            reason = type(exc).__name__
            failure.append((self._count(exc), str(exc), reason))
            del exc
        # end of the request stream (client gone or half-closed): never treated as completion
        self._coordinator.members.close_stream(conn, reason)

    async def _read(self, request_iterator: AsyncIterator[pb.WorkerMessage | wire.Undecodable],
                    conn: Connection) -> None:
        c = self._coordinator
        async for msg in request_iterator:
            if conn.state is SlotState.GONE:
                # replaced by a newer connection of the same slot (or closed): whatever was still buffered
                # on this one is dropped, not judged
                c.metrics.discard("closed_connection")
                continue
            try:
                # bound of the time lists: the slot's partitions under the plan in use (an adaptive re-plan
                # may change it between iterations; a late answer of the previous plan is within k)
                c.on_message(conn, wire.worker_event(msg, conn.slot, c.code.k))
            except _ERRORS as exc:
                kind = "undecodable" if isinstance(msg, wire.Undecodable) else msg.WhichOneof("kind")
                _log.warning("rejected slot=%d kind=%s error=%s", conn.slot, kind, exc)
                raise

    async def FetchPartition(self, request: pb.PartitionRequest | wire.Undecodable,
                             context: grpc.aio.ServicerContext) -> AsyncIterator[pb.PartitionChunk]:
        """The rows of one partition the asking slot holds, in chunks."""
        c = self._coordinator
        try:
            codes = [c.code] if c.pending is None else [c.code, c.pending.code]  # an announced plan loads ahead
            X, y = self._data.rows_for(wire.partition_ask(request), c.members, codes)
        except _ERRORS as exc:
            refusal = self._status_of(exc)
        else:
            try:
                for chunk in wire.partition_chunks(X, y, c.chunk_bytes):
                    yield chunk
            except asyncio.CancelledError:
                pass  # the server stops (the job is over) mid-transfer: the call ends without a word
            return
        del request
        _refuse(context, *refusal)

    def _count(self, exc: BaseException) -> grpc.StatusCode:
        code = _STATUS.get(type(exc), grpc.StatusCode.INTERNAL)
        if code is not grpc.StatusCode.INTERNAL:
            self._coordinator.metrics.reject(type(exc).__name__)
        _log.info("rejected code=%s kind=%s", code.name, type(exc).__name__)
        return code

    def _status_of(self, exc: BaseException) -> tuple[grpc.StatusCode, str, str]:
        """The status, details and error kind that refuse a call for `exc` (counted); never the exception."""
        return self._count(exc), str(exc), type(exc).__name__

    @staticmethod
    async def _abort(context: grpc.aio.ServicerContext, refusal: tuple[grpc.StatusCode, str, str]) -> NoReturn:
        """End a unary call with `refusal` (call it outside an `except`: see Work)."""
        code, details, kind = refusal
        await context.abort(code, details, trailing_metadata=wire.error_metadata(kind))
        raise AssertionError("unreachable: abort raises")


async def _close(request_iterator: AsyncIterator[Any]) -> None:
    """Close gRPC's request iterator, an async generator that would otherwise stay suspended where it yielded
    its last message, in a reference cycle with the call's objects (only a garbage collection frees them, with
    the call's buffers). Only when nothing else is iterating it."""
    aclose = getattr(aiter(request_iterator), "aclose", None)
    if aclose is not None:
        with contextlib.suppress(RuntimeError, StopAsyncIteration):  # already running (a reader) or finished
            await aclose()


def _refuse(context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str, kind: str = "") -> None:
    """End a streaming call with `code` when its handler returns, without raising (see Work); `kind` names the
    domain error in the trailing metadata."""
    if kind:
        context.set_trailing_metadata(wire.error_metadata(kind))
    context.set_code(code)
    context.set_details(details)


class TokenCheck(grpc.aio.ServerInterceptor):
    """Refuses a Coordinator call whose metadata lacks the job's token before any of its messages is read:
    an unauthenticated caller gets UNAUTHENTICATED (counted) and never has a message parsed or a handler
    run. The health service is left open (probes carry no token)."""

    def __init__(self, token: str | None, metrics: Metrics) -> None:
        self._token = token.encode() if token else None
        self._metrics = metrics

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if self._token is None or handler is None or not details.method.startswith(f"/{SERVICE_NAME}/"):
            return handler
        given = wire.token_of(details.invocation_metadata).encode()
        if hmac.compare_digest(given, self._token):
            return handler
        self._metrics.reject("AuthError")
        return _refusal(handler)


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler that answers UNAUTHENTICATED without reading a single request message. It is streaming on
    both sides whatever the method: a unary handler would make gRPC receive the whole request first (up
    to the 16 MiB receive limit) to hand it over; a streaming one is never asked for it."""

    async def refuse(_requests: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "join token missing or wrong",
                            trailing_metadata=wire.error_metadata("AuthError"))

    return grpc.stream_stream_rpc_method_handler(refuse, response_serializer=handler.response_serializer)


def add_coordinator_service(service: pb_grpc.CoordinatorServicer, server: grpc.aio.Server) -> None:
    """As the generated add_CoordinatorServicer_to_server, but the Work stream's responses may be
    pre-serialized (`wire.Preserialized`): a task is serialized once per iteration, not once per worker; and
    request bytes that do not parse reach the servicer as `wire.Undecodable` (refused INVALID_ARGUMENT,
    counted) instead of failing in gRPC (UNKNOWN, uncounted)."""
    handlers: dict[str, Any] = {
        "Join": grpc.unary_unary_rpc_method_handler(
            service.Join, request_deserializer=wire.request_parser(pb.JoinRequest),
            response_serializer=pb.JoinReply.SerializeToString),
        "Work": grpc.stream_stream_rpc_method_handler(
            service.Work, request_deserializer=wire.request_parser(pb.WorkerMessage),
            response_serializer=wire.serialize_master_message),
        "FetchPartition": grpc.unary_stream_rpc_method_handler(
            service.FetchPartition, request_deserializer=wire.request_parser(pb.PartitionRequest),
            response_serializer=pb.PartitionChunk.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
