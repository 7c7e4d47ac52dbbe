"""Membership through the coordinator: slot lifecycle, joins, tokens, identities, replaced connections."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from flexgc.common import wire
from flexgc.common.errors import (
    AuthError,
    InvalidTransitionError,
    JobFinishedError,
    StaleIterationError,
    UnknownSlotError,
    WireError,
)
from flexgc.master.membership import Connection, SlotState, is_close, slot_transition_allowed
from tests.master.jobs import (
    SLOT_MOVES,
    TOKEN,
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
        first = job.join("pod-a", 2, TOKEN)
        conn = job.open_stream(first.slot, "pod-a", first.session_id, TOKEN)
        again_while_connected = job.join("pod-a", -1, TOKEN)
        job.c.members.close_stream(conn, "link cut")

        after_disconnect = job.join("pod-a", 0, TOKEN)       # its old slot wins over the preference

        assert first.slot == again_while_connected.slot == after_disconnect.slot == 2
        assert after_disconnect.session_id == first.session_id
        new = job.open_stream(2, "pod-a", first.session_id, TOKEN)
        assert new.epoch > conn.epoch and conn.state is SlotState.GONE

    run(scenario)


def test_slot_code_in_the_grant_matches_the_code() -> None:
    async def scenario() -> None:
        job = Job()

        grant = job.join("pod-a", 1, TOKEN)

        sc = wire.slot_code_from_proto(wire.slot_code_to_proto(grant.slot_code), job.code.k)
        assert sc.partitions == job.code.order[1]
        np.testing.assert_array_equal(sc.coefficients, job.code.B[:, 1, list(job.code.order[1])])

    run(scenario)


@pytest.mark.parametrize("preferred", [3, 99, -2, -2**31])
def test_join_refuses_unknown_slots(preferred: int) -> None:
    async def scenario() -> None:
        job = Job()

        with pytest.raises(UnknownSlotError, match=f"preferred_slot={preferred}; allowed -1 or 0..2"):
            job.join("pod-a", preferred, TOKEN)

    run(scenario)


def test_join_does_not_hand_out_a_connected_slot() -> None:
    async def scenario() -> None:
        job = Job()
        for slot in range(N - 1):
            job.connect(slot)

        other = job.join("intruder", 0, TOKEN)          # slot 0 is held and connected: the free one
        job.open_stream(other.slot, "intruder", other.session_id, TOKEN)

        assert other.slot == 2
        with pytest.raises(UnknownSlotError, match="all 3 slots are held by connected workers"):
            job.join("late", -1, TOKEN)
        with pytest.raises(UnknownSlotError, match="slot=0 is not held by worker_id='intruder'; join first"):
            job.open_stream(0, "intruder", other.session_id, TOKEN)

    run(scenario)


def test_workers_joining_at_once_get_different_slots_until_the_grace_ends(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import flexgc.master.membership as membership

    async def scenario() -> None:
        job = Job()
        first = job.join("a", -1, TOKEN)              # neither has opened its stream yet
        second = job.join("b", -1, TOKEN)
        assert (first.slot, second.slot) == (0, 1)

        monkeypatch.setattr(membership, "JOIN_GRACE_S", 0.0)   # "a" never connected: its grant lapses
        third = job.join("c", 0, TOKEN)

        assert third.slot == 0
        with pytest.raises(UnknownSlotError, match="slot=0 is not held by worker_id='a'; join first"):
            job.open_stream(0, "a", first.session_id, TOKEN)

    run(scenario)


@pytest.mark.parametrize("token", ["", "tok-4", "TOK-42", "tok-42 "])
def test_bad_token_is_refused_everywhere_and_never_echoed(token: str) -> None:
    async def scenario() -> None:
        job = Job()
        grant = job.join("pod-a", 0, TOKEN)

        errors = []
        for call in (lambda: job.join("pod-b", -1, token),
                     lambda: job.open_stream(0, "pod-a", grant.session_id, token),
                     lambda: job.c.members.check_token(token)):
            with pytest.raises(AuthError) as info:
                call()
            errors.append(str(info.value))

        assert errors == ["join token missing or wrong"] * 3
        assert job.c.members.connected == 0

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
                job.join(worker_id, -1, TOKEN)
            else:
                grant = job.join(worker_id, -1, TOKEN)
                job.open_stream(grant.slot, worker_id, session, TOKEN)

    run(scenario)


def test_join_after_the_job_finished() -> None:
    async def scenario() -> None:
        job = Job()
        conn = job.connect(0)

        job.c.shutdown("job finished")

        with pytest.raises(JobFinishedError):
            job.join("pod-z", -1, TOKEN)
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


@pytest.mark.parametrize(("connections", "warned"), [(3, False), (4, True)])
def test_a_worker_id_that_keeps_replacing_its_own_connection_is_reported_as_shared(
        connections: int, warned: bool, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        job = Job()
        for _ in range(connections):                  # the first connects, each later one replaces it
            job.connect(0, worker_id="vm")

    with caplog.at_level("WARNING", logger="flexgc.master.membership"):
        run(scenario)

    assert ("several worker processes seem to share this id" in caplog.text) is warned
