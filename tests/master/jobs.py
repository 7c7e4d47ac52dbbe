"""A coordinator driven in process, the way the servicer drives it: the fixture of the master's tests.

The code is nested:levels=0,1 on n = 3 slots (k = 3): slot i computes partitions (i, i+1 mod 3); level 0
needs all three slots, level 1 any two.
"""


from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np

from flexgc.common import wire
from flexgc.common.codes import parse_code
from flexgc.common.decoder import Decoding
from flexgc.common.models import DataSpec
from flexgc.master.coordinator import Coordinator, Iteration, IterationPhase, Outcome
from flexgc.master.membership import Connection
from flexgc.master.metrics import Metrics
from flexgc.v1 import coordinator_pb2 as pb

T = TypeVar("T")
TOKEN = "tok-42"
N, FEATURES = 3, 5
D = FEATURES + 1                 # gradient plus the trailing loss
CHUNK_BYTES = 16                 # 2 float64 elements per chunk: every result is 3 chunks

# The lifecycles of docs/design.md §4.7 (docstrings of membership.py and coordinator.py).
SLOT_MOVES = {
    ("JOINED", "IDLE"), ("IDLE", "IDLE"), ("IDLE", "WORKING"),
    ("WORKING", "CANCELLING"), ("WORKING", "IDLE"), ("CANCELLING", "IDLE"),
    ("JOINED", "GONE"), ("IDLE", "GONE"), ("WORKING", "GONE"), ("CANCELLING", "GONE"),
}
PHASE_MOVES = {("SCHEDULED", "COLLECTING"), ("COLLECTING", "EXACT"), ("COLLECTING", "APPROXIMATE"),
               ("COLLECTING", "FAILED")}



def run(make: Callable[[], Awaitable[T]], timeout_s: float = 10.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(make(), timeout_s)
    return asyncio.run(bounded())


class Job:
    """A coordinator plus known partial gradients G[t] (k, D) per iteration; coded messages are B[l, i] @ G[t]."""

    def __init__(self, *, decode_inline_elements: int = 1 << 20,
                 deadline_s: float = 0.0, on_deadline: str = "fail", dtype: str = "float64",
                 code: str = "nested:levels=0,1") -> None:
        self.code = parse_code(code, N)
        self.metrics = Metrics()
        self.c = Coordinator(self.code, DataSpec(samples=30, features=FEATURES, partitions=self.code.k),
                             dtype=dtype, chunk_bytes=CHUNK_BYTES, deadline_s=deadline_s, on_deadline=on_deadline,
                             metrics=self.metrics, decode_inline_elements=decode_inline_elements)
        self.G: dict[int, np.ndarray] = {}

    def partials(self, iteration: int) -> np.ndarray:
        if iteration not in self.G:
            self.G[iteration] = np.random.default_rng(100 + iteration).standard_normal((self.code.k, D)) * 10
        return self.G[iteration]

    def expected(self, iteration: int) -> np.ndarray:
        return self.partials(iteration).sum(axis=0)

    def coded(self, iteration: int, level: int, slot: int) -> np.ndarray:
        return self.code.B[level, slot] @ self.partials(iteration)

    def chunks(self, iteration: int, level: int, slot: int, vector: np.ndarray | None = None,
               task_done: bool = False, times: wire.PartitionTimes | None = None) -> list[pb.ResultChunk]:
        v = self.coded(iteration, level, slot) if vector is None else vector
        return [m.result for m in wire.result_chunks(iteration, slot, level, v, CHUNK_BYTES, times,
                                                     task_done=task_done)]

    def connect(self, slot: int, worker_id: str | None = None, ready_after: int | None = -1) -> Connection:
        wid = worker_id or f"w{slot}"
        grant = self.join(wid, slot)
        conn = self.open_stream(grant.slot, wid, grant.session_id)
        if ready_after is not None:
            self.c.on_ready(conn, ready_after)
        return conn

    # A worker id's process is "proc-<id>" unless a test says otherwise: joining again with the same id is
    # then a reconnect of that process, which replaces its old connection at once.
    def join(self, worker_id: str, preferred_slot: int, instance_id: str | None = None,
             peer: str = "") -> wire.JoinGrant:
        instance = f"proc-{worker_id}" if instance_id is None else instance_id
        return self.c.join(wire.JoinAsk(worker_id, preferred_slot, "", instance), peer)

    def open_stream(self, slot: int, worker_id: str, session_id: str, instance_id: str | None = None) -> Connection:
        instance = f"proc-{worker_id}" if instance_id is None else instance_id
        return self.c.members.open_stream(wire.Hello(slot, session_id, worker_id, instance))

    def ack(self, conn: Connection, ack: pb.CancelAck) -> None:
        """A CancelAck as the servicer passes it on: decoded (and its times checked) by wire."""
        event = wire.worker_event(pb.WorkerMessage(cancel_ack=ack), conn.slot, self.code.max_partitions(conn.slot))
        self.c.on_message(conn, event)

    def begin(self) -> tuple[list[Connection], Iteration]:
        """Every slot connected and Ready, then iteration 0 started (its task goes to all of them)."""
        conns = [self.connect(slot) for slot in range(N)]
        return conns, self.start(0)

    def deliver(self, conn: Connection, iteration: int, level: int, task_done: bool = False,
                times: wire.PartitionTimes | None = None) -> None:
        for chunk in self.chunks(iteration, level, conn.slot, task_done=task_done, times=times):
            self.c.on_result(conn, chunk)

    def start(self, iteration: int) -> Iteration:
        return self.c.start_iteration(iteration, np.zeros(FEATURES))

    def discarded(self, kind: str) -> float:
        return self.metrics.registry.get_sample_value("flexgc_discarded_results_total", {"kind": kind}) or 0.0

    def finish_and_ack(self, it: Iteration, conns: list[Connection]) -> None:
        """Each worker acknowledges the cancel of `it` and asks for the next task."""
        for conn in conns:
            self.ack(conn, pb.CancelAck(iteration=it.number, partitions_done=2))
            self.c.on_ready(conn, it.number)


def drain(conn: Connection) -> list[Any]:
    items = []
    while not conn.outbox.empty():
        items.append(conn.outbox.get_nowait())
    return items


def gradient_of(outcome: Outcome) -> np.ndarray:
    assert outcome.gradient is not None, f"iteration {outcome.iteration} has no gradient ({outcome.phase.name})"
    return outcome.gradient


def decoding_of(outcome: Outcome) -> Decoding:
    assert outcome.decoding is not None, f"iteration {outcome.iteration} was not decoded ({outcome.phase.name})"
    return outcome.decoding


def assert_exact(it: Iteration, expected: np.ndarray) -> None:
    assert it.done.done(), "iteration did not decode"
    outcome = it.done.result()
    assert outcome.phase is IterationPhase.EXACT
    np.testing.assert_allclose(gradient_of(outcome), expected, rtol=1e-12, atol=1e-12)
