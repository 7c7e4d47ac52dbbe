"""Membership through the coordinator: slot lifecycle, joins, identities, reservations, replaced connections.

The join token is checked before membership sees a call (the servicer's interceptor): see test_service_fuzz.py."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

import flexgc.master.membership as membership
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
from flexgc.master.membership import Connection, SlotState, is_close, slot_transition_allowed
from tests.master.jobs import (
    SLOT_MOVES,
    Job,
    N,
    drain,
    run,
)


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(SlotState, SlotState)),
                         ids=lambda s: s.name)
def test_slot_transition(src: SlotState, dst: SlotState) -> None:
    conn = Connection(slot=1, worker_id="w", epoch=1, outbox=asyncio.Queue(), state=src)
    allowed = (src.name, dst.name) in SLOT_MOVES

    assert slot_transition_allowed(src, dst) is allowed
    if allowed:
        conn.advance(dst)
        assert conn.state is dst
    else:
        with pytest.raises(InvalidTransitionError, match=f"slot=1 {src.name}->{dst.name}"):
            conn.advance(dst)
        assert conn.state is src


def test_reconnecting_worker_id_gets_its_slot_back() -> None:
    async def scenario() -> None:
        job = Job()
        first = job.join("pod-a", 2)
        conn = job.open_stream(first.slot, "pod-a", first.session_id)
        again_while_connected = job.join("pod-a", -1)
        job.c.members.close_stream(conn, "link cut")

        after_disconnect = job.join("pod-a", 0)       # its old slot wins over the preference

        assert first.slot == again_while_connected.slot == after_disconnect.slot == 2
        assert after_disconnect.session_id == first.session_id
        new = job.open_stream(2, "pod-a", first.session_id)
        assert new.epoch > conn.epoch and conn.state is SlotState.GONE

    run(scenario)


def test_slot_code_in_the_grant_matches_the_code() -> None:
    async def scenario() -> None:
        job = Job()

        grant = job.join("pod-a", 1)

        sc = wire.slot_code_from_proto(wire.slot_code_to_proto(grant.slot_code), job.code.k)
        assert sc.partitions == job.code.order[1]
        np.testing.assert_array_equal(sc.coefficients, job.code.B[:, 1, list(job.code.order[1])])

    run(scenario)


@pytest.mark.parametrize("preferred", [3, 99, -2, -2**31])
def test_join_refuses_unknown_slots(preferred: int) -> None:
    async def scenario() -> None:
        job = Job()

        with pytest.raises(UnknownSlotError, match=f"preferred_slot={preferred}; allowed -1 or 0..2"):
            job.join("pod-a", preferred)

    run(scenario)


def test_join_does_not_hand_out_a_connected_slot() -> None:
    async def scenario() -> None:
        job = Job()
        for slot in range(N - 1):
            job.connect(slot)

        other = job.join("intruder", 0)          # slot 0 is held and connected: the free one
        job.open_stream(other.slot, "intruder", other.session_id)

        assert other.slot == 2
        with pytest.raises(SlotsFullError, match="all 3 slots are taken: held by connected workers"):
            job.join("late", -1)
        with pytest.raises(UnknownSlotError, match="slot=0 is not held by worker_id='intruder'; join first"):
            job.open_stream(0, "intruder", other.session_id)

    run(scenario)


def test_workers_joining_at_once_get_different_slots_until_the_grace_ends(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import flexgc.master.membership as membership

    async def scenario() -> None:
        job = Job()
        first = job.join("a", -1)              # neither has opened its stream yet
        second = job.join("b", -1)
        assert (first.slot, second.slot) == (0, 1)

        monkeypatch.setattr(membership, "JOIN_GRACE_S", 0.0)   # "a" never connected: its grant lapses
        third = job.join("c", 0)

        assert third.slot == 0
        with pytest.raises(UnknownSlotError, match="slot=0 is not held by worker_id='a'; join first"):
            job.open_stream(0, "a", first.session_id)

    run(scenario)


@pytest.mark.parametrize(("worker_id", "session", "error", "match"), [
    ("", None, WireError, "worker_id must be 1..256 characters"),
    ("x" * 257, None, WireError, "worker_id must be 1..256 characters"),
    ("pod-a", "stale-session", StaleIterationError, "session_id='stale-session' is not this job's session"),
])
def test_join_and_open_stream_validate_identity(worker_id: str, session: str | None, error: type[Exception],
                                                match: str) -> None:
    async def scenario() -> None:
        job = Job()

        with pytest.raises(error, match=match):
            if session is None:
                job.join(worker_id, -1)
            else:
                grant = job.join(worker_id, -1)
                job.open_stream(grant.slot, worker_id, session)

    run(scenario)


def test_join_after_the_job_finished() -> None:
    async def scenario() -> None:
        job = Job()
        conn = job.connect(0)

        job.c.shutdown("job finished")

        with pytest.raises(JobFinishedError):
            job.join("pod-z", -1)
        items = drain(conn)
        assert items[-2].WhichOneof("kind") == "shutdown" and is_close(items[-1])

    run(scenario)


def test_open_stream_replaces_the_old_connection_of_the_slot() -> None:
    async def scenario() -> None:
        job = Job()
        old = job.connect(0)
        it = job.start(0)

        new = job.connect(0)

        assert is_close(drain(old)[-1])
        assert old.state is SlotState.GONE and job.c.members.connections[0] is new
        assert new.epoch == old.epoch + 1
        assert it.sent == {0}                                   # the task went out again on the new stream
        assert drain(new)[0].WhichOneof("kind") == "task"

    run(scenario)


def test_a_second_live_process_with_the_same_id_is_refused_and_the_first_keeps_its_slot(
        caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> tuple[Connection, list[str]]:
        job = Job()
        first = job.connect(0, worker_id="vm")             # process proc-vm
        refusals = []
        for _ in range(3):                                 # a second process, e.g. both on the default hostname
            for call in (lambda: job.join("vm", -1, instance_id="other"),
                         lambda: job.open_stream(0, "vm", job.c.members.session_id, instance_id="other")):
                with pytest.raises(AlreadyConnectedError) as info:
                    call()
                refusals.append(str(info.value))
        return first, refusals

    with caplog.at_level("WARNING", logger="flexgc.master.membership"):
        first, refusals = run(scenario)

    assert first.state is not SlotState.GONE
    assert all(r.startswith("worker_id='vm' is already connected to slot 0 from another live process") and
               r.endswith("give each worker its own --worker-id") for r in refusals)
    assert caplog.text.count("already connected from another live process") == 1  # warned once, not per join


def test_a_silent_connection_is_replaced_by_a_new_process_of_its_id(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> tuple[Connection, Connection]:
        job = Job()
        old = job.connect(0, worker_id="vm")
        old.last_seen -= membership.LIVENESS_S + 1.0       # nothing heard from it for longer than the liveness
        grant = job.join("vm", -1, instance_id="restarted")
        new = job.open_stream(grant.slot, "vm", grant.session_id, instance_id="restarted")
        return old, new

    old, new = run(scenario)

    assert old.state is SlotState.GONE and new.slot == 0 and new.instance_id == "restarted"


def test_a_disconnected_owner_s_slot_is_reserved_then_released(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> list[int | str]:
        job = Job()
        conns = [job.connect(slot) for slot in range(N)]
        job.c.members.close_stream(conns[1], "SIGKILL")      # w1 may come back
        seen: list[int | str] = []
        for _ in range(5):                                   # a squatter that keeps joining under a new id
            try:
                seen.append(job.join("squatter", 1, peer="ipv4:10.0.0.66:1234").slot)
            except SlotsFullError as exc:
                seen.append(str(exc).split(":")[0])
        seen.append(job.join("w1", -1, instance_id="restarted").slot)  # the owner is back: its slot
        job.c.members.close_stream(job.c.members.connections[0], "gone for good")
        monkeypatch.setattr(membership, "RESERVATION_S", 0.0)
        job.c.members._reservation_s = 0.0                 # the reservation has run out
        seen.append(job.join("replacement-pod", -1).slot)
        return seen

    seen = run(scenario)

    assert seen == ["all 3 slots are taken"] * 5 + [1, 0]


def test_a_grant_without_a_stream_is_not_renewed_by_more_joins(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> tuple[list[int | str], int]:
        job = Job()
        clock = [0.0]
        monkeypatch.setattr(membership.time, "monotonic", lambda: 1000.0 + clock[0])
        seen: list[int | str] = []
        for step in range(9):                                # joins every second; never opens a stream
            clock[0] = float(step)
            try:
                seen.append(job.join("squatter", 0).slot)
            except RateLimitedError as exc:
                seen.append(str(exc).split(";")[0])
            if step == 6:
                taken = job.join("worker", 0).slot    # 6 s > JOIN_GRACE_S after the first grant: free
        return seen, taken

    seen, taken = run(scenario)

    assert seen[:6] == [0] * 6                               # the one grant, not renewed
    assert seen[6:] == ["worker_id='squatter' was granted slot 0 and never opened its Work stream",
                        "worker_id='squatter' was granted a slot and never opened its Work stream",
                        "worker_id='squatter' was granted a slot and never opened its Work stream"]
    assert taken == 0


def test_joins_per_peer_are_bounded() -> None:
    async def scenario() -> tuple[int, str]:
        job = Job()
        granted = 0
        for i in range(100):
            try:
                job.join(f"flood-{i}", -1, peer="ipv4:10.9.8.7:4242")
                granted += 1
            except (RateLimitedError, SlotsFullError) as exc:
                if isinstance(exc, RateLimitedError):
                    return granted, str(exc)
        return granted, ""

    granted, error = run(scenario)

    assert error.startswith("too many joins from ipv4:10.9.8.7: at most 4 per second (bursts of 8)")
    assert granted <= N


def test_a_released_slot_is_free_at_once_and_a_live_one_is_kept() -> None:
    # an elastic plan removed slot 1 (its worker gone for good): any worker may take it, reservation or not
    async def scenario() -> list[int | str]:
        job = Job()
        conns = [job.connect(slot) for slot in range(N)]
        job.c.members.close_stream(conns[1], "SIGKILL")
        seen: list[int | str] = []
        try:
            seen.append(job.join("spare", -1).slot)          # reserved for w1: a spare must wait
        except SlotsFullError as exc:
            seen.append(str(exc).split(":")[0])
        job.c.members.release(1)
        job.c.members.release(0)                              # live: released only when it is gone
        seen.append(job.join("spare", -1).slot)
        seen.append(job.c.members.connections[0].worker_id)
        return seen

    assert run(scenario) == ["all 3 slots are taken", 1, "w0"]


def test_a_joining_worker_takes_a_slot_with_work_before_an_empty_one() -> None:
    # slot 0 holds nothing (an elastic job's room to grow, or a removed slot): workers without a preferred
    # slot fill the slots the code gives work to first, and the empty one last
    async def scenario() -> list[int]:
        job = Job(code="weighted:blocks=0+2+2,ring=0+1+2,smax=1")
        return [job.join(f"w{i}", -1).slot for i in range(3)]

    assert run(scenario) == [1, 2, 0]


def test_a_slot_granted_moments_ago_is_not_released_under_its_worker() -> None:
    # a worker joins an empty slot just before a plan switch releases the empty slots: its grant stands, and
    # its stream opens (it was bounced with NOT_FOUND before)
    async def scenario() -> str:
        job = Job(code="weighted:blocks=0+2+2,ring=0+1+2,smax=1")
        job.connect(1)
        job.connect(2)
        grant = job.join("newcomer", -1)
        assert grant.slot == 0
        job.c.members.release(0)
        return job.open_stream(grant.slot, "newcomer", grant.session_id).worker_id

    assert run(scenario) == "newcomer"
