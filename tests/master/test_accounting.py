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
