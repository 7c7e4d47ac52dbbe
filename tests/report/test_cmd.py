"""`flexgc report` on real run directories, and `flexgc analyze --plot` through the same plotting module."""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from flexgc.cli import main
from flexgc.report import run_dirs_below, write_report_if_available
from flexgc.report.page import DATA_ELEMENT_ID


def page_payload(html: str) -> dict[str, Any]:
    """The data a report page embeds (what its script draws)."""
    match = re.search(f"<script type='application/json' id='{DATA_ELEMENT_ID}'>(.*?)</script>", html, re.S)
    assert match, "no embedded data"
    return json.loads(match.group(1).replace("<\\/", "</"))


def test_report_is_one_self_contained_file(real_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.html"
    assert main(["report", str(real_run), "--out", str(out)]) == 0
    assert f"report: {out}" in capsys.readouterr().out
    html = out.read_text()
    # no network: nothing loaded from elsewhere (plotly.js is inlined; its own strings may name URLs)
    assert not re.search(r"<script[^>]+src=", html) and not re.search(r"<link[^>]+stylesheet", html)
    data = page_payload(html)
    records = [json.loads(x) for x in (real_run / "run.jsonl").read_text().splitlines()]
    (run,) = data["runs"]
    assert run["iteration"] == [r["iteration"] for r in records]
    assert sorted(map(int, run["timeline"])) == run["iteration"]  # a short run keeps every timeline
    assert {c["key"] for c in data["charts"]} == {"latency", "cdf", "loss_time", "loss", "levels", "load", "bytes",
                                                 "cancel", "stragglers", "worker_score", "worker_straggles"}
    assert dict(run["identity"])["code"] == "nested:levels=0,1,2"


def test_default_out_is_beside_the_run(real_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for name in ("run.jsonl", "summary.json"):
        (run / name).write_bytes((real_run / name).read_bytes())
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").stat().st_size > 1_000_000  # plotly.js is in it


def test_several_runs_share_one_page(real_run: Path, real_crc_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "both.html"
    assert main(["report", str(real_run), str(real_crc_run), "--out", str(out)]) == 0
    data = page_payload(out.read_text())
    assert [r["label"] for r in data["runs"]] == ["nested:levels=0,1,2", "crc:s=2"]
    latency = next(c for c in data["charts"] if c["key"] == "latency")
    names = [t["name"] for t in latency["data"]]
    assert "crc:s=2 (measured)" in names and "nested:levels=0,1,2 (model, same delays)" in names


def test_timeline_max_bounds_the_kept_timelines(real_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "small.html"
    assert main(["report", str(real_run), "--out", str(out), "--timeline-max", "3"]) == 0
    data = page_payload(out.read_text())
    assert len(data["runs"][0]["timeline"]) <= 4 and "timeline kept for" in data["timeline_note"]


@pytest.mark.parametrize("fmt", ["pdf", "png"])
def test_static_figures_for_papers(real_run: Path, tmp_path: Path, fmt: str) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "figs"
    assert main(["report", str(real_run), "--format", fmt, "--out", str(out), "--iteration", "2"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert f"latency.{fmt}" in names and f"loss_time.{fmt}" in names and f"timeline-run-2.{fmt}" in names
    assert len(names) == 12 and f"worker_score.{fmt}" in names  # 11 charts and the timeline
    assert (out / f"cdf.{fmt}").read_bytes()[:4] == (b"%PDF" if fmt == "pdf" else b"\x89PNG")


def test_bad_input_names_the_problem(tmp_path: Path, real_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", str(real_run), "--format", "png", "--iteration", "999", "--out", str(tmp_path)]) == 2
    assert "iteration=999" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".html", ".pdf"])
def test_analyze_plot_uses_the_shared_plotting_module(tmp_path: Path, suffix: str) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / f"dead{suffix}"
    assert main(["analyze", "--code", "crc:s=1", "--code", "nested:levels=0,1", "--trials", "200", "-n", "6",
                 "--plot", str(path)]) == 0
    head = path.read_bytes()[:200]
    assert head.startswith(b"%PDF") if suffix == ".pdf" else b"<!doctype html>" in head


def test_bench_and_demo_report_every_run_below_a_folder(real_run: Path, real_crc_run: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "runs"
    for t, (name, src) in enumerate((("b-crc", real_crc_run), ("a-nested", real_run))):  # written in this order
        (folder / name).mkdir(parents=True)
        for f in ("summary.json", "run.jsonl"):
            (folder / name / f).write_bytes((src / f).read_bytes())
        os.utime(folder / name / "run.jsonl", (1_000_000 + t, 1_000_000 + t))
    dirs = run_dirs_below(folder)
    assert [d.name for d in dirs] == ["b-crc", "a-nested"]
    page = write_report_if_available(dirs, tmp_path / "bench.html")
    assert page is not None and [r["label"] for r in page_payload(page.read_text())["runs"]] == \
        ["crc:s=2", "nested:levels=0,1,2"]
    monkeypatch.setitem(sys.modules, "plotly", None)  # find_spec then reports it missing
    assert write_report_if_available(dirs, tmp_path / "none.html") is None
    assert "flexgc[report]" in caplog.text and not (tmp_path / "none.html").exists()


def test_every_chart_of_a_report_passes_plotlys_validation(real_run: Path, real_crc_run: Path) -> None:
    go = pytest.importorskip("plotly.graph_objects")
    from flexgc.plots import plotly_figure, plotly_template
    from flexgc.report.charts import summary_charts, timeline_chart
    from flexgc.report.data import RunData, run_labels

    runs = [RunData.open(real_run), RunData.open(real_crc_run)]
    charts = [*summary_charts(runs, run_labels(runs)), timeline_chart(runs[0], 0, "x")]
    for chart in charts:
        fig = plotly_figure(chart)
        fig["layout"]["template"] = plotly_template()
        go.Figure(fig)  # raises on anything plotly.js would not understand


def test_view_without_plotly_exits_naming_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from flexgc.plots import plotly_js

    plotly_js.cache_clear()
    monkeypatch.setitem(sys.modules, "plotly.offline", None)  # import fails
    assert main(["view", str(tmp_path), "--port", "0"]) == 2  # before it serves anything
    assert "flexgc[report]" in capsys.readouterr().err
    monkeypatch.undo()
    plotly_js.cache_clear()


def test_the_page_ranks_runs_by_time_to_target(real_run: Path, real_crc_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "both.html"
    assert main(["report", str(real_run), str(real_crc_run), "--out", str(out), "--target-loss", "0.69"]) == 0
    data = page_payload(out.read_text())
    targets = data["targets"]
    assert targets["target"] == 0.69 and "given" in targets["rule"]
    times = [row["time_to_target_s"] for row in targets["rows"]]
    assert len(times) == 2 and times == sorted(times)  # both exact: by time
    loss_time = next(c for c in data["charts"] if c["key"] == "loss_time")
    assert [t["name"] for t in loss_time["data"]][-1] == "target 0.69"
    assert all("model_rows" not in run for run in data["runs"])  # several runs: each other's comparison

    one = tmp_path / "one.html"
    assert main(["report", str(real_run), "--out", str(one)]) == 0
    (run,) = page_payload(one.read_text())["runs"]
    assert [r["scheme"].split(" ")[0] for r in run["model_rows"]["rows"]] == ["nested:levels=0,1,2"] * 2 + \
        ["crc:s=2", "uncoded"]


def test_the_report_names_each_slots_worker_and_scores_the_workers(real_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"

    assert main(["report", str(real_run), "--out", str(out)]) == 0

    # Assert: every lane of every timeline names the worker that held the slot then; the score chart names them
    data = page_payload(out.read_text())
    (run,) = data["runs"]
    entries = list(run["timeline"].values())
    assert entries and all(who == f"local-worker-{slot}@{socket.gethostname()}" for e in entries
                           for slot, who in enumerate(e["who"]) if e["w"][slot][0] is not None)
    chart = next(c for c in data["charts"] if c["key"] == "worker_score")
    names = {x for trace in chart["data"] for x in trace["x"]}
    assert names == {f"local-worker-{slot}@{socket.gethostname()}" for slot in range(4)}


def test_many_runs_put_the_legend_below_and_no_mode_bar_covers_a_title(real_run: Path, tmp_path: Path) -> None:
    # Prepare: seven runs (copies of one) on one page, as `flexgc bench` makes
    runs = []
    for j in range(7):
        run = tmp_path / f"run{j}"
        run.mkdir()
        for name in ("run.jsonl", "summary.json", "job.json"):
            if (real_run / name).exists():
                (run / name).write_bytes((real_run / name).read_bytes())
        runs.append(str(run))

    assert main(["report", *runs, "--out", str(tmp_path / "many.html")]) == 0
    assert main(["report", str(real_run), "--out", str(tmp_path / "one.html")]) == 0

    # Assert: below the chart in rows with seven runs, beside it with one; the mode bar upright at the edge
    many, one = (page_payload((tmp_path / f"{name}.html").read_text()) for name in ("many", "one"))
    latency = next(c for c in many["charts"] if c["key"] == "latency")
    assert latency["layout"]["legend"]["orientation"] == "h"
    assert "orientation" not in next(c for c in one["charts"] if c["key"] == "latency")["layout"]["legend"]
    assert all(c["layout"]["modebar"]["orientation"] == "v" for c in many["charts"])
    page = (tmp_path / "one.html").read_text()
    assert "iterations ` +" in page and "that keep a timeline" in page and 'modebar: { orientation: "v" }' in page


def test_a_bench_folder_stands_for_its_runs_and_other_jobs_are_warned_about(
        real_run: Path, real_crc_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    bench = tmp_path / "bench"
    for run in (real_run, real_crc_run):
        shutil.copytree(run, bench / "runs" / run.name)
    assert main(["report", str(bench)]) == 0          # was: "holds neither run.jsonl nor summary.json nor job.json"
    data = page_payload((bench / "report.html").read_text())
    assert sorted(r["label"] for r in data["runs"]) == ["crc:s=2", "nested:levels=0,1,2"]
    assert "different jobs" not in capsys.readouterr().err
    other = tmp_path / "other"
    shutil.copytree(real_run, other)
    job = json.loads((other / "job.json").read_text())
    (other / "job.json").write_text(json.dumps({**job, "model": "softmax", "data": "sklearn:digits"}))
    assert main(["report", str(real_run), str(other), "--out", str(tmp_path / "mixed.html")]) == 0
    assert "these runs train 2 different jobs" in capsys.readouterr().err
