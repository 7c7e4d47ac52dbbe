"""Malformed traffic against a real master over loopback gRPC (issue 5, "Bad input").

Every master here is a real process started through LocalCluster:

* a *target* master (module fixture) with no real workers: the test plays its workers and checks
  that every bad call gets the status code the servicer maps, is counted in
  `flexgc_rejected_messages_total` (or, for stale and duplicate results, in
  `flexgc_discarded_results_total`), and that the master keeps serving (health SERVING);
* a *scratch* master that takes hypothesis-generated random message sequences on an authenticated
  stream: each one ends in exactly one counted refusal, never an INTERNAL error;
* a *real job* (three real worker processes) attacked while it runs, by an unauthenticated client
  and by a token holder that plays a faulty fourth worker: the job still ends with the parameters of
  centralized gradient descent (relative error <= 1e-9), and every counted status shows up in the
  rejected counter.
"""

from __future__ import annotations

import contextlib
import json
import queue
import random
import re
import socket
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from flexgc.common import transport, wire
from flexgc.harness.local import LocalCluster
from flexgc.master.server import SERVICE_NAME
from flexgc.v1 import coordinator_pb2 as pb
from flexgc.v1 import coordinator_pb2_grpc as pb_grpc
from tests.helpers import centralized_params, edited_chunk, job_config, wait_for

pytestmark = pytest.mark.slow

TOKEN = "fuzz-token-5b1c"
RPC_TIMEOUT_S = 10.0
FEATURES = 6
D = FEATURES + 1                       # a result: the gradient and the trailing loss
S = grpc.StatusCode
COUNTED = {S.INVALID_ARGUMENT, S.NOT_FOUND, S.FAILED_PRECONDITION, S.ALREADY_EXISTS, S.UNAUTHENTICATED}
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metric(port: int, sample: str, **labels: str) -> float:
    """Sum of the Prometheus samples named `sample` whose labels include `labels`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


def metrics_up(port: int) -> bool:
    try:
        metric(port, "flexgc_rejected_messages_total")
    except OSError:
        return False
    return True


def rejected(port: int, kind: str | None = None) -> float:
    return metric(port, "flexgc_rejected_messages_total", **({"kind": kind} if kind else {}))


def discarded(port: int, kind: str) -> float:
    return metric(port, "flexgc_discarded_results_total", kind=kind)


class Stream:
    """One Work stream driven message by message (sync gRPC; every read is bounded by the call deadline)."""

    def __init__(self, stub: pb_grpc.CoordinatorStub, timeout_s: float = RPC_TIMEOUT_S,
                 token: str | None = None) -> None:
        """`token`: what the call's metadata carries (default: the job's; "" for none)."""
        self._requests: queue.Queue[pb.WorkerMessage | None] = queue.Queue()
        metadata = wire.token_metadata(TOKEN if token is None else token)
        self.call = stub.Work(self._generate(), timeout=timeout_s, metadata=metadata)

    def _generate(self) -> Iterator[pb.WorkerMessage]:
        while (msg := self._requests.get()) is not None:
            yield msg

    def send(self, *messages: pb.WorkerMessage) -> None:
        for msg in messages:
            self._requests.put(msg)

    def recv(self) -> pb.MasterMessage:
        return next(self.call)

    def recv_until(self, kind: str) -> Any:
        while True:
            msg = self.recv()
            if msg.WhichOneof("kind") == kind:
                return getattr(msg, kind)

    def status(self) -> tuple[grpc.StatusCode, str]:
        """Read to the end of the stream; the status it ended with."""
        try:
            for _ in self.call:
                pass
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
        return self.call.code(), self.call.details() or ""

    def close(self) -> None:
        self._requests.put(None)
        self.call.cancel()


def hello(slot: int, reply: pb.JoinReply, worker_id: str) -> pb.WorkerMessage:
    """One process per worker id (as a real worker reconnecting): a new stream replaces the old one at once."""
    return pb.WorkerMessage(hello=pb.Hello(slot=slot, session_id=reply.session_id, worker_id=worker_id,
                                           instance_id=f"process-of-{worker_id}"))


def ready(after: int) -> pb.WorkerMessage:
    return pb.WorkerMessage(ready=pb.Ready(after_iteration=after))


def result(chunk: pb.ResultChunk) -> pb.WorkerMessage:
    return pb.WorkerMessage(result=chunk)


def status_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return S.OK, ""


@dataclass
class Master:
    """A master process and the client side the test uses against it."""

    cluster: LocalCluster
    metrics_port: int
    out: Path
    channel: grpc.Channel = field(init=False)
    stub: pb_grpc.CoordinatorStub = field(init=False)
    replies: dict[int, pb.JoinReply] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(self.cluster.target, options=transport.channel_options(32 << 20))
        self.stub = pb_grpc.CoordinatorStub(self.channel)

    @property
    def port(self) -> int:
        assert self.cluster.port is not None
        return self.cluster.port

    def join(self, slot: int, worker_id: str | None = None) -> pb.JoinReply:
        worker_id = worker_id or f"fuzz-{slot}"
        reply = self.stub.Join(pb.JoinRequest(worker_id=worker_id, preferred_slot=slot,
                                              instance_id=f"process-of-{worker_id}"), timeout=RPC_TIMEOUT_S,
                               metadata=wire.token_metadata(TOKEN))
        assert reply.slot == slot
        self.replies[slot] = reply
        return reply

    def open_worker(self, slot: int) -> tuple[Stream, int]:
        """A Work stream for `slot` that said hello and Ready and received the current task."""
        stream = Stream(self.stub)
        stream.send(hello(slot, self.replies[slot], f"fuzz-{slot}"), ready(-1))
        task = stream.recv_until("task")
        if not task.params_inline:  # small parameters travel inside the Task
            params = stream.recv_until("params")
            while not params.last:
                params = stream.recv_until("params")
        return stream, task.iteration

    def serving(self) -> bool:
        stub = health_pb2_grpc.HealthStub(self.channel)
        return all(stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=RPC_TIMEOUT_S).status
                   == health_pb2.HealthCheckResponse.SERVING for name in ("", SERVICE_NAME))

    def assert_up(self) -> None:
        assert self.cluster.master is not None and self.cluster.master.is_alive(), "master process died"
        assert self.serving()


def chunks_of(iteration: int, slot: int, level: int, vector: np.ndarray, per_chunk: int) -> list[pb.ResultChunk]:
    return [m.result for m in wire.result_chunks(iteration, slot, level, vector, per_chunk * 8)]


copy = edited_chunk


# Each mutation turns a valid result into a sequence that must fail at its last chunk, never completing a row.
MUTATIONS: dict[str, tuple[grpc.StatusCode, str, str]] = {    # status, counted kind, what the details say
    "dtype": (S.INVALID_ARGUMENT, "WireError", "dtype='>f8', expected '<f8'"),
    "dtype-f4": (S.INVALID_ARGUMENT, "WireError", "dtype='<f4', expected '<f8'"),
    "total_elements": (S.INVALID_ARGUMENT, "WireError", f"expected d={D}"),
    "level": (S.INVALID_ARGUMENT, "WireError", "allowed 0..1"),
    "nan": (S.INVALID_ARGUMENT, "WireError", "NaN/Inf in result"),
    "inf": (S.INVALID_ARGUMENT, "WireError", "NaN/Inf in result"),
    "first-offset": (S.INVALID_ARGUMENT, "WireError", "expected 0"),
    "gap": (S.INVALID_ARGUMENT, "WireError", "do not fit row|expected 0"),
    "replay": (S.INVALID_ARGUMENT, "WireError", "do not fit row"),
    "truncated": (S.INVALID_ARGUMENT, "WireError", "truncated result"),
    "oversized": (S.INVALID_ARGUMENT, "WireError", "do not fit row"),
    "ragged": (S.INVALID_ARGUMENT, "WireError", "is not a multiple of 8"),
    "times": (S.INVALID_ARGUMENT, "WireError", "partition times"),
    "other-slot": (S.NOT_FOUND, "UnknownSlotError", "on the stream of slot"),
    "future": (S.FAILED_PRECONDITION, "StaleIterationError", "is in the future"),
}


def malformed(kind: str, good: list[pb.ResultChunk], where: int, n: int) -> list[pb.ResultChunk]:
    """`good` (>= 2 chunks) with one defect at chunk `where`; the chunks before it are sent as they are."""
    last = len(good) - 1
    i = where % len(good)
    head = good[:i]
    c = good[i]
    nan_data = bytearray(c.data)
    nan_data[:8] = np.array([np.nan if kind == "nan" else -np.inf]).tobytes()
    edits: dict[str, Any] = {
        "dtype": lambda: copy(c, dtype=">f8"),
        "dtype-f4": lambda: copy(c, dtype="<f4"),
        "total_elements": lambda: copy(c, total_elements=D + 1 + where % 5),
        "level": lambda: copy(c, level=2 + where % 7),
        "nan": lambda: copy(c, data=bytes(nan_data)),
        "inf": lambda: copy(c, data=bytes(nan_data)),
        "ragged": lambda: copy(c, data=c.data[:-3]),
        "times": lambda: copy(c, times=pb.PartitionTimes(compute_ms=[1.0] * 3)),
        "other-slot": lambda: copy(c, slot=(c.slot + 1 + where % (n - 1)) % n),
        "future": lambda: copy(c, iteration=c.iteration + 1 + where % 3),
        "oversized": lambda: copy(good[last], data=good[last].data + good[0].data),
    }
    if kind in edits:
        return [*good[:last], edits[kind]()] if kind == "oversized" else [*head, edits[kind]()]
    if kind == "first-offset":
        return [good[1 + where % last]]
    if kind == "gap":
        j = min(i, last - 1)
        return [*good[:j], good[j + 1]]
    j = min(i, last - 1)                       # replay / truncated: never on the last chunk
    if kind == "replay":
        return [*good[:j + 1], good[j]]
    return [*good[:j], copy(good[j], last=True)]        # truncated


# -- the target master --------------------------------------------------------------------------


def workerless_master(out: Path, **overrides: Any) -> Iterator[Master]:
    """A master of 3 slots that never finishes and never times an iteration out; the test joins every slot
    (nobody connects, so iteration 0 starts after join_timeout_s, with the 3 workers that joined, and waits for
    results forever; the joins' grants hold their slots for 5 s, longer than the join timeout)."""
    cfg = job_config(out, **{**dict(workers=3, code="nested:levels=0,1", iterations=100_000, features=FEATURES,
                                    token=TOKEN, join_timeout_s=2.0, deadline_s=0.0, metrics_port=free_port(),
                                    momentum=0.0), **overrides})
    cluster = LocalCluster(cfg)
    try:
        cluster.start_master()
        master = Master(cluster, cfg.metrics_port, out)
        for slot in range(3):
            master.join(slot)
        wait_for(lambda: metrics_up(cfg.metrics_port), 20, "the metrics endpoint")
        yield master
        master.assert_up()
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Master]:
    """Here only the tests decide which rows complete (the malformed ones never do)."""
    yield from workerless_master(tmp_path_factory.mktemp("target"), lr=1e-6)


@pytest.mark.parametrize(("request_fields", "code", "kind"), [
    (dict(worker_id="x", preferred_slot=-1, token="wrong"), S.UNAUTHENTICATED, "AuthError"),
    (dict(worker_id="x", preferred_slot=-1, token=""), S.UNAUTHENTICATED, "AuthError"),
    (dict(worker_id="x", preferred_slot=3, token=TOKEN), S.NOT_FOUND, "UnknownSlotError"),
    (dict(worker_id="x", preferred_slot=-2, token=TOKEN), S.NOT_FOUND, "UnknownSlotError"),
    (dict(worker_id="", preferred_slot=-1, token=TOKEN), S.INVALID_ARGUMENT, "WireError"),
    (dict(worker_id="w" * 300, preferred_slot=-1, token=TOKEN), S.INVALID_ARGUMENT, "WireError"),
])
def test_bad_join(target: Master, request_fields: dict[str, Any], code: grpc.StatusCode, kind: str) -> None:
    before = rejected(target.metrics_port, kind)

    fields = dict(request_fields)
    token = fields.pop("token")
    got, details = status_of(lambda: target.stub.Join(pb.JoinRequest(**fields), timeout=RPC_TIMEOUT_S,
                                                      metadata=wire.token_metadata(token)))

    assert got == code, details
    assert TOKEN not in details
    assert rejected(target.metrics_port, kind) == before + 1
    target.assert_up()


@pytest.mark.parametrize(("request_fields", "code", "kind"), [
    (dict(slot=0, partition=0, token="nope"), S.UNAUTHENTICATED, "AuthError"),
    (dict(slot=0, partition=0, token=TOKEN, session_id="old-session"), S.FAILED_PRECONDITION, "StaleIterationError"),
    (dict(slot=7, partition=0, token=TOKEN), S.NOT_FOUND, "UnknownSlotError"),
    (dict(slot=-1, partition=0, token=TOKEN), S.NOT_FOUND, "UnknownSlotError"),
    (dict(slot=0, partition=2, token=TOKEN), S.NOT_FOUND, "UnknownSlotError"),       # slot 0 holds 0 and 1
    (dict(slot=0, partition=0, token=TOKEN), S.INVALID_ARGUMENT, "WireError"),       # synthetic data
])
def test_bad_fetch_partition(target: Master, request_fields: dict[str, Any], code: grpc.StatusCode,
                             kind: str) -> None:
    fields = {"session_id": target.replies[0].session_id, **request_fields}
    token = fields.pop("token")
    before = rejected(target.metrics_port, kind)

    got, details = status_of(lambda: list(target.stub.FetchPartition(pb.PartitionRequest(**fields),
                                                                     timeout=RPC_TIMEOUT_S,
                                                                     metadata=wire.token_metadata(token))))

    assert got == code, details
    assert rejected(target.metrics_port, kind) == before + 1
    target.assert_up()


def _first_messages(target: Master) -> dict[str, tuple[list[pb.WorkerMessage], grpc.StatusCode, str]]:
    reply = target.replies[1]
    return {
        "ready-before-hello": ([ready(-1)], S.INVALID_ARGUMENT, "no_hello"),
        "result-before-hello": ([result(pb.ResultChunk(iteration=0, slot=1, dtype="<f8", total_elements=D))],
                                S.INVALID_ARGUMENT, "no_hello"),
        "empty-message": ([pb.WorkerMessage()], S.INVALID_ARGUMENT, "no_hello"),
        "hello-bad-token": ([hello(1, reply, "fuzz-1")], S.UNAUTHENTICATED, "AuthError"),      # with token "guess"
        "hello-no-token": ([hello(1, reply, "fuzz-1")], S.UNAUTHENTICATED, "AuthError"),       # with no token
        "hello-old-session": ([pb.WorkerMessage(hello=pb.Hello(slot=1, session_id="0" * 32, worker_id="fuzz-1"))],
                              S.FAILED_PRECONDITION, "StaleIterationError"),
        "hello-unknown-slot": ([hello(99, reply, "fuzz-1")], S.NOT_FOUND, "UnknownSlotError"),
        "hello-negative-slot": ([hello(-1, reply, "fuzz-1")], S.NOT_FOUND, "UnknownSlotError"),
        "hello-someone-elses-slot": ([hello(2, reply, "fuzz-1")], S.NOT_FOUND, "UnknownSlotError"),
        "hello-never-joined": ([hello(1, reply, "stranger")], S.NOT_FOUND, "UnknownSlotError"),
    }


@pytest.mark.parametrize("case", ["ready-before-hello", "result-before-hello", "empty-message", "hello-bad-token",
                                  "hello-no-token", "hello-old-session", "hello-unknown-slot",
                                  "hello-negative-slot", "hello-someone-elses-slot", "hello-never-joined"])
def test_bad_work_handshake(target: Master, case: str) -> None:
    messages, code, kind = _first_messages(target)[case]
    before = rejected(target.metrics_port, kind)
    stream = Stream(target.stub, token={"hello-bad-token": "guess", "hello-no-token": ""}.get(case))
    try:
        stream.send(*messages)

        got, details = stream.status()
    finally:
        stream.close()

    assert got == code, details
    assert TOKEN not in details
    assert rejected(target.metrics_port, kind) == before + 1
    target.assert_up()


@pytest.mark.parametrize(("message", "match"), [
    (pb.WorkerMessage(), "unexpected message kind None"),
    (pb.WorkerMessage(hello=pb.Hello(slot=1)), "unexpected message kind 'hello'"),
    (pb.WorkerMessage(level_done=pb.LevelDone(iteration=0, level=0)), "LevelDone under signaling=push"),
    (pb.WorkerMessage(level_done=pb.LevelDone(iteration=0, level=9)), "level=9"),
    (ready(-5), "Ready(after=-5) but iteration 0 was already sent"),
    (pb.WorkerMessage(cancel_ack=pb.CancelAck(iteration=-1, partitions_done=99)), None),
])
def test_bad_message_on_a_live_stream(target: Master, message: pb.WorkerMessage, match: str | None) -> None:
    stream, iteration = target.open_worker(1)
    if message.WhichOneof("kind") == "cancel_ack":
        message.cancel_ack.iteration = iteration               # the current iteration: partitions_done is checked
        match = "partitions_done=99 out of range"
    before = rejected(target.metrics_port, "WireError")
    try:
        stream.send(message)

        got, details = stream.status()
    finally:
        stream.close()

    assert got == S.INVALID_ARGUMENT and match is not None and match in (details or ""), details
    assert rejected(target.metrics_port, "WireError") == before + 1
    target.assert_up()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(sorted(MUTATIONS)), slot=st.integers(0, 2), level=st.integers(0, 1),
       per_chunk=st.integers(1, D - 1), where=st.integers(0, 1000),
       values=st.lists(st.floats(-1e6, 1e6), min_size=D, max_size=D))
def test_malformed_result_sequences_get_their_status(target: Master, kind: str, slot: int, level: int,
                                                     per_chunk: int, where: int, values: list[float]) -> None:
    code, counted_as, says = MUTATIONS[kind]
    stream, iteration = target.open_worker(slot)
    sequence = malformed(kind, chunks_of(iteration, slot, level, np.array(values), per_chunk), where, 3)
    before = rejected(target.metrics_port, counted_as)
    try:
        stream.send(*map(result, sequence))

        got, details = stream.status()
    finally:
        stream.close()

    assert got == code, f"{kind}: {details}"
    assert re.search(says, details), f"{kind}: {details}"
    assert rejected(target.metrics_port, counted_as) == before + 1
    assert target.serving()


def test_duplicates_same_stream_refused_new_stream_dropped(target: Master) -> None:
    stream, iteration = target.open_worker(0)
    complete = [result(c) for c in chunks_of(iteration, 0, 0, np.ones(D), 3)]
    dup_before = rejected(target.metrics_port, "DuplicateResultError")
    dropped_before = discarded(target.metrics_port, "duplicate")
    try:
        stream.send(*complete, *complete)                    # level 0 of one slot: no decode yet
        got, details = stream.status()
    finally:
        stream.close()
    again, again_iteration = target.open_worker(0)           # a reconnect recomputes and resends
    try:
        again.send(*complete, pb.WorkerMessage())
        again_status, again_details = again.status()
    finally:
        again.close()

    assert (got, details) == (S.ALREADY_EXISTS, f"slot=0 iteration={iteration} level=0: already received on "
                                                "this connection")
    assert rejected(target.metrics_port, "DuplicateResultError") == dup_before + 1
    assert again_iteration == iteration
    assert (again_status, again_details) == (S.INVALID_ARGUMENT, "slot=0: unexpected message kind None on Work")
    assert discarded(target.metrics_port, "duplicate") == dropped_before + len(complete)
    target.assert_up()


def test_half_closed_result_never_completes_and_stale_results_are_dropped(target: Master) -> None:
    one, iteration = target.open_worker(1)
    two, _ = target.open_worker(2)
    vector = np.full(D, 0.5)
    partial = chunks_of(iteration, 2, 1, vector, 2)
    two.send(result(partial[0]), result(partial[1]))          # then the client goes away mid-result
    two.send(pb.WorkerMessage(heartbeat=pb.Heartbeat()))
    two.close()
    one.send(*[result(c) for c in chunks_of(iteration, 1, 1, vector, 2)])
    dropped_before = discarded(target.metrics_port, "duplicate")
    stale_before = discarded(target.metrics_port, "stale")
    three, again = target.open_worker(2)
    try:
        assert again == iteration

        three.send(*[result(c) for c in chunks_of(iteration, 2, 1, vector, 2)])   # completes: the decode runs

        assert one.recv_until("cancel").iteration == iteration
        assert discarded(target.metrics_port, "duplicate") == dropped_before   # the half-closed one never counted
        one.send(pb.WorkerMessage(cancel_ack=pb.CancelAck(iteration=iteration, partitions_done=2)), ready(iteration))
        assert one.recv_until("task").iteration == iteration + 1
        stale = [result(c) for c in chunks_of(iteration, 1, 0, np.full(D, 1e300), 3)]
        one.send(*stale, pb.WorkerMessage())                   # stale: dropped; then a bad message ends it
        got, details = one.status()
    finally:
        one.close()
        three.close()

    assert (got, details) == (S.INVALID_ARGUMENT, "slot=1: unexpected message kind None on Work")
    assert discarded(target.metrics_port, "stale") == stale_before + len(stale)
    target.assert_up()


def test_all_slots_held_refuses_a_newcomer(target: Master) -> None:
    holders = [target.open_worker(slot)[0] for slot in range(3)]          # each got its task: connected
    before = rejected(target.metrics_port, "SlotsFullError")
    try:
        got, details = status_of(lambda: target.stub.Join(
            pb.JoinRequest(worker_id="newcomer", preferred_slot=-1), timeout=RPC_TIMEOUT_S,
            metadata=wire.token_metadata(TOKEN)))
    finally:
        for holder in holders:
            holder.close()

    assert got == S.RESOURCE_EXHAUSTED
    assert details == ("all 3 slots are taken: held by connected workers, reserved for disconnected ones that may "
                       "come back (for 30 s after they left), or granted in the last 5 s to workers about to "
                       "connect")
    assert rejected(target.metrics_port, "SlotsFullError") == before + 1
    target.assert_up()


def _send_oversized(target: Master) -> tuple[grpc.StatusCode, str]:
    stream, iteration = target.open_worker(1)
    huge = pb.ResultChunk(iteration=iteration, slot=1, level=0, dtype="<f8", total_elements=D, offset=0,
                          data=b"\x00" * (transport.MAX_MESSAGE_BYTES + 8), last=False)
    try:
        stream.send(result(huge))
        return stream.status()
    finally:
        stream.close()


def test_oversized_message_is_refused_and_counted(target: Master) -> None:
    before = rejected(target.metrics_port)

    got, details = _send_oversized(target)

    assert got == S.INVALID_ARGUMENT, details
    assert "oversized" in details
    assert rejected(target.metrics_port) == before + 1
    target.assert_up()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.sampled_from([b"", H2_PREFACE, b"GET /flexgc.v1.Coordinator/Join HTTP/1.1\r\nHost: x\r\n\r\n",
                               bytes.fromhex("160301020001000001fc0303")]),
       payload=st.binary(max_size=4096))
def test_garbage_bytes_on_the_port(target: Master, prefix: bytes, payload: bytes) -> None:
    with socket.create_connection(("127.0.0.1", target.port), timeout=2.0) as sock, contextlib.suppress(OSError):
        sock.sendall(prefix + payload)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):            # the server answers (GOAWAY) and closes, or the timeout ends it
            pass

    assert target.serving()


def test_half_open_connections_do_not_stop_the_service(target: Master) -> None:
    silent = [socket.create_connection(("127.0.0.1", target.port), timeout=2.0) for _ in range(16)]
    preface_only = [socket.create_connection(("127.0.0.1", target.port), timeout=2.0) for _ in range(4)]
    mute_streams = [Stream(target.stub) for _ in range(8)]      # Work opened, nothing ever sent
    try:
        for sock in preface_only:
            sock.sendall(H2_PREFACE[:10])

        target.assert_up()
        got, _ = status_of(lambda: target.stub.Join(pb.JoinRequest(worker_id="x"), timeout=RPC_TIMEOUT_S,
                                                    metadata=wire.token_metadata("bad")))
        stream, _ = target.open_worker(1)
        stream.send(pb.WorkerMessage())
        live, _ = stream.status()
        stream.close()
    finally:
        for sock in silent + preface_only:
            sock.close()
        for mute in mute_streams:
            mute.close()

    assert (got, live) == (S.UNAUTHENTICATED, S.INVALID_ARGUMENT)
    target.assert_up()


# -- random message sequences on an authenticated stream ------------------------------------------


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Master]:
    """A second master for fully random traffic: random results may complete rows and decode here."""
    yield from workerless_master(tmp_path_factory.mktemp("scratch"), lr=0.0)


_ints = st.one_of(st.integers(-3, 3), st.integers(-2**63, 2**63 - 1))
_int32s = st.one_of(st.integers(-3, 3), st.integers(-2**31, 2**31 - 1))
_floats = st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4)
_times = st.builds(pb.PartitionTimes, compute_ms=_floats, delay_ms=_floats)


def _result_strategy(slot: int) -> st.SearchStrategy[pb.WorkerMessage]:
    return st.builds(
        lambda iteration, slot_, level, dtype, total, offset, data, last, times: result(pb.ResultChunk(
            iteration=iteration, slot=slot_, level=level, dtype=dtype, total_elements=total, offset=offset,
            data=data, last=last, times=times)),
        iteration=st.sampled_from([-1, 0, 1, 2, 3, 2**40]), slot_=st.sampled_from([slot, slot, -1, 3, 2**31 - 1]),
        level=st.sampled_from([0, 1, 1, 2, -1]), dtype=st.sampled_from(["<f8", "<f8", "<f4", ">f8", "float64", ""]),
        total=st.sampled_from([D, D, D - 1, D + 1, 0, -1, 2**62]), offset=st.sampled_from([0, 0, 2, 4, 7, -1]),
        data=st.one_of(st.binary(max_size=8 * D + 3),
                       st.lists(st.floats(width=64), min_size=0, max_size=D).map(
                           lambda xs: np.array(xs, dtype="<f8").tobytes())),
        last=st.booleans(), times=st.one_of(st.none(), _times))


def _message_strategy(slot: int) -> st.SearchStrategy[pb.WorkerMessage]:
    return st.one_of(
        _result_strategy(slot),
        st.builds(lambda a: ready(a), _ints),
        st.builds(lambda i, lv, t: pb.WorkerMessage(level_done=pb.LevelDone(iteration=i, level=lv, times=t)),
                  _ints, _int32s, _times),
        st.builds(lambda i, p, t, f: pb.WorkerMessage(cancel_ack=pb.CancelAck(iteration=i, partitions_done=p,
                                                                             times=t, finished=f)),
                  _ints, st.integers(-2**31, 2**31 - 1), _times, st.booleans()),
        st.just(pb.WorkerMessage(heartbeat=pb.Heartbeat())),
        st.builds(lambda i, r: pb.WorkerMessage(task_rejected=pb.TaskRejected(iteration=i, reason=r)),
                  _ints, st.text(max_size=40)),
    )


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), slot=st.integers(0, 2))
def test_random_message_sequences_end_in_one_counted_rejection(scratch: Master, data: st.DataObject,
                                                               slot: int) -> None:
    stream, _ = scratch.open_worker(slot)
    messages = data.draw(st.lists(_message_strategy(slot), max_size=8))
    by_worker = sum(m.WhichOneof("kind") == "task_rejected" for m in messages)
    before = _refusals(scratch)
    try:
        stream.send(*messages, pb.WorkerMessage())       # whatever came before, this one is refused

        got, details = stream.status()
    finally:
        stream.close()

    assert got in COUNTED, f"{got}: {details}"
    refused, reported = (after - first for after, first in zip(_refusals(scratch), before))
    assert refused == 1                                  # one refusal ends the stream
    assert reported <= by_worker                         # TaskRejected notes are counted, not refused
    assert scratch.serving()


def _refusals(master: Master) -> tuple[float, float]:
    """(rejections answered with a status, TaskRejected notes from workers)."""
    reported = rejected(master.metrics_port, "task_rejected_by_worker")
    return rejected(master.metrics_port) - reported, reported


# -- a real job under attack ----------------------------------------------------------------------


class Attacker:
    """Bad traffic of every kind against a running job; tallies the statuses it got back."""

    def __init__(self, master: Master, seed: int, job_over: Callable[[], bool]) -> None:
        self.m = master
        self.job_over = job_over
        self.rng = random.Random(seed)
        self.codes: Counter[grpc.StatusCode] = Counter()
        self.rounds = 0
        self.reply: pb.JoinReply | None = None

    def tally(self, code: grpc.StatusCode, details: str = "") -> None:
        assert code in COUNTED | {S.OK, S.CANCELLED}, f"{code}: {details}"
        assert TOKEN not in details
        self.codes[code] += 1

    def unauthenticated(self) -> None:
        stub = self.m.stub
        bad, good = wire.token_metadata("x"), wire.token_metadata(TOKEN)
        self.tally(*status_of(lambda: stub.Join(pb.JoinRequest(worker_id="eve", preferred_slot=-1),
                                                timeout=RPC_TIMEOUT_S, metadata=bad)))
        self.tally(*status_of(lambda: stub.Join(pb.JoinRequest(worker_id="eve", preferred_slot=9),
                                                timeout=RPC_TIMEOUT_S, metadata=good)))
        self.tally(*status_of(lambda: list(stub.FetchPartition(pb.PartitionRequest(slot=0, partition=0),
                                                               timeout=RPC_TIMEOUT_S, metadata=bad))))
        for first, token in (([ready(-1)], TOKEN), ([pb.WorkerMessage(hello=pb.Hello(slot=0, worker_id="eve"))], "x"),
                             ([pb.WorkerMessage(hello=pb.Hello(slot=0, worker_id="eve", session_id=self.reply.session_id
                                                               if self.reply else ""))], TOKEN)):
            stream = Stream(self.m.stub, token=token)
            stream.send(*first)
            self.tally(*stream.status())
            stream.close()

    def garbage(self) -> None:
        with socket.create_connection(("127.0.0.1", self.m.port), timeout=2.0) as sock, \
                contextlib.suppress(OSError):
            sock.sendall(self.rng.choice([b"", H2_PREFACE]) + self.rng.randbytes(self.rng.randint(1, 2048)))
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass

    def faulty_worker(self) -> None:
        """Slot 3 with the token: takes the task, sends a malformed result (or a stale / future one)."""
        if self.reply is None:
            self.reply = self.m.stub.Join(pb.JoinRequest(worker_id="faulty", preferred_slot=3),
                                          timeout=RPC_TIMEOUT_S, metadata=wire.token_metadata(TOKEN))
        if self.job_over():
            return                              # a stream opened after the job's Shutdown never gets a task
        stream = Stream(self.m.stub)
        try:
            stream.send(hello(3, self.reply, "faulty"), ready(-1))
            try:
                task = stream.recv_until("task")
            except grpc.RpcError as exc:
                # the job ended meanwhile: a stream opened after the Shutdown is refused (and counted)
                if exc.code() == S.FAILED_PRECONDITION:
                    assert "finished" in (exc.details() or ""), exc.details()
                    self.tally(exc.code(), exc.details() or "")
                else:  # the server went away at the end of the job
                    assert self.job_over(), f"no task for the faulty worker while the job runs: {exc}"
                return
            except StopIteration:
                # the job ended meanwhile: the Shutdown came instead of a task
                assert self.job_over(), "no task for the faulty worker while the job runs"
                return
            vector = np.array([self.rng.uniform(-1e3, 1e3) for _ in range(D)])
            level, per_chunk = self.rng.randint(0, 1), self.rng.randint(1, D - 1)
            good = chunks_of(task.iteration, 3, level, vector, per_chunk)
            pick = self.rng.choice([*sorted(MUTATIONS), "stale", "future-complete", "half-close"])
            if pick == "stale":
                sequence = chunks_of(task.iteration - 1, 3, level, vector, per_chunk) if task.iteration else []
            elif pick == "future-complete":
                sequence = chunks_of(task.iteration + 1, 3, level, vector, per_chunk)
            elif pick == "half-close":
                stream.send(result(good[0]))
                stream.close()
                return
            else:
                sequence = malformed(pick, good, self.rng.randint(0, 100), 4)
            stream.send(*map(result, sequence), pb.WorkerMessage())   # the last one is bad in any case
            self.tally(*stream.status())
        finally:
            stream.close()

    def round(self, faulty: bool = True) -> None:
        steps = [self.unauthenticated, self.garbage, *[self.faulty_worker] * (3 if faulty else 0)]
        self.rng.shuffle(steps)
        for step in steps:
            step()
        self.rounds += 1


def test_job_under_attack_ends_with_the_exact_parameters(tmp_path: Path) -> None:
    cfg = job_config(tmp_path, workers=4, code="nested:levels=0,1", iterations=30, features=FEATURES, token=TOKEN,
                     join_timeout_s=60.0, delay="shifted-exp:a=1,mu=1000,unit_s=0.02", linger=True,
                     metrics_port=free_port())
    summary_path = tmp_path / "summary.json"
    silent: list[socket.socket] = []
    with LocalCluster(cfg) as cluster:
        cluster.start_master()
        master = Master(cluster, cfg.metrics_port, tmp_path)
        attacker = Attacker(master, seed=5, job_over=summary_path.exists)
        for slot in range(3):
            cluster.start_worker(slot)
        attacker.faulty_worker()          # slot 3 is the attacker's from the start: the job starts with it
        silent += [socket.create_connection(("127.0.0.1", master.port), timeout=2.0) for _ in range(8)]
        mute = [Stream(master.stub) for _ in range(4)]
        deadline = time.monotonic() + 60
        try:
            while not summary_path.exists() and time.monotonic() < deadline:
                attacker.round()
            rounds_during_job = attacker.rounds
            attacker.round(faulty=False)                             # and once more after the job
            master.assert_up()
            counted = sum(n for code, n in attacker.codes.items() if code in COUNTED)
            total_rejected = rejected(cfg.metrics_port)
        finally:
            for sock in silent:
                sock.close()
            for stream in mute:
                stream.close()

    summary = json.loads(summary_path.read_text())
    params = np.load(tmp_path / "params.npy")
    reference = centralized_params(cfg)
    assert rounds_during_job >= 2, "the job ended before the attack got going"
    assert summary["exact_iterations"] == cfg.iterations
    assert np.linalg.norm(params - reference) <= 1e-9 * np.linalg.norm(reference)
    assert counted > 0 and total_rejected == counted
    assert {"AuthError", "WireError", "UnknownSlotError", "no_hello"} <= set(summary["rejected"])
