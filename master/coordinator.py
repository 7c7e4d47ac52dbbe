"""The iteration state machine: tasks out, coded results in, decode as soon as possible, cancel the rest.

Everything here runs on the master's one event loop; the servicer (service.py) only translates wire
messages into the calls below, and membership (membership.py) decides who holds which slot. An
iteration's lifecycle is an enum with a transition table (docs/design.md §4):

    IterationPhase: SCHEDULED -> COLLECTING -> EXACT | APPROXIMATE | FAILED

Coded results are written chunk by chunk into the receive buffer (buffer.py) and decoded from it in one
gemv; results of any other iteration than the collecting one are never written into it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from flexgc import __version__
from flexgc.common import wire
from flexgc.common.codes import Code
from flexgc.common.decoder import Decoder, Decoding
from flexgc.common.errors import (
    DuplicateResultError,
    InvalidTransitionError,
    StaleIterationError,
    UnknownSlotError,
    WireError,
)
from flexgc.common.models import DataSpec
from flexgc.master.buffer import ReceiveBuffer
from flexgc.master.failures import WorkerFailures
from flexgc.master.membership import LIVENESS_S, Connection, Membership, SlotState
from flexgc.master.metrics import Metrics
from flexgc.v1 import coordinator_pb2 as pb

_log = logging.getLogger(__name__)

HISTORY = 4  # finished iterations kept for answers that arrive late (acks, task_done, stale results)


class IterationPhase(enum.Enum):
    """Lifecycle of one iteration; the terminal phase is its outcome."""

    SCHEDULED = 1
    COLLECTING = 2
    EXACT = 3
    APPROXIMATE = 4
    FAILED = 5

    @property
    def terminal(self) -> bool:
        """EXACT, APPROXIMATE or FAILED: the iteration is over."""
        return self in (IterationPhase.EXACT, IterationPhase.APPROXIMATE, IterationPhase.FAILED)


_PHASE_MOVES = {("SCHEDULED", "COLLECTING"), ("COLLECTING", "EXACT"), ("COLLECTING", "APPROXIMATE"),
                ("COLLECTING", "FAILED")}


def phase_transition_allowed(src: IterationPhase, dst: IterationPhase) -> bool:
    """Whether the iteration lifecycle table allows the move src -> dst."""
    return (src.name, dst.name) in _PHASE_MOVES


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
    worker_id: str | None = None         # the worker that held the slot when it was sent the task
    host: str | None = None              # and its machine

    @property
    def answered(self) -> bool:
        """The worker is done with this task: it acknowledged the Cancel or reported the whole task sent."""
        return self.cancel_ack_ms is not None or self.task_done_ms is not None


@dataclass
class PendingPlan:
    """A plan announced to the workers and not yet in use: its id, code, why, and who holds it already."""

    plan: int
    code: Code
    reason: str
    detail: dict[str, object]
    ready: set[int] = field(default_factory=set)
    announced: float = field(default_factory=time.monotonic)


@dataclass
class Outcome:
    """How an iteration ended: its phase and, unless FAILED, the decoded vector and how it was decoded."""

    iteration: int
    phase: IterationPhase
    gradient: np.ndarray | None          # (d + 1,) wire dtype: summed gradient and, last, the summed loss
    decoding: Decoding | None
    latency_ms: float
    decode_ms: float


class Iteration:
    """One iteration's task, arrivals, timings and outcome."""

    def __init__(self, number: int, code: Code, task: list[wire.Preserialized], started: float,
                 plan: int = 0) -> None:
        self.number = number
        self.code = code                  # the plan this iteration runs under (never changes within it)
        self.plan = plan
        self.phase = IterationPhase.SCHEDULED
        self.task = task
        self.task_bytes = sum(len(m.message.params.data) if m.message.HasField("params") else
                              len(m.message.task.params) for m in task)
        self.started = started
        self.complete = 0                 # bitmask of complete messages
        self.covered = 0                  # bitmask of the partitions they cover (no decode before all are)
        self.notified = 0                 # notify signaling: LevelDone received
        self.pulled = 0                   # notify signaling: Pull sent
        self.timing = {i: WorkerTiming(level_done_ms=[None] * code.n_levels,
                                       result_arrival_ms=[None] * code.n_levels) for i in range(code.n)}
        self.sent: set[int] = set()
        self.awaiting: set[int] = set()   # slots sent the task, still connected, that have not answered it
        self.done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.decoded_ms: float | None = None
        self.deadline: asyncio.TimerHandle | None = None
        self.stale_results = 0
        self.duplicates = 0

    def advance(self, to: IterationPhase) -> None:
        """Move to `to`, or raise InvalidTransitionError if the table does not allow it."""
        if not phase_transition_allowed(self.phase, to):
            raise InvalidTransitionError(f"iteration={self.number} {self.phase.name}->{to.name}")
        self.phase = to

    @property
    def settled(self) -> bool:
        """Every connected worker that got this task has answered it (CancelAck or task_done)."""
        return not self.awaiting

    def now_ms(self) -> float:
        """Milliseconds since the iteration started (the run log's clock)."""
        return (time.perf_counter() - self.started) * 1e3


class Coordinator:
    """Tasks, results and decoding for one job; membership decides who holds which slot.

    This is one state machine (about 360 lines with its docstrings, above the ~300 the project aims for):
    every handler reads and writes the same collecting iteration, the states of the connections it was
    sent to, and the decode, so splitting it further would spread one transition table over several
    classes. Slots (membership.py), the receive buffer (buffer.py), metrics and the training loop live
    apart from it.
    """

    def __init__(self, code: Code, data: DataSpec, *, dtype: str, chunk_bytes: int, deadline_s: float,
                 on_deadline: str, max_workers: int = 0, liveness_s: float = LIVENESS_S,
                 metrics: Metrics | None = None, decode_inline_elements: int = 1 << 20) -> None:
        self.code = code
        self.data = data
        self.vector_len = data.d + 1  # a coded vector: the d gradient elements and the loss
        self.dtype = np.dtype(dtype)
        self.wire_dtype = wire.wire_dtype(self.dtype)
        self.chunk_bytes = chunk_bytes
        self.deadline_s = deadline_s
        self.on_deadline = on_deadline
        self.members = Membership(code.n, max_workers=max_workers, on_lost=self._lost, liveness_s=liveness_s,
                                  can_lose=self._can_lose, has_work=lambda slot: bool(self.code.order[slot]))
        self.metrics = metrics or Metrics()
        self.decoder = Decoder(code)
        self._all_partitions = (1 << code.k) - 1
        self.buffer = ReceiveBuffer(code.n_messages, self.vector_len, self.dtype)
        self.current: Iteration | None = None
        self.history: dict[int, Iteration] = {}       # finished iterations awaiting late answers
        self.stale_results = 0
        self._decode_inline = decode_inline_elements
        self.answers_changed = asyncio.Event()
        self.plan = 0                                 # id of the plan (code) in use (docs/design.md §2.10)
        self.pending: PendingPlan | None = None       # a plan announced to the workers, not yet in use
        self._granted: dict[int, int] = {}            # slot -> plan of the slot code its last JoinReply held
        self.failures = WorkerFailures(code.n)        # workers that cannot compute the job (failures.py)

    # -- membership (members decides who holds a slot; this adds the code and the iterations) ----------
    def join(self, ask: wire.JoinAsk, peer: str = "") -> wire.JoinGrant:
        """A slot for the asking worker (from `peer`, for the per-peer join limit), with its part of the code."""
        slot = self.members.join(ask, peer)
        if ask.version and ask.version != __version__:
            _log.warning("version mismatch slot=%d worker_id=%s worker_version=%s master_version=%s", slot,
                         ask.worker_id, ask.version, __version__)
        self._granted[slot] = self.plan
        return wire.JoinGrant(slot, self.members.session_id, self.slot_code(slot), self.plan)

    def _can_lose(self, slots: frozenset[int]) -> bool:
        """Whether the code in use still decodes exactly from every other slot's messages (a host that holds
        `slots` may fail; membership places slots by it). Any s_max slots, by construction; beyond that it
        depends on which (e.g. FRC: not a whole group)."""
        code = self.code
        if len(slots) <= code.s_max or code.ignore_s is not None:
            return True
        mask = 0
        for slot in range(code.n):
            if slot not in slots:
                for level in range(code.n_levels):
                    mask |= 1 << code.message_id(level, slot)
        return self.decoder.solve(mask) is not None

    def slot_code(self, slot: int, code: Code | None = None) -> wire.SlotCode:
        """What slot `slot` needs of the code (default: the one in use): its partitions in order and its
        coefficient row per level."""
        c = code or self.code
        parts = c.order[slot]
        coeffs = np.stack([c.B[level, slot, list(parts)] for level in range(c.n_levels)])
        return wire.SlotCode(parts, tuple(int(x) for x in c.prefix[:, slot]), c.levels, coeffs, c.signaling)

    # -- adaptive plans (docs/design.md §2.10) -----------------------------------------------------
    def stream_opened(self, conn: Connection) -> None:
        """A Work stream started: make sure its worker holds the plan in use and the one announced."""
        if self._granted.get(conn.slot, 0) != self.plan and self.plan > 0:
            conn.outbox.put_nowait(wire.master_message(wire.Plan(self.plan, self.slot_code(conn.slot))))
        if self.pending is not None:
            self.pending.ready.discard(conn.slot)
            self._announce_to(conn, self.pending)

    def announce(self, code: Code, reason: str, detail: dict[str, object] | None = None) -> PendingPlan:
        """Send every connected worker its part of `code` ahead of its use; the switch waits for their
        PlanReady (`switch_ready`). A newer announcement replaces one not yet in use."""
        if code.n != self.code.n or code.k != self.code.k:
            raise ValueError(f"a plan keeps n={self.code.n} and k={self.code.k}; got n={code.n}, k={code.k}")
        number = max(self.plan, self.pending.plan if self.pending else 0) + 1
        self.pending = PendingPlan(number, code, reason, detail or {})
        for conn in list(self.members.connections.values()):
            self._announce_to(conn, self.pending)
        return self.pending

    def _announce_to(self, conn: Connection, pending: PendingPlan) -> None:
        conn.outbox.put_nowait(wire.master_message(wire.Plan(pending.plan, self.slot_code(conn.slot, pending.code))))

    def on_plan_ready(self, conn: Connection, plan: int) -> None:
        """A worker holds the data and rows of an announced plan."""
        if self.pending is not None and plan == self.pending.plan:
            self.pending.ready.add(conn.slot)

    def switch_ready(self, force: bool = False) -> PendingPlan | None:
        """At an iteration boundary: put the announced plan in use once every connected worker holds it (or
        `force`); returns it, or None when nothing switched. A worker that is not ready by then loads the
        partitions it lacks when the task names the new plan (it was sent the Plan first)."""
        it, p = self.current, self.pending
        if p is None or (it is not None and not (it.phase.terminal and it.done.done())):
            return None
        if not force and not set(self.members.connections) <= p.ready:
            return None
        self.use_plan(p.plan, p.code)
        return p

    def use_plan(self, plan: int, code: Code) -> None:
        """Make `code` (plan id `plan`) the code of the next iteration (also on resume from a checkpoint)."""
        if code.n != self.code.n or code.k != self.code.k:
            raise ValueError(f"a plan keeps n={self.code.n} and k={self.code.k}; got n={code.n}, k={code.k}")
        if code.n_messages != self.code.n_messages:
            self.buffer = ReceiveBuffer(code.n_messages, self.vector_len, self.dtype)
        self.code, self.decoder, self.plan, self.pending = code, Decoder(code), plan, None
        for slot in range(code.n):
            if not code.order[slot]:
                self.members.release(slot)  # removed by an elastic plan: free for a worker that joins

    def _lost(self, conn: Connection) -> None:
        """A live connection ended (closed or replaced): what it owed is written off."""
        for old in self._open_iterations():
            if conn.slot in old.awaiting:
                self._answered(old, conn.slot)  # it never will: do not wait for it
        it = self.current
        if it is not None and it.phase is IterationPhase.COLLECTING:
            it.sent.discard(conn.slot)
            if self.code.signaling == "notify":
                # its notified-but-not-received vectors will never come: forget them and re-plan pulls
                lost = sum(1 << self.code.message_id(level, conn.slot) for level in range(self.code.n_levels))
                it.notified &= ~(lost & ~it.complete)
                it.pulled &= ~(lost & ~it.complete)
                self._plan_pulls(it)

    def _open_iterations(self) -> list[Iteration]:
        its = list(self.history.values())
        if self.current is not None and self.current.number not in self.history:
            its.append(self.current)
        return its

    async def wait_settled(self, number: int, timeout_s: float) -> bool:
        """Wait until iteration `number` is settled (True) or `timeout_s` passes (False)."""
        deadline = time.monotonic() + timeout_s
        while True:
            it = self._recent(number)
            if it is None or it.settled:
                return True
            self.answers_changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self.answers_changed.wait(), remaining)
            except TimeoutError:
                return False

    # -- tasks ----------------------------------------------------------------------------------
    def start_iteration(self, number: int, params: np.ndarray) -> Iteration:
        """Build the task once and send it to every worker that is waiting for one."""
        if self.current is not None and not (self.current.phase.terminal and self.current.done.done()):
            # done: the decode (possibly in the executor) has read the buffer this iteration will reuse
            raise InvalidTransitionError(f"iteration {self.current.number} still collecting or decoding")
        task = [wire.Preserialized(m) for m in wire.task_messages(
            number, params.astype(self.dtype, copy=False), self.chunk_bytes, self.code.n_levels, inline=True,
            plan=self.plan)]
        it = Iteration(number, self.code, task, time.perf_counter(), self.plan)
        self.current = it
        self.buffer.reset()
        it.advance(IterationPhase.COLLECTING)
        for conn in list(self.members.connections.values()):
            if conn.ready_after is not None and conn.ready_after < number:
                self._send_task(conn, it)
        if self.deadline_s > 0:
            it.deadline = asyncio.get_running_loop().call_later(self.deadline_s, self._on_deadline, it)
        return it

    def _send_task(self, conn: Connection, it: Iteration) -> None:
        if conn.task_iteration >= it.number:
            return  # never the same task twice on one connection
        if not it.code.order[conn.slot]:
            return  # a removed slot of an elastic plan (docs/design.md §2.10): it stays ready, with nothing to do
        for msg in it.task:
            conn.outbox.put_nowait(msg)
        conn.ready_after = None
        conn.task_iteration = it.number
        conn.advance(SlotState.WORKING)
        it.sent.add(conn.slot)
        it.awaiting.add(conn.slot)
        t = it.timing[conn.slot]
        t.worker_id, t.host = conn.worker_id, conn.host  # who held the slot for this task (attribution)
        t.task_sent_ms = it.now_ms() if t.task_sent_ms is None else t.task_sent_ms
        t.bytes_down += it.task_bytes

    def on_message(self, conn: Connection, event: wire.WorkerEvent) -> None:
        """One message of a worker's Work stream after its hello."""
        conn.last_seen = time.monotonic()
        if isinstance(event, pb.ResultChunk):
            self.on_result(conn, event)
        elif isinstance(event, wire.Ready):
            self.on_ready(conn, event.after_iteration)
        elif isinstance(event, wire.LevelDone):
            self.on_level_done(conn, event)
        elif isinstance(event, wire.CancelAck):
            self.on_cancel_ack(conn, event)
        elif isinstance(event, wire.Heartbeat):
            pass  # last_seen, above, is all a heartbeat says
        elif isinstance(event, wire.PlanReady):
            self.on_plan_ready(conn, event.plan)
        else:
            if event.cause:  # it cannot compute the job (failures.py logs it once, naming the worker)
                self.failures.report(conn.slot, conn.worker_id, event, self.code.s_max)
            else:
                _log.warning("task rejected slot=%d iteration=%d reason=%r", conn.slot, event.iteration,
                             event.reason)
            self.metrics.reject("task_rejected_by_worker" if not event.cause else f"task_failed_{event.cause}")
            it = self._recent(event.iteration)
            if it is not None:
                self._answered(it, conn.slot)  # the worker is done with that task: it will not compute it
            if self.failures.ended and self.current is not None:
                self._on_deadline(self.current, fail=True)  # the job ends: nothing more to wait for

    def on_ready(self, conn: Connection, after_iteration: int) -> None:
        """The worker is idle: it gets the current task if that is newer than `after_iteration`."""
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

    # -- results --------------------------------------------------------------------------------
    def _iteration_for(self, conn: Connection, iteration: int) -> Iteration | None:
        """The collecting iteration a worker message belongs to, or None (stale: counted, dropped)."""
        it = self.current
        if it is None or iteration > it.number:
            raise StaleIterationError(f"slot={conn.slot}: iteration={iteration} is in the future "
                                      f"(current {it.number if it else 'none'})")
        if iteration < it.number or it.phase is not IterationPhase.COLLECTING:
            self.stale_results += 1
            old = self._recent(iteration)
            if old is not None:
                old.stale_results += 1
            self.metrics.discard("stale")
            return None
        if conn.slot not in it.sent:
            raise WireError(f"slot={conn.slot}: result for iteration {iteration} without a task on this "
                            f"connection")
        return it

    def on_result(self, conn: Connection, chunk: pb.ResultChunk) -> None:
        """One chunk of a coded result: written into its row; a completed row may make the iteration decode."""
        of = self._recent(chunk.iteration)
        code = of.code if of is not None else self.code  # a late result is checked against its own plan
        header = wire.result_header(chunk, self.wire_dtype, self.vector_len, code.n_levels,
                                    code.max_partitions(conn.slot))
        if header.slot != conn.slot:
            raise UnknownSlotError(f"result for slot={header.slot} on the stream of slot={conn.slot}")
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
            if self.buffer.writer(mid) == conn.epoch:
                raise DuplicateResultError(f"slot={conn.slot} iteration={it.number} level={header.level}: "
                                           f"already received on this connection")
            # a reconnected worker recomputes levels its previous connection delivered: drop, count
            it.duplicates += 1
            self.metrics.discard("duplicate")
            if header.task_done:
                self._task_done(conn, header)  # this connection is done too: it gets the next task
            return
        timing = it.timing[conn.slot]
        if self.buffer.writer(mid) != conn.epoch:
            if header.offset != 0:
                raise WireError(f"slot={conn.slot} level={header.level}: result starts at offset "
                                f"{header.offset}, expected 0")
            self.buffer.restart(mid, conn.epoch)
            if timing.first_byte_ms is None:
                timing.first_byte_ms = it.now_ms()
        if header.times is not None:
            timing.compute_ms, timing.delay_ms = header.times.compute_ms, header.times.delay_ms
        timing.bytes_up += self.buffer.accept(mid, chunk)
        if not header.last:
            return
        timing.result_arrival_ms[header.level] = it.now_ms()
        if timing.level_done_ms[header.level] is None:
            timing.level_done_ms[header.level] = timing.result_arrival_ms[header.level]
        it.complete |= bit
        it.covered |= self.code.support_bits[mid]
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
            timing.partitions_done = it.code.max_partitions(conn.slot)
            timing.finished = True
            if header.times is not None:
                timing.compute_ms, timing.delay_ms = header.times.compute_ms, header.times.delay_ms
            if timing.cancel_sent_ms is not None and timing.cancel_ack_ms is None:
                timing.cancel_ack_ms = timing.task_done_ms  # a Cancel crossed it: this answers it
            self._answered(it, conn.slot)
        self.on_ready(conn, header.iteration)

    def _answered(self, it: Iteration, slot: int) -> None:
        it.awaiting.discard(slot)
        self.answers_changed.set()

    def on_level_done(self, conn: Connection, note: wire.LevelDone) -> None:
        """notify signaling: the worker holds a level's vector; pull what the decode needs."""
        if not 0 <= note.level < self.code.n_levels:
            raise WireError(f"slot={conn.slot}: level={note.level}; allowed 0..{self.code.n_levels - 1}")
        if self.code.signaling != "notify":
            raise WireError(f"slot={conn.slot}: LevelDone under signaling={self.code.signaling}")
        it = self._iteration_for(conn, note.iteration)
        if it is None:
            return
        timing = it.timing[conn.slot]
        if timing.level_done_ms[note.level] is None:
            timing.level_done_ms[note.level] = it.now_ms()
        if note.times is not None:
            timing.compute_ms, timing.delay_ms = note.times.compute_ms, note.times.delay_ms
        it.notified |= 1 << self.code.message_id(note.level, conn.slot)
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
            conn = self.members.connections.get(slot)
            if conn is None:
                continue
            conn.outbox.put_nowait(wire.master_message(wire.Pull(it.number, level)))
            it.pulled |= 1 << mid

    def on_cancel_ack(self, conn: Connection, ack: wire.CancelAck) -> None:
        """The worker stopped an iteration; its ack records what it computed and may ask for the next task."""
        self._record_ack(conn, ack)
        if ack.ready:  # the ack doubles as Ready(after_iteration=ack.iteration)
            self.on_ready(conn, ack.iteration)

    def _recent(self, number: int) -> Iteration | None:
        """The current iteration or one of the last finished ones, for answers that arrive late."""
        if self.current is not None and self.current.number == number:
            return self.current
        return self.history.get(number)

    def _record_ack(self, conn: Connection, ack: wire.CancelAck) -> None:
        it = self._recent(ack.iteration)
        if it is None:
            self.metrics.discard("stale")
            return
        if ack.partitions_done < 0 or ack.partitions_done > it.code.max_partitions(conn.slot):
            raise WireError(f"slot={conn.slot}: partitions_done={ack.partitions_done} out of range")
        timing = it.timing[conn.slot]
        timing.cancel_ack_ms = it.now_ms()
        timing.partitions_done = ack.partitions_done
        timing.finished = ack.finished
        timing.compute_ms, timing.delay_ms = ack.times.compute_ms, ack.times.delay_ms
        if conn.state is SlotState.CANCELLING:
            conn.advance(SlotState.IDLE)
        self._answered(it, conn.slot)

    # -- decoding -------------------------------------------------------------------------------
    def _try_decode(self, it: Iteration) -> None:
        if it.phase is not IterationPhase.COLLECTING:
            return
        if it.covered != self._all_partitions and self.code.ignore_s is None:
            # a partition no received row touches: nothing decodes yet, and knowing it costs O(1) per message
            # (the decoder's own test walks every received message: O(n) per message, O(n^2) per iteration)
            if self.code.signaling == "notify":
                self._plan_pulls(it)
            return
        decoding = self.decoder.solve(it.complete)
        if decoding is None:
            if self.code.signaling == "notify":
                self._plan_pulls(it)
            return
        phase = IterationPhase.EXACT if decoding.exact else IterationPhase.APPROXIMATE
        self._finish(it, phase, decoding)

    def _on_deadline(self, it: Iteration, fail: bool = False) -> None:
        """The deadline passed (or, `fail`, the job ends now: the iteration fails without waiting)."""
        if it.phase is not IterationPhase.COLLECTING:
            return
        if not fail:
            _log.warning("deadline iteration=%d policy=%s complete_messages=%d", it.number, self.on_deadline,
                         it.complete.bit_count())
        if self.on_deadline == "approximate" and it.complete and not fail:
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
        combine = self.buffer.decode(decoding)
        if self.buffer.used_elements <= self._decode_inline:
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
        msg = wire.master_message(wire.Cancel(it.number))
        now = it.now_ms()
        for slot in sorted(it.sent):
            conn = self.members.connections.get(slot)
            if conn is None or conn.state is SlotState.IDLE:
                continue  # gone, or idle: done with the whole task (task_done), or it rejected the task
            conn.outbox.put_nowait(msg)
            it.timing[slot].cancel_sent_ms = now
            if conn.state is SlotState.WORKING and conn.task_iteration == it.number:
                conn.advance(SlotState.CANCELLING)
        self.history[it.number] = it
        for old in [k for k in self.history if k < it.number - HISTORY]:
            del self.history[old]

    # -- shutdown -------------------------------------------------------------------------------
    def shutdown(self, reason: str, final: bool = True) -> None:
        """Refuse new joins and streams, and end every live stream: with Shutdown when the job is over
        (`final`: the workers exit), without when it is only interrupted (they reconnect with backoff and
        carry on with the master that resumes the job)."""
        self.members.close_all(wire.master_message(wire.Shutdown(reason)) if final else None)

