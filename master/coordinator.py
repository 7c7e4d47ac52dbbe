"""The master's domain: worker slots, the iteration state machine, decoding and latency accounting.

Everything here runs on the master's one event loop; the servicer (service.py) only translates wire
messages into the calls below. Lifecycles are enums with transition tables (STYLE §3):

    SlotState:      JOINED -> IDLE -> WORKING -> CANCELLING -> IDLE ...; WORKING -> IDLE (task_done);
                    any -> GONE
    IterationPhase: SCHEDULED -> COLLECTING -> EXACT | APPROXIMATE | FAILED

A coded result is written chunk by chunk into its row of a preallocated ``(n_messages, d + 1)`` buffer
(zeros, so rows never written hold finite values); rows are handed out in arrival order per
iteration, and the decode is one ``np.dot(weights, buffer[:rows])`` with zero weight on every row that
is not used. Results of any other iteration are never written into the buffer.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flexgc.common import wire
from flexgc.common.codes import Code
from flexgc.common.decoder import Decoder, Decoding
from flexgc.common.errors import (
    AuthError,
    DuplicateResultError,
    InvalidTransitionError,
    JobFinishedError,
    StaleIterationError,
    UnknownSlotError,
    WireError,
)
from flexgc.common.models import DataSpec
from flexgc.v1 import coordinator_pb2 as pb

_log = logging.getLogger(__name__)

_CLOSE = object()  # sentinel that ends a connection's outbox
SHARED_ID_REPLACEMENTS, SHARED_ID_WINDOW_S = 3, 10.0  # a worker_id replacing itself this often: shared id
JOIN_GRACE_S = 5.0  # a slot granted by Join stays its worker's this long before the stream is open


class SlotState(enum.Enum):
    JOINED = 1
    IDLE = 2
    WORKING = 3
    CANCELLING = 4
    GONE = 5


# Beyond STYLE §3's table: WORKING -> IDLE (the task_done chunk, or a Ready, says the worker is idle) and
# IDLE -> IDLE (a repeated Ready). Every Ready (also the one a CancelAck carries) passes through IDLE before
# the next task makes the slot WORKING.
_SLOT_MOVES = {("JOINED", "IDLE"), ("IDLE", "WORKING"), ("WORKING", "CANCELLING"),
               ("WORKING", "IDLE"), ("CANCELLING", "IDLE"),
               ("IDLE", "IDLE")} | {(s.name, "GONE") for s in SlotState if s is not SlotState.GONE}


class IterationPhase(enum.Enum):
    SCHEDULED = 1
    COLLECTING = 2
    EXACT = 3
    APPROXIMATE = 4
    FAILED = 5

    @property
    def terminal(self) -> bool:
        return self in (IterationPhase.EXACT, IterationPhase.APPROXIMATE, IterationPhase.FAILED)


_PHASE_MOVES = {("SCHEDULED", "COLLECTING"), ("COLLECTING", "EXACT"), ("COLLECTING", "APPROXIMATE"),
                ("COLLECTING", "FAILED")}


def slot_transition_allowed(src: SlotState, dst: SlotState) -> bool:
    return (src.name, dst.name) in _SLOT_MOVES


def phase_transition_allowed(src: IterationPhase, dst: IterationPhase) -> bool:
    return (src.name, dst.name) in _PHASE_MOVES


@dataclass
class Connection:
    """One live Work stream of one worker slot."""

    slot: int
    worker_id: str
    epoch: int
    outbox: asyncio.Queue[Any]
    state: SlotState = SlotState.JOINED
    last_seen: float = field(default_factory=time.perf_counter)
    ready_after: int | None = None       # waiting for the first task newer than this
    task_iteration: int = -1             # newest task sent on this connection

    def advance(self, to: SlotState) -> None:
        if not slot_transition_allowed(self.state, to):
            raise InvalidTransitionError(f"slot={self.slot} {self.state.name}->{to.name}")
        self.state = to


@dataclass
class WorkerTiming:
    """Per iteration and slot; times in ms relative to the iteration's start."""

    task_sent_ms: float | None = None
    first_byte_ms: float | None = None
    level_done_ms: list[float | None] = field(default_factory=list)
    result_arrival_ms: list[float | None] = field(default_factory=list)
    cancel_sent_ms: float | None = None
    cancel_ack_ms: float | None = None
    task_done_ms: float | None = None    # push: the last chunk of the whole task arrived flagged task_done
    partitions_done: int | None = None
    finished: bool | None = None
    compute_ms: list[float] = field(default_factory=list)
    delay_ms: list[float] = field(default_factory=list)
    bytes_up: int = 0
    bytes_down: int = 0

    @property
    def answered(self) -> bool:
        """The worker is done with this task: it acknowledged the Cancel or reported the whole task sent."""
        return self.cancel_ack_ms is not None or self.task_done_ms is not None


@dataclass
class Outcome:
    iteration: int
    phase: IterationPhase
    gradient: np.ndarray | None          # (d + 1,) wire dtype: summed gradient and, last, the summed loss
    decoding: Decoding | None
    latency_ms: float
    decode_ms: float


class Iteration:
    def __init__(self, number: int, code: Code, task: list[wire.Preserialized], started: float) -> None:
        self.number = number
        self.phase = IterationPhase.SCHEDULED
        self.task = task
        self.task_bytes = sum(len(m.message.params.data) if m.message.HasField("params") else
                              len(m.message.task.params) for m in task)
        self.started = started
        self.row_of: dict[int, int] = {}
        self.filled: dict[int, int] = {}
        self.writer: dict[int, int] = {}  # message id -> epoch of the connection filling its row
        self.complete = 0                 # bitmask of complete messages
        self.notified = 0                 # notify signaling: LevelDone received
        self.pulled = 0                   # notify signaling: Pull sent
        self.timing = {i: WorkerTiming(level_done_ms=[None] * code.n_levels,
                                       result_arrival_ms=[None] * code.n_levels) for i in range(code.n)}
        self.sent: set[int] = set()
        self.done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.decoded_ms: float | None = None
        self.deadline: asyncio.TimerHandle | None = None
        self.stale_results = 0
        self.duplicates = 0

    def advance(self, to: IterationPhase) -> None:
        if not phase_transition_allowed(self.phase, to):
            raise InvalidTransitionError(f"iteration={self.number} {self.phase.name}->{to.name}")
        self.phase = to

    def now_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1e3


@dataclass(frozen=True, slots=True)
class JoinGrant:
    slot: int
    session_id: str
    slot_code: wire.SlotCode


class Coordinator:
    """Slots, tasks, results and decoding for one job."""

    def __init__(self, code: Code, data: DataSpec, *, dtype: str, chunk_bytes: int, deadline_s: float,
                 on_deadline: str, token: str | None = None, max_workers: int = 0,
                 metrics: Any = None, decode_inline_elements: int = 1 << 20) -> None:
        self.code = code
        self.data = data
        self.d = data.d + 1
        self.dtype = np.dtype(dtype)
        self.wire_dtype = wire.wire_dtype(self.dtype)
        self.chunk_bytes = chunk_bytes
        self.deadline_s = deadline_s
        self.on_deadline = on_deadline
        self.session_id = uuid.uuid4().hex
        self._token = token
        self._max_workers = max_workers or code.n
        self.decoder = Decoder(code)
        self._buf = np.zeros((code.n_messages, self.d), dtype=self.dtype)
        self._owner: dict[int, str] = {}              # slot -> worker_id
        self._slot_of: dict[str, int] = {}            # worker_id -> slot
        self.connections: dict[int, Connection] = {}  # slot -> live connection
        self._epoch = 0
        self.current: Iteration | None = None
        self.history: dict[int, Iteration] = {}       # finished iterations awaiting late acks
        self._granted_at: dict[int, float] = {}        # slot -> when Join last granted it
        self._replaced: dict[int, list[float]] = {}    # slot -> recent times a connection was replaced
        self._warned_shared: dict[str, float] = {}     # worker_id -> when we last warned it looks shared
        self.metrics = metrics
        self.rejected: dict[str, int] = {}
        self.stale_results = 0
        self._decode_inline = decode_inline_elements
        self.slots_changed = asyncio.Event()
        self.acks_changed = asyncio.Event()
        self.finished = False

    # -- membership -----------------------------------------------------------------------------
    def check_token(self, token: str) -> None:
        if self._token is not None and token != self._token:
            raise AuthError("join token missing or wrong")

    def join(self, worker_id: str, preferred_slot: int, token: str) -> JoinGrant:
        self.check_token(token)
        if self.finished:
            raise JobFinishedError("the job has finished; nothing to join")
        if not worker_id or len(worker_id) > 256:
            raise WireError("worker_id must be 1..256 characters")
        n = self.code.n
        if worker_id in self._slot_of:
            slot = self._slot_of[worker_id]
        elif 0 <= preferred_slot < n and self._slot_free(preferred_slot):
            slot = preferred_slot
        elif preferred_slot >= n or preferred_slot < -1:
            raise UnknownSlotError(f"preferred_slot={preferred_slot}; allowed -1 or 0..{n - 1}")
        else:
            free = [i for i in range(n) if self._slot_free(i)]
            if not free:
                raise UnknownSlotError(f"all {n} slots are held by connected workers (or granted in the last "
                                       f"{JOIN_GRACE_S:g} s to workers about to connect)")
            slot = free[0]
        old = self._owner.get(slot)
        if old is not None and old != worker_id:
            self._slot_of.pop(old, None)
        self._owner[slot] = worker_id
        self._slot_of[worker_id] = slot
        self._granted_at[slot] = time.monotonic()
        _log.info("joined slot=%d worker_id=%s", slot, worker_id)
        return JoinGrant(slot, self.session_id, self.slot_code(slot))

    def _note_replacement(self, slot: int, worker_id: str) -> None:
        """A reconnect replaces a dead connection now and then; the same id replacing a live one again and
        again means several processes share the id (each knocks the other off, and no task completes)."""
        now = time.monotonic()
        recent = [t for t in self._replaced.get(slot, []) if now - t < SHARED_ID_WINDOW_S] + [now]
        self._replaced[slot] = recent
        if len(recent) >= SHARED_ID_REPLACEMENTS and now - self._warned_shared.get(worker_id, -math.inf) > 30.0:
            self._warned_shared[worker_id] = now
            _log.warning("slot=%d: worker_id=%r replaced its own connection %d times in %g s: several worker "
                         "processes seem to share this id (the default is the hostname); give each worker its "
                         "own --worker-id / FLEXGC_WORKER_ID", slot, worker_id, len(recent), SHARED_ID_WINDOW_S)

    def _slot_free(self, slot: int) -> bool:
        """Unowned, or owned by a worker that is not connected, unless Join granted it moments ago (its
        worker is about to open its stream: two workers joining at once must not get the same slot)."""
        if slot not in self._owner:
            return True
        if slot in self.connections:
            return False
        return time.monotonic() - self._granted_at.get(slot, -math.inf) > JOIN_GRACE_S

    def slot_code(self, slot: int) -> wire.SlotCode:
        c = self.code
        parts = c.order[slot]
        coeffs = np.stack([c.B[level, slot, list(parts)] for level in range(c.n_levels)])
        return wire.SlotCode(parts, tuple(int(x) for x in c.prefix[:, slot]), c.levels, coeffs, c.signaling)

    def open_stream(self, slot: int, worker_id: str, session_id: str, token: str) -> Connection:
        self.check_token(token)
        if self.finished:
            raise JobFinishedError("the job has finished; nothing to work on")
        if session_id != self.session_id:
            raise StaleIterationError(f"session_id={session_id!r} is not this job's session; join again")
        if self._owner.get(slot) != worker_id:
            raise UnknownSlotError(f"slot={slot} is not held by worker_id={worker_id!r}; join first")
        if len(self.connections) >= self._max_workers and slot not in self.connections:
            raise UnknownSlotError(f"max_workers={self._max_workers} connections reached")
        old = self.connections.get(slot)
        if old is not None:
            self.close_stream(old, "replaced by a new connection")
            self._note_replacement(slot, worker_id)
        self._epoch += 1
        conn = Connection(slot, worker_id, self._epoch, asyncio.Queue())
        self.connections[slot] = conn
        self.slots_changed.set()
        _log.info("connected slot=%d worker_id=%s epoch=%d", slot, worker_id, conn.epoch)
        return conn

    def close_stream(self, conn: Connection, reason: str) -> None:
        if self.connections.get(conn.slot) is not conn:
            return
        del self.connections[conn.slot]
        conn.advance(SlotState.GONE)
        conn.outbox.put_nowait(_CLOSE)
        self.slots_changed.set()
        _log.info("disconnected slot=%d epoch=%d reason=%s", conn.slot, conn.epoch, reason)
        it = self.current
        if it is not None and it.phase is IterationPhase.COLLECTING:
            it.sent.discard(conn.slot)
            if self.code.signaling == "notify":
                # its notified-but-not-received vectors will never come: forget them and re-plan pulls
                lost = sum(1 << self.code.message_id(level, conn.slot) for level in range(self.code.n_levels))
                it.notified &= ~(lost & ~it.complete)
                it.pulled &= ~(lost & ~it.complete)
                self._plan_pulls(it)

    @property
    def connected(self) -> int:
        return len(self.connections)

    async def wait_for_workers(self, count: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s if timeout_s > 0 else math.inf
        while self.connected < count:
            self.slots_changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self.slots_changed.wait(), min(remaining, 3600))
            except TimeoutError:
                return False
        return True

    # -- tasks ----------------------------------------------------------------------------------
    def start_iteration(self, number: int, params: np.ndarray) -> Iteration:
        """Build the task once and send it to every worker that is waiting for one."""
        if self.current is not None and not (self.current.phase.terminal and self.current.done.done()):
            # done: the decode (possibly in the executor) has read the buffer this iteration will reuse
            raise InvalidTransitionError(f"iteration {self.current.number} still collecting or decoding")
        task = [wire.Preserialized(m) for m in wire.task_messages(
            number, params.astype(self.dtype, copy=False), self.chunk_bytes, self.deadline_s, self.code.n_levels,
            inline=True)]
        it = Iteration(number, self.code, task, time.perf_counter())
        self.current = it
        it.advance(IterationPhase.COLLECTING)
        for conn in list(self.connections.values()):
            if conn.ready_after is not None and conn.ready_after < number:
                self._send_task(conn, it)
        if self.deadline_s > 0:
            it.deadline = asyncio.get_running_loop().call_later(self.deadline_s, self._on_deadline, it)
        return it

    def _send_task(self, conn: Connection, it: Iteration) -> None:
        if conn.task_iteration >= it.number:
            return  # never the same task twice on one connection
        for msg in it.task:
            conn.outbox.put_nowait(msg)
        conn.ready_after = None
        conn.task_iteration = it.number
        conn.advance(SlotState.WORKING)
        it.sent.add(conn.slot)
        t = it.timing[conn.slot]
        t.task_sent_ms = it.now_ms() if t.task_sent_ms is None else t.task_sent_ms
        t.bytes_down += it.task_bytes

    def on_ready(self, conn: Connection, after_iteration: int) -> None:
        if conn.task_iteration > after_iteration:
            # a Ready may never go back past a task this connection was sent (it would re-send the task)
            raise WireError(f"slot={conn.slot}: Ready(after={after_iteration}) but iteration "
                            f"{conn.task_iteration} was already sent on this connection")
        if conn.state is not SlotState.IDLE:
            conn.advance(SlotState.IDLE)
        conn.ready_after = after_iteration
        it = self.current
        if it is not None and it.phase is IterationPhase.COLLECTING and it.number > after_iteration:
            self._send_task(conn, it)

    def on_heartbeat(self, conn: Connection) -> None:
        conn.last_seen = time.perf_counter()

    # -- results --------------------------------------------------------------------------------
    def _iteration_for(self, conn: Connection, iteration: int) -> Iteration | None:
        """The collecting iteration a worker message belongs to, or None (stale: counted, dropped)."""
        it = self.current
        if it is None or iteration > it.number:
            raise StaleIterationError(f"slot={conn.slot}: iteration={iteration} is in the future "
                                      f"(current {it.number if it else 'none'})")
        if iteration < it.number or it.phase is not IterationPhase.COLLECTING:
            self.stale_results += 1
            old = self.history.get(iteration, it if iteration == it.number else None)
            if old is not None:
                old.stale_results += 1
            self._count("stale")
            return None
        if conn.slot not in it.sent:
            raise WireError(f"slot={conn.slot}: result for iteration {iteration} without a task on this "
                            f"connection")
        return it

    def on_result(self, conn: Connection, chunk: pb.ResultChunk) -> None:
        if chunk.slot != conn.slot:
            raise UnknownSlotError(f"result for slot={chunk.slot} on the stream of slot={conn.slot}")
        header = wire.result_header(chunk, self.wire_dtype, self.d, self.code.n_levels,
                                    self.code.max_partitions(conn.slot))
        if header.task_done and self.code.signaling != "push":
            raise WireError(f"slot={conn.slot}: task_done under signaling={self.code.signaling} (push only)")
        if header.task_done and header.iteration != conn.task_iteration:
            raise WireError(f"slot={conn.slot}: task_done for iteration {header.iteration}, but the task on "
                            f"this connection is {conn.task_iteration}")
        it = self._iteration_for(conn, header.iteration)
        if it is None:
            if header.task_done:
                self._task_done(conn, header)  # crossed our Cancel: it is the acknowledgement
            return
        mid = self.code.message_id(header.level, conn.slot)
        bit = 1 << mid
        if it.complete & bit:
            if it.writer.get(mid) == conn.epoch:
                raise DuplicateResultError(f"slot={conn.slot} iteration={it.number} level={header.level}: "
                                           f"already received on this connection")
            # a reconnected worker recomputes levels its previous connection delivered: drop, count
            it.duplicates += 1
            self._count("duplicate")
            if header.task_done:
                self._task_done(conn, header)  # this connection is done too: it gets the next task
            return
        timing = it.timing[conn.slot]
        if it.writer.get(mid) != conn.epoch:
            if header.offset != 0:
                raise WireError(f"slot={conn.slot} level={header.level}: result starts at offset "
                                f"{header.offset}, expected 0")
            if mid not in it.row_of:
                it.row_of[mid] = len(it.row_of)
            it.filled[mid] = 0
            it.writer[mid] = conn.epoch
            if timing.first_byte_ms is None:
                timing.first_byte_ms = it.now_ms()
        if header.times is not None:
            timing.compute_ms, timing.delay_ms = header.times.compute_ms, header.times.delay_ms
        row = self._buf[it.row_of[mid]]
        before = it.filled[mid]
        it.filled[mid] = wire.accept_chunk(row, before, chunk)
        timing.bytes_up += (it.filled[mid] - before) * row.itemsize
        if not chunk.last:
            return
        timing.result_arrival_ms[header.level] = it.now_ms()
        if timing.level_done_ms[header.level] is None:
            timing.level_done_ms[header.level] = timing.result_arrival_ms[header.level]
        it.complete |= bit
        if header.task_done:
            self._task_done(conn, header)
        self._try_decode(it)

    def _task_done(self, conn: Connection, header: wire.ChunkHeader) -> None:
        """The worker sent everything its task asked for and is idle: as a CancelAck(finished, ready) would
        say, without the Cancel round trip (the master sends it no Cancel for this iteration)."""
        it = self._recent(header.iteration)
        if it is not None:
            timing = it.timing[conn.slot]
            timing.task_done_ms = it.now_ms()
            timing.partitions_done = self.code.max_partitions(conn.slot)
            timing.finished = True
            if header.times is not None:
                timing.compute_ms, timing.delay_ms = header.times.compute_ms, header.times.delay_ms
            if timing.cancel_sent_ms is not None and timing.cancel_ack_ms is None:
                timing.cancel_ack_ms = timing.task_done_ms  # a Cancel crossed it: this answers it
            self.acks_changed.set()
        self.on_ready(conn, header.iteration)

    def on_level_done(self, conn: Connection, iteration: int, level: int,
                      times: wire.PartitionTimes | None) -> None:
        if not 0 <= level < self.code.n_levels:
            raise WireError(f"slot={conn.slot}: level={level}; allowed 0..{self.code.n_levels - 1}")
        if self.code.signaling != "notify":
            raise WireError(f"slot={conn.slot}: LevelDone under signaling={self.code.signaling}")
        it = self._iteration_for(conn, iteration)
        if it is None:
            return
        timing = it.timing[conn.slot]
        if timing.level_done_ms[level] is None:
            timing.level_done_ms[level] = it.now_ms()
        if times is not None:
            timing.compute_ms, timing.delay_ms = times.compute_ms, times.delay_ms
        it.notified |= 1 << self.code.message_id(level, conn.slot)
        self._plan_pulls(it)

    def _plan_pulls(self, it: Iteration) -> None:
        """notify signaling: once the notified messages decode, pull the vectors the decode needs."""
        if it.phase is not IterationPhase.COLLECTING:
            return
        decoding = self.decoder.solve(it.notified) if it.notified else None
        if decoding is None:
            return
        for mid in decoding.messages:
            if it.pulled & (1 << mid) or it.complete & (1 << mid):
                continue
            level, slot = self.code.message_of(mid)
            conn = self.connections.get(slot)
            if conn is None:
                continue
            conn.outbox.put_nowait(pb.MasterMessage(pull=pb.Pull(iteration=it.number, level=level)))
            it.pulled |= 1 << mid

    def on_cancel_ack(self, conn: Connection, ack: pb.CancelAck) -> None:
        self._record_ack(conn, ack)
        if ack.ready:  # the ack doubles as Ready(after_iteration=ack.iteration)
            self.on_ready(conn, ack.iteration)

    def _recent(self, number: int) -> Iteration | None:
        """The current iteration or one of the last finished ones, for answers that arrive late."""
        if self.current is not None and self.current.number == number:
            return self.current
        return self.history.get(number)

    def _record_ack(self, conn: Connection, ack: pb.CancelAck) -> None:
        it = self._recent(ack.iteration)
        if it is None:
            self._count("stale")
            return
        if ack.partitions_done < 0 or ack.partitions_done > self.code.max_partitions(conn.slot):
            raise WireError(f"slot={conn.slot}: partitions_done={ack.partitions_done} out of range")
        timing = it.timing[conn.slot]
        timing.cancel_ack_ms = it.now_ms()
        timing.partitions_done = ack.partitions_done
        timing.finished = ack.finished
        times = wire.times_from_proto(ack.times, self.code.max_partitions(conn.slot))
        timing.compute_ms, timing.delay_ms = times.compute_ms, times.delay_ms
        if conn.state is SlotState.CANCELLING:
            conn.advance(SlotState.IDLE)
        self.acks_changed.set()

    # -- decoding -------------------------------------------------------------------------------
    def _try_decode(self, it: Iteration) -> None:
        if it.phase is not IterationPhase.COLLECTING:
            return
        decoding = self.decoder.solve(it.complete)
        if decoding is None:
            if self.code.signaling == "notify":
                self._plan_pulls(it)
            return
        phase = IterationPhase.EXACT if decoding.exact else IterationPhase.APPROXIMATE
        self._finish(it, phase, decoding)

    def _on_deadline(self, it: Iteration) -> None:
        if it.phase is not IterationPhase.COLLECTING:
            return
        _log.warning("deadline iteration=%d policy=%s complete_messages=%d", it.number, self.on_deadline,
                     it.complete.bit_count())
        if self.on_deadline == "approximate" and it.complete:
            self._finish(it, IterationPhase.APPROXIMATE, self.decoder.approximate(it.complete))
        else:
            self._finish(it, IterationPhase.FAILED, None)

    def _finish(self, it: Iteration, phase: IterationPhase, decoding: Decoding | None) -> None:
        it.advance(phase)
        if it.deadline is not None:
            it.deadline.cancel()
        t0 = time.perf_counter()
        latency_ms = it.now_ms()
        self._broadcast_cancel(it)
        if decoding is None:
            it.done.set_result(Outcome(it.number, phase, None, None, latency_ms, 0.0))
            return
        weights = np.zeros(len(it.row_of))
        for mid, w in zip(decoding.messages, decoding.weights):
            weights[it.row_of[mid]] = w
        rows = self._buf[:len(it.row_of)]

        def combine() -> np.ndarray:
            return combine_rows(weights, rows)

        if rows.size <= self._decode_inline:
            gradient = combine()
            it.decoded_ms = it.now_ms()
            it.done.set_result(Outcome(it.number, phase, gradient, decoding, latency_ms + (
                time.perf_counter() - t0) * 1e3, (time.perf_counter() - t0) * 1e3))
        else:
            loop = asyncio.get_running_loop()
            fut = loop.run_in_executor(None, combine)

            def _done(f: asyncio.Future[np.ndarray]) -> None:
                it.decoded_ms = it.now_ms()
                if f.exception() is not None:
                    it.done.set_exception(f.exception())  # type: ignore[arg-type]
                else:
                    it.done.set_result(Outcome(it.number, phase, f.result(), decoding, it.decoded_ms,
                                               (time.perf_counter() - t0) * 1e3))
            fut.add_done_callback(_done)

    def _broadcast_cancel(self, it: Iteration) -> None:
        msg = pb.MasterMessage(cancel=pb.Cancel(iteration=it.number))
        now = it.now_ms()
        for slot in sorted(it.sent):
            conn = self.connections.get(slot)
            if conn is None or conn.state is SlotState.IDLE:
                continue  # gone, or idle: done with the whole task (task_done), or it rejected the task
            conn.outbox.put_nowait(msg)
            it.timing[slot].cancel_sent_ms = now
            if conn.state is SlotState.WORKING and conn.task_iteration == it.number:
                conn.advance(SlotState.CANCELLING)
        self.history[it.number] = it
        for old in [k for k in self.history if k < it.number - 4]:
            del self.history[old]

    # -- shutdown and counters ------------------------------------------------------------------
    def shutdown(self, reason: str) -> None:
        self.finished = True
        msg = pb.MasterMessage(shutdown=pb.Shutdown(reason=reason))
        for conn in list(self.connections.values()):
            conn.outbox.put_nowait(msg)
            conn.outbox.put_nowait(_CLOSE)

    def reject(self, kind: str) -> None:
        self.rejected[kind] = self.rejected.get(kind, 0) + 1
        if self.metrics is not None:
            self.metrics.rejected.labels(kind=kind).inc()

    def discard(self, kind: str) -> None:
        self._count(kind)

    def _count(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.discarded.labels(kind=kind).inc()


def combine_rows(weights: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The decode g = sum_i w_i v_i over the receive buffer's rows: weights (m,), rows (m, d) -> (d,) in the
    rows' dtype (one BLAS gemv). The trainer widens it to float64 in the pass that scales it anyway, so the
    decode pays no separate cast pass (bitwise the same update as casting here).

    Rows the decoding does not use carry weight 0 (they hold finite values: the buffer starts zeroed).
    """
    return np.dot(weights.astype(rows.dtype), rows)


def is_close(item: Any) -> bool:
    return item is _CLOSE
