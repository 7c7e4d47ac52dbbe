"""Who holds which worker slot: joins, the live Work streams, and waiting for workers.

A slot is owned by a worker id (the worker's stable identity: a reconnecting worker gets its slot back)
and has at most one live connection, whose lifecycle is `SlotState` (docs/design.md §4.7):

    JOINED -> IDLE -> WORKING -> CANCELLING -> IDLE ...;  WORKING -> IDLE (task_done);  any -> GONE

The join rules (docs/design.md §4.2):
- A worker id gets its own slot back. If that slot still has a live connection of another process of
  the same id (another `instance_id`) heard from within `liveness_s`, the newcomer is refused
  (AlreadyConnectedError): two live workers sharing an id never knock each other off. A connection that
  has gone silent, or the same process reconnecting, is replaced at once.
- A slot whose owner had a live stream and lost it stays reserved for that owner for `reservation_s`
  (default 30 s): a new id gets a free slot or a clear refusal (SlotsFullError), never the slot of a
  worker that may come back. After that the slot is free for anyone (e.g. a replacement pod with a new
  name).
- A grant that no stream has followed holds its slot for JOIN_GRACE_S from the first Join; repeated
  Joins of the same id do not renew it, and once it lapses the id must wait JOIN_GRACE_S before it may
  join again (so a client that joins and never works cannot keep a slot).
- Joins are limited per peer host (a token bucket: burst max(8, 2n), refill max(4, n) per second).
- A worker without a preferred slot gets a free slot the code gives work to before an empty one (an elastic
  job's room to grow, a slot an elastic plan removed).
- Failure domains: a worker without a preferred slot gets the lowest free slot that keeps its host's slots a
  set the code can lose (`can_lose`, from the coordinator); when none does, the lowest free one, and a
  warning naming the host once.

The join token is checked before any of this, by the servicer's interceptor (service.py). Membership
knows nothing of iterations; the coordinator moves a connection between IDLE, WORKING and
CANCELLING as tasks, cancels and answers pass, and is told of every connection that ends (`on_lost`).
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
    AlreadyConnectedError,
    InvalidTransitionError,
    JobFinishedError,
    RateLimitedError,
    SlotsFullError,
    StaleIterationError,
    UnknownSlotError,
    WireError,
)

_log = logging.getLogger(__name__)

CLOSE = object()  # sentinel that ends a connection's outbox
JOIN_GRACE_S = 5.0  # a slot granted by Join stays its worker's this long before the stream is open
RESERVATION_S = 30.0  # a disconnected owner's slot is kept for it this long
LIVENESS_S = 6.0  # a connection heard from this recently is live (the master passes 3 x --heartbeat-s)
DUPLICATE_WARNING_S = 30.0  # how often the master warns about one worker id used by two processes


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
    instance_id: str = ""                # the worker process behind it (empty: an older worker)
    host: str = ""                       # the machine it runs on (its hostname, or its address)
    state: SlotState = SlotState.JOINED
    last_seen: float = field(default_factory=time.monotonic)  # last message from the worker
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


def peer_host(peer: str) -> str:
    """The address part of a gRPC peer string ("ipv4:10.0.0.7:51234" -> "10.0.0.7", "ipv6:[::1]:5" -> "::1")."""
    address = peer.split(":", 1)[1] if peer.startswith(("ipv4:", "ipv6:")) else peer
    return address.rsplit(":", 1)[0].strip("[]") if ":" in address else address


@dataclass
class _Slot:
    owner: str | None = None             # worker_id
    host: str = ""                       # the owner's machine
    granted_at: float = -math.inf        # first Join of the current grant (not renewed by more Joins)
    streamed: bool = False               # the owner has had a live stream (then its slot is reserved)
    lost_at: float = -math.inf           # when the owner's last live connection ended


@dataclass
class _Bucket:
    tokens: float
    at: float


class Membership:
    """The n slots of one job session: owners, live connections and the join rules (module docstring)."""

    def __init__(self, n: int, *, max_workers: int = 0,
                 on_lost: Callable[[Connection], None] | None = None, reservation_s: float = RESERVATION_S,
                 liveness_s: float = LIVENESS_S, can_lose: Callable[[frozenset[int]], bool] | None = None,
                 has_work: Callable[[int], bool] | None = None) -> None:
        self.n = n
        # whether the code in use gives a slot partitions: a joining worker takes a free slot with work first,
        # an empty one (elastic growth, a removed slot) only when none is free
        self._has_work = has_work
        self._on_lost = on_lost  # told of every live connection that ends (closed or replaced)
        # whether the code still decodes exactly without these slots: a host's slots are placed so that losing
        # the host is within the tolerance where that is possible (failure domains)
        self._can_lose = can_lose
        self._warned_hosts: set[str] = set()
        self.session_id = uuid.uuid4().hex
        self._max_workers = max_workers or n
        self._reservation_s = reservation_s
        self._liveness_s = liveness_s
        self._slots = [_Slot() for _ in range(n)]
        self._slot_of: dict[str, int] = {}            # worker_id -> slot
        self.connections: dict[int, Connection] = {}  # slot -> live connection
        self._epoch = 0
        self._buckets: dict[str, _Bucket] = {}        # peer host -> join token bucket
        self._unstreamed: dict[str, float] = {}        # worker_id -> when it may join again (grant unused)
        self._warned_duplicate: dict[str, float] = {}  # worker_id -> when the master last warned about it
        self.slots_changed = asyncio.Event()
        self.finished = False

    def join(self, ask: wire.JoinAsk, peer: str = "") -> int:
        """The slot for the asking worker: its own if it has one, else the preferred or the first free one."""
        if self.finished:
            raise JobFinishedError("the job has finished; nothing to join")
        worker_id, n = ask.worker_id, self.n
        if not worker_id or len(worker_id) > 256:
            raise WireError("worker_id must be 1..256 characters")
        if not -1 <= ask.preferred_slot < n:
            raise UnknownSlotError(f"preferred_slot={ask.preferred_slot}; allowed -1 or 0..{n - 1}")
        self._take_join_token(peer)
        host = ask.host or peer_host(peer)
        now = time.monotonic()
        if now < self._unstreamed.get(worker_id, -math.inf):
            raise RateLimitedError(f"worker_id={worker_id!r} was granted a slot and never opened its Work stream; "
                                   f"it may join again {self._unstreamed[worker_id] - now:.1f} s from now")
        slot = self._slot_of.get(worker_id)
        if slot is not None and not self._slots[slot].streamed and now - self._slots[slot].granted_at > JOIN_GRACE_S:
            # its grant lapsed unused: the slot is free again, and this id waits before it may join again
            self._slots[slot] = _Slot()
            del self._slot_of[worker_id]
            self._unstreamed[worker_id] = now + JOIN_GRACE_S
            if len(self._unstreamed) > 4096:
                self._unstreamed = {k: v for k, v in self._unstreamed.items() if v > now}
            raise RateLimitedError(f"worker_id={worker_id!r} was granted slot {slot} and never opened its Work "
                                   f"stream; it may join again {JOIN_GRACE_S:g} s from now")
        if slot is not None:
            conn = self.connections.get(slot)
            if conn is not None:
                self._refuse_if_live_elsewhere(conn, ask.instance_id, now)
            if self._slots[slot].streamed:
                self._slots[slot].granted_at = now
            # else: the grant stands from the first Join; repeated Joins renew nothing
            self._slots[slot].host = host
        else:
            slot = self._free_slot(ask.preferred_slot, now, host)
            old = self._slots[slot].owner
            if old is not None:
                self._slot_of.pop(old, None)
            self._slots[slot] = _Slot(owner=worker_id, host=host, granted_at=now)
            self._slot_of[worker_id] = slot
        _log.info("joined slot=%d worker_id=%s host=%s", slot, worker_id, host)
        return slot

    def host_of(self, slot: int) -> str:
        """The machine of the worker that holds `slot` ("" if none)."""
        return self._slots[slot].host if 0 <= slot < self.n else ""

    def release(self, slot: int) -> None:
        """Free a slot with no live connection at once, reservation or not (an elastic plan removed it: any
        worker that joins may take it; its old owner, should it come back, joins like a new one)."""
        if slot in self.connections or not 0 <= slot < self.n:
            return
        s = self._slots[slot]
        if s.owner is not None and not s.streamed and time.monotonic() - s.granted_at <= JOIN_GRACE_S:
            return  # granted moments ago to a worker about to open its stream (it is being taken in)
        owner = self._slots[slot].owner
        if owner is not None:
            self._slot_of.pop(owner, None)
        self._slots[slot] = _Slot()
        self.slots_changed.set()

    def _take_join_token(self, peer: str) -> None:
        host = peer.rsplit(":", 1)[0] if peer else ""
        burst, rate = max(8.0, 2.0 * self.n), max(4.0, float(self.n))
        now = time.monotonic()
        bucket = self._buckets.setdefault(host, _Bucket(burst, now))
        bucket.tokens = min(burst, bucket.tokens + max(0.0, now - bucket.at) * rate)
        bucket.at = now
        if bucket.tokens < 1.0:
            raise RateLimitedError(f"too many joins from {host or 'this peer'}: at most {rate:g} per second "
                                   f"(bursts of {burst:g}); retry later")
        bucket.tokens -= 1.0
        if len(self._buckets) > 4096:  # forget idle peers: a bounded table even under many addresses
            for key in [k for k, b in self._buckets.items() if now - b.at > 60.0]:
                del self._buckets[key]

    def _free_slot(self, preferred: int, now: float, host: str = "") -> int:
        if preferred >= 0 and self._is_free(preferred, now):
            return preferred
        free = [slot for slot in range(self.n) if self._is_free(slot, now)]
        if free:
            working = [slot for slot in free if self._has_work is None or self._has_work(slot)]
            return self._place(working or free, host, now)
        raise SlotsFullError(f"all {self.n} slots are taken: held by connected workers, reserved for "
                             f"disconnected ones that may come back (for {self._reservation_s:g} s after they "
                             f"left), or granted in the last {JOIN_GRACE_S:g} s to workers about to connect")

    def _place(self, free: list[int], host: str, now: float) -> int:
        """The free slot for a worker of `host`: the first that keeps the host's slots a set the code can lose
        (docs/design.md §4.2, failure domains); the first free one, and a warning naming the host once, when
        none does."""
        if self._can_lose is None or not host:
            return free[0]
        held = frozenset(slot for slot, s in enumerate(self._slots)
                         if s.host == host and s.owner is not None and not self._is_free(slot, now))
        for slot in free:
            if self._can_lose(held | {slot}):
                return slot
        if host not in self._warned_hosts:
            self._warned_hosts.add(host)
            _log.warning("failure domain host=%s: its slots %s would take more than the code tolerates if the host "
                         "failed (no free slot keeps it within the tolerance); spread the workers over more hosts "
                         "or use a code with a larger s_max", host, sorted(held | {free[0]}))
        return free[0]

    def _is_free(self, slot: int, now: float) -> bool:
        s = self._slots[slot]
        if s.owner is None:
            return True
        if slot in self.connections:
            return False
        if s.streamed:
            return now - s.lost_at > self._reservation_s
        return now - s.granted_at > JOIN_GRACE_S

    def _refuse_if_live_elsewhere(self, conn: Connection, instance_id: str, now: float) -> None:
        """Two processes with one worker id: the one already connected keeps the slot while it is live."""
        if instance_id and instance_id == conn.instance_id:
            return  # the same process reconnecting: its old stream is dead, whatever the master believes
        silent_s = now - conn.last_seen
        if silent_s > self._liveness_s:
            return  # silent: the new process replaces it
        if now - self._warned_duplicate.get(conn.worker_id, -math.inf) > DUPLICATE_WARNING_S:
            self._warned_duplicate[conn.worker_id] = now
            _log.warning("slot=%d: worker_id=%r is already connected from another live process; refusing the "
                         "second one (give each worker its own --worker-id / FLEXGC_WORKER_ID; the default is "
                         "the hostname)", conn.slot, conn.worker_id)
        raise AlreadyConnectedError(f"worker_id={conn.worker_id!r} is already connected to slot {conn.slot} from "
                                    f"another live process (heard {silent_s:.1f} s ago); give each worker its own "
                                    f"--worker-id")

    def open_stream(self, hello: wire.Hello) -> Connection:
        """A new live connection for the slot the hello's worker holds (replacing a dead or silent one)."""
        slot, worker_id, session_id = hello.slot, hello.worker_id, hello.session_id
        if self.finished:
            raise JobFinishedError("the job has finished; nothing to work on")
        if session_id != self.session_id:
            raise StaleIterationError(f"session_id={session_id!r} is not this job's session; join again")
        if not 0 <= slot < self.n or self._slots[slot].owner != worker_id:
            raise UnknownSlotError(f"slot={slot} is not held by worker_id={worker_id!r}; join first")
        if len(self.connections) >= self._max_workers and slot not in self.connections:
            raise SlotsFullError(f"max_workers={self._max_workers} connections reached")
        now = time.monotonic()
        old = self.connections.get(slot)
        if old is not None:
            self._refuse_if_live_elsewhere(old, hello.instance_id, now)
            self.close_stream(old, "replaced by a new connection of the same worker")
        self._epoch += 1
        conn = Connection(slot, worker_id, self._epoch, asyncio.Queue(), hello.instance_id, self._slots[slot].host)
        self.connections[slot] = conn
        self._slots[slot].streamed = True
        self.slots_changed.set()
        _log.info("connected slot=%d worker_id=%s epoch=%d", slot, worker_id, conn.epoch)
        return conn

    def close_stream(self, conn: Connection, reason: str) -> None:
        """End `conn` if it is still its slot's live connection: its outbox gets the close sentinel, and
        `on_lost` writes off what it owed."""
        if self.connections.get(conn.slot) is not conn:
            return
        del self.connections[conn.slot]
        self._slots[conn.slot].lost_at = time.monotonic()
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

    @property
    def joined(self) -> int:
        """Workers that hold a slot now: connected, or granted one moments ago and about to connect."""
        now = time.monotonic()
        return sum(1 for slot, s in enumerate(self._slots) if s.owner is not None and (
            slot in self.connections or (not s.streamed and now - s.granted_at <= JOIN_GRACE_S)))

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

    def close_all(self, last_message: Any = None) -> None:
        """No more joins or streams; every live connection gets `last_message` (if any) and is closed."""
        self.finished = True
        for conn in list(self.connections.values()):
            if last_message is not None:
                conn.outbox.put_nowait(last_message)
            conn.outbox.put_nowait(CLOSE)
