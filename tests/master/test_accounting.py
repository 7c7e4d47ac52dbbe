"""The run log can be read while the master appends to it, and survives a torn last line."""

from __future__ import annotations

import json
from pathlib import Path

from flexgc.master.accounting import RunLog, read_run_log


def test_read_run_log_leaves_out_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    full = json.dumps({"iteration": 0, "latency_ms": 1.5}) + "\n"
    torn = json.dumps({"iteration": 1, "latency_ms": 2.5})[:17]      # a read racing the write
    path.write_text(full + torn)

    assert read_run_log(path) == [{"iteration": 0, "latency_ms": 1.5}]
    assert read_run_log(tmp_path / "absent.jsonl") == []


def test_resume_keeps_complete_records_before_the_checkpoint_and_drops_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    lines = [json.dumps({"schema": "flexgc.run.v1", "iteration": i, "outcome": "EXACT", "latency_ms": 1.0,
                         "level": 0, "loss": 0.5, "stale_results": 0, "bytes_up": 1, "bytes_down": 1,
                         "workers": []}) + "\n" for i in range(5)]
    path.write_text("".join(lines) + lines[0][:9])                   # a crash mid-write

    log = RunLog(tmp_path, resume_from=3)
    log.close()

    assert [r["iteration"] for r in read_run_log(path)] == [0, 1, 2]
    assert path.read_text().endswith("\n")
    assert [r["iteration"] for r in log.records] == [0, 1, 2]


def test_iteration_record_carries_every_worker_timing_field() -> None:
    """The record is built field by field; a field added to WorkerTiming must not be left out of it."""
    import asyncio
    import dataclasses

    from flexgc.common.codes import parse_code
    from flexgc.master.accounting import iteration_record
    from flexgc.master.coordinator import Iteration, IterationPhase, Outcome, WorkerTiming

    code = parse_code("nested:levels=0,1", 3)

    async def build() -> dict[str, object]:
        it = Iteration(0, code, [], 0.0)
        it.sent = {0, 1}
        it.timing[0].task_done_ms, it.timing[0].partitions_done = 3.25, 2
        it.timing[1].delay_ms = [float("inf")]
        return iteration_record(code, it, Outcome(0, IterationPhase.FAILED, None, None, 5.0, 0.0), None)

    rec = asyncio.run(build())
    workers = rec["workers"]
    assert isinstance(workers, list)
    assert set(workers[0]) == {f.name for f in dataclasses.fields(WorkerTiming)} | {"load", "slot"}
    assert (workers[0]["task_done_ms"], workers[0]["load"], workers[2]["load"]) == (3.25, round(2 / 3, 6), 0.0)
    assert workers[1]["delay_ms"] == [None]                                  # unresponsive: no number
    json.dumps(rec, allow_nan=False)                                         # valid JSON, no NaN/Infinity


def test_flush_waits_until_the_iteration_is_settled(tmp_path: Path) -> None:
    import asyncio

    from flexgc.common.codes import parse_code
    from flexgc.master.coordinator import Iteration, IterationPhase, Outcome

    code = parse_code("nested:levels=0,1", 3)

    async def scenario() -> tuple[list[int], ...]:
        log = RunLog(tmp_path)
        its = [Iteration(i, code, [], 0.0) for i in range(4)]
        for it in its:
            it.sent, it.awaiting = {0, 1}, {0, 1}   # as the coordinator's _send_task leaves them
            log.add(it, Outcome(it.number, IterationPhase.EXACT, None, None, 1.0, 0.0), 0.5, None)
        waiting = [r["iteration"] for r in log.flush(code)]            # nobody answered yet
        its[0].awaiting.discard(0)                                     # slot 0 by ack, slot 1 not yet
        partly = [r["iteration"] for r in log.flush(code)]
        its[0].awaiting.discard(1)                                     # slot 1 by its task_done chunk
        its[1].awaiting.clear()
        answered = [r["iteration"] for r in log.flush(code)]
        forced = [r["iteration"] for r in log.flush(code, newest=4)]   # at most 2 behind the newest
        rest = [r["iteration"] for r in log.flush(code, force=True)]
        log.close()
        return waiting, partly, answered, forced, rest

    waiting, partly, answered, forced, rest = asyncio.run(scenario())

    assert (waiting, partly, answered, forced, rest) == ([], [], [0, 1], [2], [3])
    assert [r["iteration"] for r in read_run_log(tmp_path / "run.jsonl")] == [0, 1, 2, 3]
