"""Who holds which worker slot: joins, the live Work streams, and waiting for workers.

A slot is owned by a worker id (the worker's stable identity: a reconnecting worker gets its slot back)
and has at most one live connection, whose lifecycle is `SlotState` (docs/design.md §4):

    JOINED -> IDLE -> WORKING -> CANCELLING -> IDLE ...;  WORKING -> IDLE (task_done);  any -> GONE

Membership knows nothing of iterations; the coordinator moves a connection between IDLE, WORKING and
CANCELLING as tasks, cancels and answers pass.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flexgc.common import wire
from flexgc.common.errors import (
    AuthError,
    InvalidTransitionError,
    JobFinishedError,
    StaleIterationError,
    UnknownSlotError,
    WireError,
)

_log = logging.getLogger(__name__)

CLOSE = object()  # sentinel that ends a connection's outbox
SHARED_ID_REPLACEMENTS, SHARED_ID_WINDOW_S = 3, 10.0  # a worker_id replacing itself this often: shared id
JOIN_GRACE_S = 5.0  # a slot granted by Join stays its worker's this long before the stream is open


class SlotState(enum.Enum):
    """Lifecycle of one live connection of a slot."""

    JOINED = 1
    IDLE = 2
    WORKING = 3
    CANCELLING = 4
    GONE = 5


# WORKING -> IDLE: the task_done chunk (or a Ready) says the worker is idle; IDLE -> IDLE: a repeated Ready.
# Every Ready (also the one a CancelAck carries) passes through IDLE before the next task makes the slot
# WORKING.
_SLOT_MOVES = {("JOINED", "IDLE"), ("IDLE", "WORKING"), ("WORKING", "CANCELLING"),
               ("WORKING", "IDLE"), ("CANCELLING", "IDLE"),
               ("IDLE", "IDLE")} | {(s.name, "GONE") for s in SlotState if s is not SlotState.GONE}


def slot_transition_allowed(src: SlotState, dst: SlotState) -> bool:
    """Whether the slot lifecycle table allows the move src -> dst."""
    return (src.name, dst.name) in _SLOT_MOVES


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
        """Move to `to`, or raise InvalidTransitionError if the table does not allow it."""
        if not slot_transition_allowed(self.state, to):
            raise InvalidTransitionError(f"slot={self.slot} {self.state.name}->{to.name}")
        self.state = to


def is_close(item: Any) -> bool:
    """Whether an outbox item is the sentinel that ends its connection's stream."""
    return item is CLOSE


class Membership:
    """The n slots of one job session: owners, live connections and the join rules."""

    def __init__(self, n: int, *, token: str | None = None, max_workers: int = 0,
                 on_lost: Callable[[Connection], None] | None = None) -> None:
        self.n = n
        self._on_lost = on_lost  # told of every live connection that ends (closed or replaced)
        self.session_id = uuid.uuid4().hex
        self._token = token
        self._max_workers = max_workers or n
        self._owner: dict[int, str] = {}              # slot -> worker_id
        self._slot_of: dict[str, int] = {}            # worker_id -> slot
        self.connections: dict[int, Connection] = {}  # slot -> live connection
        self._epoch = 0
        self._granted_at: dict[int, float] = {}        # slot -> when Join last granted it
        self._replaced: dict[int, list[float]] = {}    # slot -> recent times a connection was replaced
        self._warned_shared: dict[str, float] = {}     # worker_id -> when we last warned it looks shared
        self.slots_changed = asyncio.Event()
        self.finished = False

    def check_token(self, token: str) -> None:
        """Raise AuthError unless `token` is the job's token (or the job has none)."""
        if self._token is not None and token != self._token:
            raise AuthError("join token missing or wrong")

    def join(self, worker_id: str, preferred_slot: int, token: str) -> int:
        """The slot for `worker_id`: its own if it had one, else the preferred or the first free slot."""
        self.check_token(token)
        if self.finished:
            raise JobFinishedError("the job has finished; nothing to join")
        if not worker_id or len(worker_id) > 256:
            raise WireError("worker_id must be 1..256 characters")
        n = self.n
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
        return slot

    def _slot_free(self, slot: int) -> bool:
        """Unowned, or owned by a worker that is not connected, unless Join granted it moments ago (its
        worker is about to open its stream: two workers joining at once must not get the same slot)."""
        if slot not in self._owner:
            return True
        if slot in self.connections:
            return False
        return time.monotonic() - self._granted_at.get(slot, -math.inf) > JOIN_GRACE_S

    def open_stream(self, hello: wire.Hello) -> Connection:
        """A new live connection for the slot the hello's worker holds (its old connection is closed)."""
        slot, worker_id, session_id = hello.slot, hello.worker_id, hello.session_id
        self.check_token(hello.token)
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

    def close_stream(self, conn: Connection, reason: str) -> None:
        """End `conn` if it is still its slot's live connection: its outbox gets the close sentinel, and
        `on_lost` writes off what it owed."""
        if self.connections.get(conn.slot) is not conn:
            return
        del self.connections[conn.slot]
        conn.advance(SlotState.GONE)
        conn.outbox.put_nowait(CLOSE)
        self.slots_changed.set()
        _log.info("disconnected slot=%d epoch=%d reason=%s", conn.slot, conn.epoch, reason)
        if self._on_lost is not None:
            self._on_lost(conn)

    @property
    def connected(self) -> int:
        """Number of live connections."""
        return len(self.connections)

    async def wait_for_workers(self, count: int, timeout_s: float) -> bool:
        """Wait until `count` workers are connected (True) or `timeout_s` passes (False; 0 = forever)."""
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

    def broadcast(self, message: Any) -> None:
        """Send `message` to every live connection, then close them all (the job is over)."""
        self.finished = True
        for conn in list(self.connections.values()):
            conn.outbox.put_nowait(message)
            conn.outbox.put_nowait(CLOSE)
