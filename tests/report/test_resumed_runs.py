"""A resumed run's log (an append-only file with a resume marker) reads the same in the report as through
the master's own reader: the records a resumed master ran again supersede the earlier ones."""

from __future__ import annotations

import json
from pathlib import Path

from flexgc.master.accounting import SCHEMA, read_run_log
from flexgc.report.data import RunData


def _record(iteration: int, latency_ms: float) -> dict[str, object]:
    return {"schema": SCHEMA, "iteration": iteration, "outcome": "EXACT", "latency_ms": latency_ms, "workers": []}


def test_the_report_applies_resume_markers_as_the_master_does(tmp_path: Path) -> None:
    # Prepare: iterations 0..3, a crash after the checkpoint at 2, then 2..4 again
    lines = [_record(i, 10.0 + i) for i in range(4)]
    lines.append({"schema": SCHEMA, "event": "resume", "from_iteration": 2, "time_unix": 0.0})
    lines += [_record(i, 20.0 + i) for i in range(2, 5)]
    log = tmp_path / "run.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in lines[:4]))
    run = RunData.open(tmp_path)
    first = [(r["iteration"], r["latency_ms"]) for r in run.records]

    # Execute: the master appends the marker and the iterations it runs again; the live view refreshes
    with log.open("a") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in lines[4:]))
    changed = run.refresh()

    # Assert
    assert first == [(0, 10.0), (1, 11.0), (2, 12.0), (3, 13.0)]
    assert changed
    expected = [(0, 10.0), (1, 11.0), (2, 22.0), (3, 23.0), (4, 24.0)]
    assert [(r["iteration"], r["latency_ms"]) for r in run.records] == expected
    assert [(r["iteration"], r["latency_ms"]) for r in read_run_log(log)] == expected
    assert len(run.ideal_ms) == len(run.records)
