"""`flexgc demo --adapt speed`: the option reaches the master, and the demo says what the adaptation did."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from flexgc.cli import main

pytestmark = pytest.mark.slow


def test_demo_passes_adapt_to_the_master(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["demo", "--workers", "3", "--code", "nested:smax=1", "--iterations", "8", "--no-progress",
               "--delay", "shifted-exp:a=1,mu=4,unit_s=0.05", "--adapt", "speed", "--out", str(tmp_path)])

    assert rc == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["adapt"]["mode"] == "speed" and "split=" in summary["code"]
    printed = capsys.readouterr().out
    assert "adapting: speed" in printed and "adaptive placement:" in printed
    assert "crc:s=1 (model, same delays + compute)" in printed and "what CRC(s=1) needs on the same delays" in printed


def _printed_rows(printed: str) -> dict[str, float]:
    """The demo table's rows: scheme -> mean ms."""
    rows = {}
    for line in printed.splitlines():
        match = re.match(r"^(\S+ \((?:model|measured)[^)]*\))\s+([\d.]+)\s", line)
        if match:
            rows[match[1]] = float(match[2])
    return rows


def test_demo_models_take_the_measured_compute_like_the_live_run(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: no injected delay at all: whatever a model row says comes from the compute the run measured
    rc = main(["demo", "--workers", "3", "--code", "nested:smax=1", "--iterations", "3", "--no-progress",
               "--delay", "none", "--out", str(tmp_path)])

    assert rc == 0
    rows = _printed_rows(capsys.readouterr().out)
    compute = [ms for line in (tmp_path / "run.jsonl").read_text().splitlines() if '"workers"' in line
               for w in json.loads(line)["workers"] for ms in w["compute_ms"]]
    median = sorted(compute)[len(compute) // 2]
    # CRC(1) computes two partitions per worker before it can send: at least twice one partition's compute
    assert rows["crc:s=1 (model, same delays + compute)"] >= 1.5 * median > 0, rows
    # and no injected delay was recorded where none was injected (the report's grey bars)
    delays = [ms for line in (tmp_path / "run.jsonl").read_text().splitlines() if '"workers"' in line
              for w in json.loads(line)["workers"] for ms in w["delay_ms"]]
    assert delays and set(delays) == {0.0}, delays


def test_demo_of_crc_does_not_compare_crc_with_itself(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["demo", "--workers", "3", "--code", "crc:s=1", "--iterations", "3", "--no-progress",
               "--delay", "shifted-exp:a=1,mu=4,unit_s=0.01", "--out", str(tmp_path)])

    assert rc == 0
    printed = capsys.readouterr().out
    assert "what CRC(s=1) needs" not in printed
    assert [name for name in _printed_rows(printed) if name.startswith("crc:s=1")] == [
        "crc:s=1 (measured, live)", "crc:s=1 (model, same delays + compute)"]


def test_demos_of_different_models_have_their_own_run_directories(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    common = ["demo", "--workers", "2", "--code", "crc:s=1", "--iterations", "2", "--no-progress", "--delay", "none"]

    first = main(common)
    second = main([*common, "--model", "least-squares"])  # the README's next command after the quick start

    assert (first, second) == (0, 0)
    assert json.loads((tmp_path / "runs/demo/job.json").read_text())["model"] == "logistic"
    assert json.loads((tmp_path / "runs/demo-least-squares/job.json").read_text())["model"] == "least-squares"
