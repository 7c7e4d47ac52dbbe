"""Plan switches in the coordinator, in process (docs/design.md §2.10): announced ahead, used only from an
iteration boundary once every worker holds the plan, never mixed within an iteration, late results checked
against their own plan."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flexgc.common import wire
from flexgc.common.codes import parse_code, weighted_code
from flexgc.common.errors import UnknownSlotError
from flexgc.master.data import JobData
from flexgc.master.speeds import SpeedTracker, per_unit_times
from flexgc.v1 import coordinator_pb2 as pb
from tests.master.jobs import FEATURES, Job, N, assert_exact, drain, run

SPLIT = "nested:levels=0,1,split=2"      # k = 6 on N = 3 slots
PLAN = weighted_code((1, 2, 3), (2, 1, 0), 1)


def _msg(item: object) -> pb.MasterMessage:
    return item.message if isinstance(item, wire.Preserialized) else item  # type: ignore[return-value]


def _plans(conn_items: list[object]) -> list[wire.Plan]:
    events = [wire.master_event(_msg(m), 6) for m in conn_items]
    return [e for e in events if isinstance(e, wire.Plan)]


def test_a_plan_is_announced_then_used_from_the_next_boundary_once_every_worker_holds_it() -> None:
    async def scenario() -> None:
        job = Job(code=SPLIT)
        conns, it0 = job.begin()
        drain_all = [drain(c) for c in conns]
        assert all(not _plans(items) for items in drain_all)
        pending = job.c.announce(PLAN, "test")
        assert pending.plan == 1
        for conn in conns:
            (plan,) = _plans(drain(conn))
            assert plan.plan == 1 and plan.slot_code.partitions == PLAN.order[conn.slot]
        # not while iteration 0 collects, and not before every worker is ready
        assert job.c.switch_ready() is None
        for level, slot in [(0, 0), (0, 1), (0, 2)]:
            job.deliver(conns[slot], 0, level)
        assert_exact(it0, job.expected(0))
        job.finish_and_ack(it0, conns)
        job.c.on_message(conns[0], wire.PlanReady(1))
        job.c.on_message(conns[1], wire.PlanReady(1))
        assert job.c.switch_ready() is None, "a worker without the plan's data"
        job.c.on_message(conns[2], wire.PlanReady(1))
        assert job.c.switch_ready() is pending
        assert job.c.code is PLAN and job.c.plan == 1 and job.c.pending is None
        it1 = job.start(1)
        assert it1.code is PLAN and it1.plan == 1
        task = [_msg(m) for m in drain(conns[0]) if _msg(m).HasField("task")]
        assert task and task[0].task.plan == 1
        # decoded with the new plan's rows: slot 2's own block (3 partitions) + slot 1's (2) + slot 0's (1)
        job.code = PLAN  # coded messages of the new plan
        for slot in range(N):
            job.deliver(conns[slot], 1, 0)
        assert_exact(it1, job.expected(1))

    run(scenario)


def test_switch_is_forced_after_the_wait_even_without_plan_ready() -> None:
    async def scenario() -> None:
        job = Job(code=SPLIT)
        conns, it0 = job.begin()
        for slot in range(N):
            job.deliver(conns[slot], 0, 0)
        job.finish_and_ack(it0, conns)
        job.c.announce(PLAN, "test")
        assert job.c.switch_ready() is None
        assert job.c.switch_ready(force=True) is not None and job.c.plan == 1

    run(scenario)


def test_a_worker_whose_join_predates_the_switch_is_sent_the_plan_when_its_stream_opens() -> None:
    async def scenario() -> None:
        job = Job(code=SPLIT)
        grant = job.join("w0", 0)
        assert grant.plan == 0
        job.c.announce(PLAN, "test")
        job.c.switch_ready(force=True)
        conn = job.open_stream(grant.slot, "w0", grant.session_id)
        job.c.stream_opened(conn)
        (plan,) = _plans(drain(conn))
        assert plan.plan == 1 and plan.slot_code.partitions == PLAN.order[0]

    run(scenario)


def test_a_late_result_is_checked_against_the_plan_of_its_own_iteration() -> None:
    async def scenario() -> None:
        job = Job(code=SPLIT)
        conns, it0 = job.begin()
        for slot in (0, 1):
            job.deliver(conns[slot], 0, 1)  # level 1 of two slots decodes
        assert_exact(it0, job.expected(0))
        job.c.announce(weighted_code((2, 2, 2), (0, 1, 2), 0), "test")  # one level only
        job.c.switch_ready(force=True)
        assert job.c.code.n_levels == 1
        # slot 2's level-1 result of iteration 0 arrives now: level 1 exists in iteration 0's plan, so it is
        # a stale result (counted, dropped), not a malformed one
        before = job.discarded("stale")
        job.deliver(conns[2], 0, 1)
        assert job.discarded("stale") == before + 3  # its 3 chunks
        job.c.start_iteration(1, np.zeros(5))
        with pytest.raises(Exception, match="level"):
            job.c.on_result(conns[2], job.chunks(1, 1, 2)[0])

    run(scenario)


def test_plan_messages_round_trip_on_the_wire() -> None:
    sc = wire.SlotCode((3, 4, 5), (3,), (0,), np.ones((1, 3)), "push")
    msg = wire.master_message(wire.Plan(7, sc))
    back = wire.master_event(pb.MasterMessage.FromString(msg.SerializeToString()), 6)
    assert isinstance(back, wire.Plan) and back.plan == 7 and back.slot_code.partitions == (3, 4, 5)
    with pytest.raises(Exception, match="partitions"):
        wire.master_event(msg, 4)  # partition 5 does not exist at k = 4
    ready = wire.worker_event(wire.worker_message(wire.PlanReady(7)), 0, 3)
    assert ready == wire.PlanReady(7)
    assert parse_code(SPLIT, N).k == 6


# -- speed estimates ------------------------------------------------------------------------------

def _worker(slot: int, compute: list[float], delay: list[float], sent: float | None = 0.0,
            cancel: float | None = None, ack: float | None = None, done: float | None = None) -> dict[str, object]:
    return {"slot": slot, "task_sent_ms": sent, "compute_ms": compute, "delay_ms": delay, "cancel_sent_ms": cancel,
            "cancel_ack_ms": ack, "task_done_ms": done}


def test_per_unit_times_from_a_record() -> None:
    workers = [_worker(0, [1.0, 1.0], [9.0, 9.0], done=25.0),            # 10 ms per partition
               _worker(1, [], [], cancel=30.0, ack=31.0),                   # cancelled before its first one
               _worker(2, [], []),                                         # never answered
               _worker(3, [], [], sent=None)]                              # not sent the task
    out = per_unit_times(8, workers)
    assert out == {0: pytest.approx(0.08), 1: pytest.approx(0.24), 2: math.inf}


def test_speed_tracker_chronic_is_robust_to_a_stall_and_follows_a_persistent_change() -> None:
    tracker = SpeedTracker(2, window=30)
    for t in range(20):
        tracker.observe({0: 1.0, 1: 50.0 if t == 10 else 2.0}, {0: "a", 1: "b"})
    assert tracker.chronic() == pytest.approx([1.0, 2.0])       # one stall does not move the median
    for _ in range(5):
        tracker.observe({0: 4.0, 1: 2.0}, {0: "a", 1: "b"})
    assert tracker.chronic()[0] == pytest.approx(4.0)           # 5 of the last 8 at 4x: the median moved
    assert tracker.recent()[0] == pytest.approx(4.0, rel=0.05)
    tracker.observe({0: 9.0, 1: 2.0}, {0: "c", 1: "b"})         # another worker took slot 0: history anew
    assert tracker.samples(0) == 1 and tracker.chronic()[0] == 9.0
    assert tracker.matrix().shape == (26, 2) and tracker.matrix()[0, 0] == 9.0  # padded with its median
    assert [row["worker_id"] for row in tracker.snapshot()] == ["c", "b"]


def test_fetch_partition_serves_an_announced_plans_partitions_and_still_refuses_others() -> None:
    # the rows a FetchPartition may take: those of the plan in use and of the plan announced ahead of it
    job = Job(code=SPLIT)
    data = JobData(job.c.data, rows=lambda j: (np.full((1, FEATURES), float(j)), np.zeros(1)))
    sid = job.c.members.session_id
    # slot 2 holds partitions 4, 5 under SPLIT (plus its backup's); under PLAN its own block is 3, 4, 5 and more
    new = next(j for j in PLAN.order[2] if j not in job.c.code.order[2])
    with pytest.raises(UnknownSlotError):
        data.rows_for(wire.PartitionAsk(2, new, sid), job.c.members, [job.c.code])
    X, _ = data.rows_for(wire.PartitionAsk(2, new, sid), job.c.members, [job.c.code, PLAN])
    assert X[0, 0] == new
    held_by_nobody_at_slot_2 = next(j for j in range(6) if j not in PLAN.order[2] and j not in job.c.code.order[2])
    with pytest.raises(UnknownSlotError):
        data.rows_for(wire.PartitionAsk(2, held_by_nobody_at_slot_2, sid), job.c.members, [job.c.code, PLAN])


def test_speed_estimates_belong_to_the_worker_and_name_its_host() -> None:
    tracker = SpeedTracker(2)
    for _ in range(3):
        tracker.observe({0: 1.0, 1: 2.0}, {0: "wa", 1: "wb"}, {0: "node-a", 1: "node-b"})
    assert [(r["worker_id"], r["host"], r["chronic_s"]) for r in tracker.snapshot()] == [
        ("wa", "node-a", 1.0), ("wb", "node-b", 2.0)]
    # another worker takes slot 1 (on another machine): its history starts anew
    tracker.observe({0: 1.0, 1: 5.0}, {0: "wa", 1: "wc"}, {1: "node-c"})
    row = tracker.snapshot()[1]
    assert (row["worker_id"], row["host"], row["samples"], row["chronic_s"]) == ("wc", "node-c", 1, 5.0)


def test_a_worker_taken_in_is_sized_like_the_typical_measured_worker_not_as_a_silent_one() -> None:
    # under --adapt all a newcomer has no measurement yet: its share follows the measured workers' median speed
    # (it got 1 partition, the share of a slot that never answers, until the next check corrected it)
    from flexgc.master.adapt import Adapter, AdaptPolicy

    async def scenario() -> tuple[int, ...]:
        job = Job(code="nested:levels=0,1,split=4,grow=1")   # N = 3 slots: 2 with work, k = 8
        for slot in (0, 1):
            job.connect(slot)
        adapter = Adapter(AdaptPolicy("all"), job.c)
        for _ in range(6):
            adapter.tracker.observe({0: 1.0, 1: 1.1}, {0: "w0", 1: "w1"})
        job.connect(2, "newcomer")                           # joins the empty slot
        changed = adapter._membership()
        assert changed is not None and "for the first time (growth): taken in" in changed[1]
        adapter._announce_membership(6, *changed)
        assert job.c.pending is not None
        return tuple(int(x) for x in job.c.pending.code.prefix[0])

    blocks = run(scenario)
    assert sum(blocks) == 8 and min(blocks) >= 2, blocks
