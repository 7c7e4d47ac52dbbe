"""`flexgc demo --adapt speed`: the option reaches the master, and the demo says what the adaptation did."""

from __future__ import annotations

import json
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
    assert "crc:s=1 (model, same delays)" in printed and "what CRC(s=1) needs on the same delays" in printed
