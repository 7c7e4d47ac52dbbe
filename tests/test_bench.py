"""`flexgc bench` end to end on a tiny cluster: rows, ratios and files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from flexgc.cli import main

pytestmark = pytest.mark.slow


def test_bench_writes_a_row_per_code_and_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", "--workers", "3", "--code", "nested:smax=1", "--code", "uncoded", "--dead", "0,1",
               "--p", "0", "--iterations", "4", "--delay", "shifted-exp:a=1,mu=4,unit_s=0.05",
               "--samples", "300", "--features", "5", "--no-progress", "--out", str(tmp_path)])

    assert rc == 0
    rows = list(csv.DictReader((tmp_path / "bench.csv").open()))
    assert [(r["r"], r["code"]) for r in rows] == [("0", "nested:levels=0,1"), ("0", "uncoded"),
                                                   ("1", "nested:levels=0,1"), ("1", "uncoded")]
    assert rows[3]["skipped"] == "tolerates 0 < r=1"
    for r in rows[:3]:
        ratio = float(r["measured_over_ideal"])
        assert math.isfinite(ratio) and 0.9 < ratio < 3.0, r   # the live run pays communication on top
        assert int(r["failed"]) == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    assert len(data["rows"]) == 4 and data["meta"]["workers"] == 3
    assert (tmp_path / "latency_vs_dead_p0.png").stat().st_size > 0
    assert "nested:levels=0,1" in capsys.readouterr().out

