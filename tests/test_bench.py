"""`flexgc bench` end to end on a tiny cluster: rows, outcomes, time to target, ranks, the run directories it
keeps (they open in `flexgc report`), and an interrupted bench."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from flexgc.cli import main
from flexgc.master.accounting import read_run_log
from flexgc.report.data import RunData
from tests.helpers import wait_for

pytestmark = pytest.mark.slow

TINY = ["--workers", "3", "--p", "0", "--delay", "shifted-exp:a=1,mu=4,unit_s=0.05", "--samples", "300",
        "--features", "5", "--no-progress"]


def test_bench_keeps_its_runs_ranks_them_and_marks_approximate_ones(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", *TINY, "--code", "nested:smax=1", "--code", "ignore:s=1", "--code", "uncoded",
               "--dead", "0,1", "--iterations", "4", "--out", str(tmp_path)])

    assert rc == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "bench.csv").open()))
    assert [(r["r"], r["code"]) for r in rows] == [("0", "nested:levels=0,1"), ("0", "ignore:s=1"), ("0", "uncoded"),
                                                   ("1", "nested:levels=0,1"), ("1", "ignore:s=1"), ("1", "uncoded")]
    assert rows[5]["skipped"] == "tolerates 0 < r=1: never decodes" and rows[5]["rank"] == ""
    for r in rows[:5]:
        ratio = float(r["measured_over_ideal"])
        assert math.isfinite(ratio) and 0.9 < ratio < 3.0, r   # the live run pays communication on top
        assert int(r["exact"]) + int(r["approximate"]) + int(r["failed"]) == int(r["iterations"]) == 4
        assert int(r["failed"]) == 0
    # outcomes: ignore-s steps on approximate gradients every iteration, and ranks after the exact schemes
    by = {(r["r"], r["code"]): r for r in rows}
    assert int(by["0", "ignore:s=1"]["approximate"]) == 4 and int(by["0", "nested:levels=0,1"]["exact"]) == 4
    assert by["0", "ignore:s=1"]["rank"] == "3" and by["1", "ignore:s=1"]["rank"] == "2"
    assert {by["0", "nested:levels=0,1"]["rank"], by["0", "uncoded"]["rank"]} == {"1", "2"}
    # exact runs follow one trajectory: with the default target both get there (90% of the way)
    target = float(rows[0]["target_loss"])
    for key in (("0", "nested:levels=0,1"), ("0", "uncoded"), ("1", "nested:levels=0,1")):
        assert by[key]["time_to_target_s"] != "" and 0 < float(by[key]["time_to_target_s"]) <= float(by[key]["run_s"])
        assert float(by[key]["best_full_batch_loss"]) <= target
    assert "≈ ignore:s=1" in printed and "exact approx failed target s" in printed
    meta = json.loads((tmp_path / "bench.json").read_text())["meta"]
    assert meta["target_loss"] == pytest.approx(target) and meta["workers"] == 3
    assert (tmp_path / "latency_vs_dead_p0.png").stat().st_size > 0

    # every run directory stays, and opens in `flexgc report`
    dirs = [Path(r["out"]) for r in rows[:5]]
    assert {d.parent for d in dirs} == {tmp_path / "runs"}
    for d in dirs:
        assert (d / "summary.json").exists() and (d / "snapshots").is_dir()
    assert main(["report", str(dirs[0]), "--out", str(tmp_path / "one.html")]) == 0
    assert main(["report", *map(str, dirs), "--out", str(tmp_path / "all.html")]) == 0
    # the wall clock of the records, and snapshots evaluated to the exact records' own losses
    records = read_run_log(dirs[2] / "run.jsonl")
    starts = [r["started_ms"] for r in records]
    assert starts[0] == 0.0 and starts == sorted(starts)
    evaluated = RunData.open(dirs[2]).evaluated_losses()
    for r in records[1:]:
        assert evaluated[r["iteration"]] == pytest.approx(r["loss"], rel=1e-9)


def test_a_second_bench_moves_the_first_aside(tmp_path: Path) -> None:
    args = ["bench", *TINY, "--code", "uncoded", "--dead", "0", "--iterations", "2", "--no-snapshots",
            "--out", str(tmp_path)]
    (tmp_path / "runs" / "mine").mkdir(parents=True)  # not a bench's (no bench.json): left where it is
    assert main(args) == 0
    assert (tmp_path / "runs" / "mine").is_dir() and not list(tmp_path.glob("previous-*"))
    first = json.loads((tmp_path / "bench.json").read_text())

    assert main(args) == 0

    (aside,) = tmp_path.glob("previous-*")
    assert json.loads((aside / "bench.json").read_text()) == first
    assert (aside / "runs" / "r0-p0-uncoded" / "run.jsonl").exists()
    assert (tmp_path / "runs" / "r0-p0-uncoded" / "run.jsonl").exists()


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_an_interrupted_bench_keeps_and_reports_the_runs_it_finished(tmp_path: Path, how: str) -> None:
    # Ctrl-C reaches every process of the terminal's group; SIGTERM (kill PID) the bench alone
    cmd = [sys.executable, "-m", "flexgc", "bench", *TINY, "--code", "nested:smax=1", "--code", "uncoded",
           "--code", "crc:s=1", "--dead", "0", "--iterations", "60", "--log-level", "WARNING", "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, process_group=0)
    try:
        wait_for(lambda: (tmp_path / "runs" / "r0-p0-uncoded" / "job.json").exists() or proc.poll() is not None,
                 120, "the second run to start")
        if how == "SIGINT":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    assert proc.returncode == 128 + int(signal.Signals[how]), out
    # Ctrl-C reaches the children too: none dies mid-shutdown on it with a traceback; nor does a child whose start
    # the signal would have interrupted (the parent holds it back until the child has its start data)
    assert "Traceback" not in out, out
    (line,) = [x for x in out.splitlines() if x.startswith("bench interrupted")]
    assert f"({how})" in line and "of 3 runs" in line
    rows = list(csv.DictReader((tmp_path / "bench.csv").open()))
    assert 1 <= len(rows) < 3 and rows[0]["code"] == "nested:levels=0,1"
    for r in rows:  # what the table shows are whole runs, kept
        assert not json.loads((Path(r["out"]) / "summary.json").read_text())["interrupted"]
    assert json.loads((tmp_path / "bench.json").read_text())["meta"]["interrupted"] == how
    unfinished = line.rsplit(" stay in ", 1)[-1]
    assert Path(unfinished).is_dir() and Path(unfinished).parent == tmp_path / "runs"


def test_a_named_scenario_runs_its_own_cluster_and_names_the_winner(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", "--scenario", "dead-1", "--code", "uncoded", "--code", "nested:levels=0,1",
               "--iterations", "3", "--no-progress", "--out", str(tmp_path)])

    assert rc == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "bench.csv").open()))
    # the scenario's own n, delay model and dead worker; uncoded cannot decode with a dead worker
    assert [(r["scenario"], r["n"], r["code"]) for r in rows] == [("dead-1", "10", "uncoded"),
                                                                  ("dead-1", "10", "nested:levels=0,1")]
    uncoded, nested = rows
    job = json.loads(Path(nested["out"], "job.json").read_text())
    assert nested["exact"] == "3" and (job["model"], job["data"]) == ("softmax", "sklearn:digits")
    assert job["delay"].startswith("lognormal:") and "/dead:workers=" in job["delay"]
    assert uncoded["skipped"] == "tolerates 0 < r=1: never decodes"
    meta = json.loads((tmp_path / "bench.json").read_text())["meta"]
    assert meta["scenarios"]["dead-1"]["dead"] == 1 and meta["winners"]["dead-1"]["scheme"] == "nested:levels=0,1"
    assert "-- dead-1 (n=10" in printed and "dead-1: nested:levels=0,1 in" in printed
    assert (tmp_path / "time_to_target.png").stat().st_size > 0


@pytest.mark.parametrize(("args", "words"), [
    (["--scenario", "cloudy"], "scenario='cloudy'; allowed: mild, two-class"),
    (["--scenario", "mild", "--delay", "none"], "--scenario sets its own workers, delay and dead workers; drop "
                                                "--delay"),
    (["--scenario", "mild", "--workers", "4", "--dead", "1"], "drop --dead, --workers"),
])
def test_a_scenario_bench_refuses_what_it_cannot_honour(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        args: list[str], words: str) -> None:
    assert main(["bench", *args, "--out", str(tmp_path)]) == 2
    assert words in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_winners_call_a_tie_within_3_percent_and_note_an_adaptive_run_that_never_re_planned() -> None:
    from flexgc.bench import winners

    def row(code: str, seconds: float | None, rank: int, adapt: str = "off", target_at: int | None = None,
            first_switch: int | None = None, approximate: int = 0) -> dict:
        return {"scenario": "s", "code": code, "time_to_target_s": seconds, "rank": rank, "adapt": adapt,
                "approximate": approximate, "target_iterations": target_at, "first_switch": first_switch}

    rows = [row("nested+adapt", 0.989, 1, "speed", target_at=8, first_switch=10), row("multimessage", 1.001, 2),
            row("uncoded", 1.2, 3), row("ignore:s=3", 0.5, 4, approximate=20)]
    w = winners(rows)["s"]
    assert w["scheme"] == "nested+adapt" and w["tie"] == ["multimessage"]        # 1.2% apart: a tie
    assert w["before_first_replan"] == ["nested+adapt"]                          # got there at 8, re-planned at 10
    clear = winners([row("a", 1.0, 1, "speed", target_at=20, first_switch=10), row("b", 1.5, 2)])["s"]
    assert clear["tie"] == [] and clear["before_first_replan"] == [] and clear["over_runner_up"] == pytest.approx(2 / 3)
