"""The master's domain, in process: the iteration lifecycle, the receive buffer and stale/duplicate handling.

Every test drives a real `Coordinator` on a fresh event loop, the way the servicer does (one domain call
per wire message), and checks decoded gradients against the exact sum of known partial gradients.
The code is nested:levels=0,1 on n = 3 slots (k = 3): slot i computes partitions (i, i+1 mod 3); level 0
needs all three slots, level 1 any two.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexgc.common import wire
from flexgc.common.codes import parse_code
from flexgc.common.errors import (
    DuplicateResultError,
    InvalidTransitionError,
    StaleIterationError,
    UnknownSlotError,
    WireError,
)
from flexgc.master.coordinator import Iteration, IterationPhase, phase_transition_allowed
from flexgc.master.membership import SlotState
from flexgc.v1 import coordinator_pb2 as pb
from tests.helpers import edited_chunk
from tests.master.jobs import (
    PHASE_MOVES,
    D,
    Job,
    N,
    assert_exact,
    decoding_of,
    drain,
    gradient_of,
    run,
)

# -- lifecycles: every (from, to) pair ----------------------------------------------------------


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(IterationPhase, IterationPhase)),
                         ids=lambda s: s.name)
def test_phase_transition(src: IterationPhase, dst: IterationPhase) -> None:
    async def scenario() -> None:
        it = Iteration(9, parse_code("crc:s=1", 3), [], 0.0)
        it.phase = src
        allowed = (src.name, dst.name) in PHASE_MOVES

        assert phase_transition_allowed(src, dst) is allowed
        if allowed:
            it.advance(dst)
            assert it.phase is dst
        else:
            with pytest.raises(InvalidTransitionError, match=f"iteration=9 {src.name}->{dst.name}"):
                it.advance(dst)
            assert it.phase is src

    run(scenario)


def test_terminal_phases_are_exactly_the_outcomes() -> None:
    assert {p for p in IterationPhase if p.terminal} == {IterationPhase.EXACT, IterationPhase.APPROXIMATE,
                                                         IterationPhase.FAILED}
    assert not any(phase_transition_allowed(p, q) for p in IterationPhase if p.terminal for q in IterationPhase)


def test_iteration_and_slot_lifecycle_through_one_exact_iteration() -> None:
    async def scenario() -> None:
        job = Job()
        conns = [job.connect(slot, ready_after=None) for slot in range(N)]
        assert {c.state for c in conns} == {SlotState.JOINED}
        for conn in conns:
            job.c.on_ready(conn, -1)
        assert {c.state for c in conns} == {SlotState.IDLE}

        it = job.start(0)
        assert it.phase is IterationPhase.COLLECTING
        assert {c.state for c in conns} == {SlotState.WORKING}
        assert it.sent == {0, 1, 2}
        job.deliver(conns[0], 0, 1)
        job.deliver(conns[1], 0, 1)

        assert_exact(it, job.expected(0))
        assert {c.state for c in conns} == {SlotState.CANCELLING}
        for conn in conns:
            kinds = [m.WhichOneof("kind") for m in drain(conn)]  # small params travel inline
            assert kinds[0] == "task" and kinds[-1] == "cancel" and set(kinds[1:-1]) <= {"params"}
        job.finish_and_ack(it, conns)
        assert {c.state for c in conns} == {SlotState.IDLE}
        assert all(it.timing[s].cancel_ack_ms is not None for s in range(N))

    run(scenario)


def test_task_done_makes_the_slot_ready_without_a_cancel_round_trip() -> None:
    async def scenario() -> None:
        job = Job()
        conns, it = job.begin()
        drain(conns[0])
        job.deliver(conns[0], 0, 0)
        job.deliver(conns[0], 0, 1, task_done=True)              # slot 0 sent its whole task

        assert conns[0].state is SlotState.IDLE and conns[0].ready_after == 0
        job.deliver(conns[1], 0, 1)                              # decodes: levels 1 of slots 0 and 1
        assert_exact(it, job.expected(0))

        timing = it.timing[0]
        assert (timing.cancel_sent_ms, timing.cancel_ack_ms, timing.finished) == (None, None, True)
        assert timing.task_done_ms is not None and timing.answered
        assert timing.partitions_done == job.code.max_partitions(0)
        assert drain(conns[0]) == []                             # no Cancel for a worker that is done
        assert conns[1].state is SlotState.CANCELLING
        assert [m.WhichOneof("kind") for m in drain(conns[1])][-1] == "cancel"
        nxt = job.start(1)
        assert nxt.sent == {0} and conns[0].state is SlotState.WORKING  # the next task goes out at once

    run(scenario)


def test_task_done_that_crosses_the_cancel_answers_it_and_gets_the_next_task() -> None:
    async def scenario() -> None:
        job = Job()
        conns, it = job.begin()
        job.deliver(conns[0], 0, 1)
        job.deliver(conns[1], 0, 1)                              # decoded; Cancel on its way to slot 2
        gradient = gradient_of(it.done.result()).copy()
        assert conns[2].state is SlotState.CANCELLING
        nxt = job.start(1)
        assert 2 not in nxt.sent

        times = wire.PartitionTimes(compute_ms=[0.5, 0.75], delay_ms=[10.0, 20.0])
        job.deliver(conns[2], 0, 0, times=wire.PartitionTimes([0.5], [10.0]))
        job.deliver(conns[2], 0, 1, task_done=True, times=times)  # written before the Cancel arrived

        timing = it.timing[2]
        assert timing.cancel_ack_ms == timing.task_done_ms is not None and timing.finished
        # a 3-chunk level: the times come from the flagged last chunk (the first was dropped as stale)
        assert (timing.compute_ms, timing.delay_ms, timing.partitions_done) == ([0.5, 0.75], [10.0, 20.0], 2)
        assert job.discarded("stale") == 6                       # the data itself is stale
        assert 2 in nxt.sent and conns[2].state is SlotState.WORKING
        np.testing.assert_array_equal(it.done.result().gradient, gradient)

    run(scenario)


def test_task_done_of_a_reconnected_worker_recomputing_delivered_levels_still_frees_it() -> None:
    async def scenario() -> None:
        job = Job()
        conns, it = job.begin()
        job.deliver(conns[0], 0, 0)
        job.deliver(conns[0], 0, 1, task_done=True)
        again = job.connect(0)                                   # reconnects: the task is sent once more
        assert again.state is SlotState.WORKING

        job.deliver(again, 0, 0)
        job.deliver(again, 0, 1, task_done=True)                 # every chunk a duplicate, the flag is not

        assert it.duplicates == 6 and again.state is SlotState.IDLE and again.ready_after == 0

    run(scenario)


@pytest.mark.parametrize(("level", "last"), [(0, True), (1, False)])
def test_task_done_on_the_wrong_chunk_is_refused(level: int, last: bool) -> None:
    async def scenario() -> None:
        job = Job()
        conns, _ = job.begin()
        chunks = job.chunks(0, level, 0)
        bad = chunks[-1] if last else chunks[0]
        bad.task_done = True
        for chunk in chunks[:-1] if last else []:
            job.c.on_result(conns[0], chunk)

        with pytest.raises(WireError, match="task_done on a chunk that is not the last of the last level"):
            job.c.on_result(conns[0], bad)

        assert conns[0].state is SlotState.WORKING

    run(scenario)


def test_task_done_under_notify_signaling_is_refused() -> None:
    async def scenario() -> None:
        job = Job(code="nested:levels=0,1,signaling=notify")
        conns, _ = job.begin()

        with pytest.raises(WireError, match=r"slot=0: task_done under signaling=notify \(push only\)"):
            job.deliver(conns[0], 0, 1, task_done=True)

    run(scenario)


def test_task_done_for_another_iteration_than_the_connection_s_task_is_refused() -> None:
    async def scenario() -> None:
        job = Job()
        conns, it = job.begin()
        job.deliver(conns[0], 0, 1)
        job.deliver(conns[1], 0, 1)
        job.finish_and_ack(it, conns[:2])
        job.start(1)                                             # slots 0 and 1 work on iteration 1

        with pytest.raises(WireError, match="task_done for iteration 0, but the task on this connection is 1"):
            job.deliver(conns[0], 0, 1, task_done=True)

        assert conns[0].state is SlotState.WORKING

    run(scenario)


def test_start_iteration_while_collecting_is_refused() -> None:
    async def scenario() -> None:
        job = Job()
        job.start(0)

        with pytest.raises(InvalidTransitionError, match="iteration 0 still collecting"):
            job.start(1)

    run(scenario)


# -- membership ---------------------------------------------------------------------------------


# -- results: stale, future, duplicate ----------------------------------------------------------


def test_chunk_of_an_older_iteration_is_discarded_counted_and_never_written() -> None:
    async def scenario() -> None:
        job = Job()
        conns, it0 = job.begin()
        job.deliver(conns[0], 0, 1)
        job.deliver(conns[1], 0, 1)                           # slot 2 straggles in iteration 0
        assert_exact(it0, job.expected(0))
        job.finish_and_ack(it0, conns[:2])
        it1 = job.start(1)
        before = job.c.buffer.array.copy()

        poison = np.full(D, 1e6)
        for chunk in job.chunks(0, 1, 2, poison) + job.chunks(0, 0, 2, poison):
            job.c.on_result(conns[2], chunk)                  # the straggler's late iteration-0 result

        np.testing.assert_array_equal(job.c.buffer.array, before)
        assert job.c.stale_results == 6 and it0.stale_results == 6
        assert job.discarded("stale") == 6
        job.ack(conns[2], pb.CancelAck(iteration=0, partitions_done=2, finished=True))
        job.c.on_ready(conns[2], 0)
        job.deliver(conns[2], 1, 1)
        job.deliver(conns[0], 1, 1)
        assert_exact(it1, job.expected(1))
        assert set(decoding_of(it1.done.result()).messages) == {job.code.message_id(1, 0), job.code.message_id(1, 2)}

    run(scenario)


def test_result_after_the_decode_of_the_same_iteration_is_stale() -> None:
    async def scenario() -> None:
        job = Job()
        conns, it = job.begin()
        job.deliver(conns[0], 0, 1)
        job.deliver(conns[1], 0, 1)
        gradient = gradient_of(it.done.result()).copy()

        job.deliver(conns[2], 0, 1)

        assert job.discarded("stale") == 3 and it.stale_results == 3
        np.testing.assert_array_equal(it.done.result().gradient, gradient)

    run(scenario)


@pytest.mark.parametrize("current", [None, 0])
def test_future_iteration_raises(current: int | None) -> None:
    async def scenario() -> None:
        job = Job()
        conn = job.connect(0)
        if current is not None:
            job.start(current)

        with pytest.raises(StaleIterationError, match="iteration=1 is in the future"):
            job.c.on_result(conn, job.chunks(1, 0, 0)[0])

        assert job.c.stale_results == 0

    run(scenario)


def test_duplicate_on_the_same_connection_raises_but_not_from_a_new_connection() -> None:
    async def scenario() -> None:
        job = Job()
        conns, it = job.begin()
        job.deliver(conns[0], 0, 0)                              # level 0 alone does not decode

        with pytest.raises(DuplicateResultError, match="slot=0 iteration=0 level=0: already received"):
            job.deliver(conns[0], 0, 0)

        again = job.connect(0)                                   # the worker reconnects and recomputes
        job.deliver(again, 0, 0)
        assert it.duplicates == 3 and job.discarded("duplicate") == 3
        job.deliver(conns[1], 0, 0)
        job.deliver(conns[2], 0, 0)
        assert_exact(it, job.expected(0))

    run(scenario)


def test_result_for_another_slot_on_a_stream() -> None:
    async def scenario() -> None:
        job = Job()
        conn = job.connect(0)
        job.start(0)

        with pytest.raises(UnknownSlotError, match="result for slot=1 on the stream of slot=0"):
            job.c.on_result(conn, job.chunks(0, 0, 1)[0])

    run(scenario)


def test_result_without_a_task_on_this_connection() -> None:
    async def scenario() -> None:
        job = Job()
        conn = job.connect(0, ready_after=None)                  # never said Ready: no task sent
        job.start(0)

        with pytest.raises(WireError, match="slot=0: result for iteration 0 without a task on this connection"):
            job.deliver(conn, 0, 0)

    run(scenario)


# -- results: malformed chunks never enter a decode ---------------------------------------------


def _bad_sequences(job: Job) -> dict[str, list[pb.ResultChunk]]:
    good = job.chunks(0, 1, 0)
    finite = job.chunks(0, 1, 0, np.arange(D, dtype=float) * 1e3)   # a plausible first chunk, then trouble

    edit = edited_chunk

    nan = np.full(2, np.nan).tobytes()
    return {
        "dtype": [edit(good[0], dtype="<f4")],
        "dtype-big-endian": [edit(good[0], dtype=">f8")],
        "total_elements": [edit(good[0], total_elements=D + 1)],
        "level": [edit(good[0], level=2)],
        "first-offset": [good[1]],
        "replayed-chunk": [finite[0], finite[0]],
        "skipped-chunk": [finite[0], finite[2]],
        "truncated": [finite[0], edit(finite[1], last=True)],
        "oversized": [finite[0], finite[1], edit(finite[2], data=finite[2].data + finite[2].data)],
        "ragged-bytes": [edit(good[0], data=good[0].data[:-3])],
        "nan-first": [edit(good[0], data=nan)],
        "nan-middle": [finite[0], edit(finite[1], data=nan)],
        "inf-last": [finite[0], finite[1], edit(finite[2], data=np.array([1.0, np.inf]).tobytes())],
        "times": [edit(good[0], times=pb.PartitionTimes(compute_ms=[1.0, 2.0, 3.0]))],
    }


@pytest.mark.parametrize("kind", [
    "dtype", "dtype-big-endian", "total_elements", "level", "first-offset", "replayed-chunk", "skipped-chunk",
    "truncated", "oversized", "ragged-bytes", "nan-first", "nan-middle", "inf-last", "times"])
def test_malformed_result_raises_wire_error_and_the_decode_stays_exact(kind: str) -> None:
    async def scenario() -> None:
        job = Job()
        conns, it = job.begin()
        *accepted, bad = _bad_sequences(job)[kind]
        for chunk in accepted:
            job.c.on_result(conns[0], chunk)

        with pytest.raises(WireError):
            job.c.on_result(conns[0], bad)

        assert not it.complete & (1 << job.code.message_id(1, 0))
        assert np.isfinite(job.c.buffer.array).all()
        job.c.members.close_stream(conns[0], "aborted: INVALID_ARGUMENT")   # what the servicer does next
        retry = job.connect(0)
        job.deliver(retry, 0, 1)
        job.deliver(conns[1], 0, 1)
        assert_exact(it, job.expected(0))

    run(scenario)


def test_partial_row_of_an_aborted_stream_is_never_used() -> None:
    async def scenario() -> None:
        job = Job()
        conns, it = job.begin()
        poison = job.chunks(0, 1, 0, np.full(D, 7e7))
        job.c.on_result(conns[0], poison[0])
        job.c.on_result(conns[0], poison[1])
        job.c.members.close_stream(conns[0], "client went away")         # end of stream is never completion

        job.deliver(conns[1], 0, 1)
        job.deliver(conns[2], 0, 1)

        assert_exact(it, job.expected(0))
        assert job.code.message_id(1, 0) not in decoding_of(it.done.result()).messages

    run(scenario)


# -- no decode mixes two iterations ---------------------------------------------------------------


def _interleave(rng: random.Random, streams: list[list[Any]]) -> list[Any]:
    """A random merge of the streams that keeps each stream's own order."""
    pending = [list(s) for s in streams if s]
    out = []
    while pending:
        s = rng.choice(pending)
        out.append(s.pop(0))
        if not s:
            pending.remove(s)
    return out


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), stale_slots=st.sets(st.integers(0, N - 1), min_size=1),
       fresh=st.sampled_from([(0, 1), (1, 2), (0, 2)]))
def test_delayed_stale_results_never_mix_into_the_next_iteration(seed: int, stale_slots: set[int],
                                                                 fresh: tuple[int, int]) -> None:
    async def scenario() -> None:
        job = Job()
        rng = random.Random(seed)
        conns, it0 = job.begin()
        job.deliver(conns[0], 0, 0)
        job.deliver(conns[1], 0, 0)
        job.deliver(conns[2], 0, 0)
        assert_exact(it0, job.expected(0))
        job.finish_and_ack(it0, conns)
        it1 = job.start(1)
        stale = [(conns[s], c) for s in stale_slots for level in (0, 1)
                 for c in job.chunks(0, level, s, job.coded(0, level, s) + 1e3)]
        current = [[(conns[s], c) for c in job.chunks(1, 1, s)] for s in fresh]

        for conn, chunk in _interleave(rng, [stale, *current]):
            job.c.on_result(conn, chunk)

        assert_exact(it1, job.expected(1))
        assert job.discarded("stale") == len(stale)
        assert it0.done.result().gradient is not it1.done.result().gradient
        np.testing.assert_allclose(gradient_of(it0.done.result()), job.expected(0), rtol=1e-12)

    run(scenario)


class GatedExecutor(concurrent.futures.ThreadPoolExecutor):
    """Holds submitted work until `release()`, so the test decides when an off-loop decode runs."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.held: list[tuple[concurrent.futures.Future[Any], Callable[[], Any]]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.held.append((future, lambda: fn(*args, **kwargs)))
        return future

    def release(self) -> None:
        for future, call in self.held:
            future.set_result(call())
        self.held.clear()


def test_off_loop_decode_is_not_mixed_with_the_next_iteration() -> None:
    async def scenario() -> None:
        job = Job(decode_inline_elements=0)                    # every decode goes to the executor
        gate = GatedExecutor()
        asyncio.get_running_loop().set_default_executor(gate)
        conns, it0 = job.begin()
        job.deliver(conns[0], 0, 1)
        job.deliver(conns[1], 0, 1)
        assert it0.phase is IterationPhase.EXACT and gate.held    # decoded, combine still pending
        job.finish_and_ack(it0, conns)

        try:
            it1 = job.start(1)
            job.deliver(conns[0], 1, 1)
            job.deliver(conns[1], 1, 1)
        except InvalidTransitionError:
            it1 = None                                         # refusing the early start is a fix too
        gate.release()
        outcome0 = await it0.done

        np.testing.assert_allclose(gradient_of(outcome0), job.expected(0), rtol=1e-12)
        if it1 is not None:
            np.testing.assert_allclose(gradient_of(await it1.done), job.expected(1), rtol=1e-12)

    run(scenario)


def test_off_loop_decode_is_exact_when_awaited_before_the_next_iteration() -> None:
    async def scenario() -> None:
        job = Job(decode_inline_elements=0)
        conns = [job.connect(slot) for slot in range(N)]
        for t in range(3):
            it = job.start(t)
            job.deliver(conns[t % N], t, 1)
            job.deliver(conns[(t + 1) % N], t, 1)

            outcome = await it.done

            np.testing.assert_allclose(gradient_of(outcome), job.expected(t), rtol=1e-12)
            job.finish_and_ack(it, conns)

    run(scenario)


# -- other worker messages ----------------------------------------------------------------------


def test_ready_while_working_on_a_newer_task_is_refused() -> None:
    async def scenario() -> None:
        job = Job()
        conn = job.connect(0)
        job.start(0)

        with pytest.raises(WireError, match=r"slot=0: Ready\(after=-1\) but iteration 0 was already sent"):
            job.c.on_ready(conn, -1)

        job.c.on_ready(conn, 0)                                # after the task it holds: fine, idle
        assert conn.state is SlotState.IDLE

    run(scenario)


def test_ready_going_backwards_never_resends_the_task() -> None:
    async def scenario() -> None:
        job = Job()
        conn = job.connect(0)
        it = job.start(0)
        drain(conn)
        job.c.on_ready(conn, 0)

        with contextlib.suppress(WireError):                    # refusing the move back is a fix too
            for _ in range(50):
                job.c.on_ready(conn, -1)
                job.c.on_ready(conn, 0)

        assert conn.outbox.qsize() <= len(it.task), f"{conn.outbox.qsize()} messages queued for one task"

    run(scenario)


def test_cancel_ack_bounds_and_unknown_iterations() -> None:
    async def scenario() -> None:
        job = Job()
        conns, it = job.begin()
        job.deliver(conns[0], 0, 1)
        job.deliver(conns[1], 0, 1)

        job.ack(conns[2], pb.CancelAck(iteration=57, partitions_done=1))
        assert job.discarded("stale") == 1
        for bad in (-1, 3):
            with pytest.raises(WireError, match=f"slot=2: partitions_done={bad} out of range"):
                job.ack(conns[2], pb.CancelAck(iteration=0, partitions_done=bad))
        with pytest.raises(WireError, match="partition times"):
            job.ack(conns[2], pb.CancelAck(iteration=0, partitions_done=1,
                                                       times=pb.PartitionTimes(compute_ms=[-1.0])))
        job.ack(conns[2], pb.CancelAck(iteration=0, partitions_done=1,
                                                   times=pb.PartitionTimes(compute_ms=[3.0], delay_ms=[1.0])))
        assert conns[2].state is SlotState.IDLE
        assert (it.timing[2].partitions_done, it.timing[2].compute_ms) == (1, [3.0])

    run(scenario)


@pytest.mark.parametrize(("level", "match"), [(0, "LevelDone under signaling=push"),
                                              (2, r"slot=0: level=2; allowed 0..1"),
                                              (-1, r"slot=0: level=-1; allowed 0..1")])
def test_level_done_is_refused_under_push_and_out_of_range(level: int, match: str) -> None:
    async def scenario() -> None:
        job = Job()
        conn = job.connect(0)
        job.start(0)

        with pytest.raises(WireError, match=match):
            job.c.on_level_done(conn, wire.LevelDone(0, level, None))

    run(scenario)


def test_deadline_fail_policy_and_late_results() -> None:
    async def scenario() -> None:
        job = Job(deadline_s=0.05, on_deadline="fail")
        conns, it = job.begin()
        job.deliver(conns[0], 0, 1)                             # one level-1 message: not decodable

        outcome = await it.done

        assert outcome.phase is IterationPhase.FAILED and outcome.gradient is None
        job.deliver(conns[1], 0, 1)
        assert job.discarded("stale") == 3

    run(scenario)


def test_deadline_approximate_policy_is_flagged() -> None:
    async def scenario() -> None:
        job = Job(deadline_s=0.05, on_deadline="approximate")
        conns, it = job.begin()
        job.deliver(conns[0], 0, 1)

        outcome = await it.done

        assert outcome.phase is IterationPhase.APPROXIMATE
        assert outcome.decoding is not None and not outcome.decoding.exact
        assert np.isfinite(gradient_of(outcome)).all()

    run(scenario)
