"""The report and the live view in a real browser (headless Debian Chromium): what a user sees matches
the run log, stepping redraws, and the live view follows a running job."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from flexgc.harness.local import LocalCluster
from flexgc.master.accounting import read_run_log
from flexgc.report import write_report
from flexgc.report.data import RunData, layout_slot
from flexgc.report.view import Viewer, make_server
from tests.helpers import job_config, wait_for
from tests.report.browser import console_errors

pytestmark = pytest.mark.browser

# what timeline panel `r` shows, counted in the rendered SVG (not in the data handed to Plotly)
SHOWN = """
const gd = document.getElementById('tl-' + arguments[0]);
if (!gd || !gd.dataset.iteration) return null;
const traces = Array.from(gd.querySelectorAll('g.trace.bars'));
const compute = traces.find((g) => g.__data__ && g.__data__[0] && g.__data__[0].trace.name === 'compute');
return {iteration: Number(gd.dataset.iteration), renders: Number(document.body.dataset.renders),
        lanes: gd.querySelectorAll('.yaxislayer-above .ytick').length,
        compute_bars: compute ? compute.querySelectorAll('g.point path').length : 0,
        compute_base: gd.data[1].base, compute_len: gd.data[1].x};
"""


def shown(driver: Any, r: int = 0) -> dict[str, Any] | None:
    return driver.execute_script(SHOWN, r)  # type: ignore[no-any-return]


def assert_matches_log(view: dict[str, Any], records: dict[int, dict[str, Any]]) -> None:
    rec = records[view["iteration"]]
    assert view["lanes"] == len(rec["workers"])
    assert view["compute_bars"] == sum(len(w["compute_ms"]) for w in rec["workers"]) > 0


def open_page(driver: Any, url: str) -> None:
    driver.get(url)
    wait_for(lambda: driver.execute_script("return document.body.dataset.ready === '1'"), 30, "the page's first draw")


def test_report_timeline_matches_the_run_log_and_steps(chromium: Any, real_run: Path, tmp_path: Path) -> None:
    page = write_report([real_run], tmp_path / "report.html")
    records = {r["iteration"]: r for r in read_run_log(real_run / "run.jsonl")}
    open_page(chromium, page.as_uri())
    first = shown(chromium)
    assert first is not None
    slowest = max(records.values(), key=lambda r: r["latency_ms"] or 0)["iteration"]
    assert first["iteration"] == slowest  # the page opens on the slowest iteration
    assert_matches_log(first, records)

    chromium.find_element("id", "prev" if first["iteration"] == max(records) else "next").click()
    second = wait_for(lambda: (v := shown(chromium)) and v["renders"] > first["renders"] and v, 10, "a redraw")
    assert second["iteration"] != first["iteration"] and abs(second["iteration"] - first["iteration"]) == 1
    assert_matches_log(second, records)

    chromium.find_element("id", "slowest").click()
    back = wait_for(lambda: (v := shown(chromium)) and v["renders"] > second["renders"] and v, 10, "a redraw")
    assert back["iteration"] == slowest
    assert console_errors(chromium) == []


def test_page_lays_bars_out_as_the_python_side_does(chromium: Any, real_run: Path, tmp_path: Path) -> None:
    page = write_report([real_run], tmp_path / "report.html")
    open_page(chromium, page.as_uri())
    view = shown(chromium)
    assert view is not None
    run = RunData.open(real_run)
    index = [r["iteration"] for r in run.records].index(view["iteration"])
    want = [bar for slot in run.timeline_entry(index)["w"] for bar in layout_slot(slot)["compute"]]
    assert view["compute_base"] == pytest.approx([b[0] for b in want], abs=1e-9)
    assert view["compute_len"] == pytest.approx([b[1] for b in want], abs=1e-9)


def test_runs_side_by_side_step_together(chromium: Any, real_run: Path, real_crc_run: Path, tmp_path: Path) -> None:
    page = write_report([real_run, real_crc_run], tmp_path / "both.html")
    logs = [{r["iteration"]: r for r in read_run_log(d / "run.jsonl")} for d in (real_run, real_crc_run)]
    open_page(chromium, page.as_uri())
    before = [shown(chromium, r) for r in (0, 1)]
    chromium.execute_script("return window.flexgc.show(0)")
    after = wait_for(lambda: [v for r in (0, 1) if (v := shown(chromium, r)) and v["iteration"] == 0], 10,
                     "both panels at iteration 0")
    assert len(after) == 2 and before[0] is not None
    for view, log in zip(after, logs):
        assert_matches_log(view, log)
    assert console_errors(chromium) == []


@pytest.mark.slow
def test_live_view_follows_a_running_job(chromium: Any, tmp_path: Path) -> None:
    out = tmp_path / "live"
    cfg = job_config(out, workers=4, code="nested:levels=0,1,2", iterations=60, delay_seed=5,
                     delay="shifted-exp:a=1,mu=1,unit_s=0.2")  # ~130 ms an iteration: ~8 s of job
    viewer = Viewer([out])  # started before the job: the folder does not exist yet
    server = make_server(viewer, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        open_page(chromium, f"http://127.0.0.1:{server.server_port}/")  # an empty page, polling
        with LocalCluster(cfg) as cluster:
            cluster.start_master()
            cluster.start_workers()
            first = wait_for(lambda: shown(chromium), 60, "a first iteration in the live view")
            later = wait_for(lambda: (v := shown(chromium)) and v["iteration"] > first["iteration"] and v, 30,
                             "a newer iteration appended in the live view")
            assert cluster.master is not None and cluster.master.is_alive(), "the job should still be running"
            records = {r["iteration"]: r for r in read_run_log(out / "run.jsonl")}
            assert_matches_log(later, records)
            assert cluster.wait_master(120) == 0
        last = cfg.iterations - 1
        final = wait_for(lambda: (v := shown(chromium)) and v["iteration"] == last and v, 10,
                         f"iteration {last} in the live view")
        assert_matches_log(final, {r["iteration"]: r for r in read_run_log(out / "run.jsonl")})
        assert console_errors(chromium) == []
    finally:
        # leave the page before its server goes: a poll to the closed port would log a console error that the
        # next test reads (the browser is shared)
        chromium.get("about:blank")
        console_errors(chromium)
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_one_run_shows_time_to_target_and_the_model_rows(chromium: Any, real_run: Path, tmp_path: Path) -> None:
    page = write_report([real_run], tmp_path / "report.html")
    open_page(chromium, page.as_uri())
    targets = chromium.find_element("id", "targets").text
    models = chromium.find_element("id", "model-rows").text
    assert "Time to target loss" in targets and "nested:levels=0,1,2" in targets
    assert "crc:s=2 (model, same delays + compute)" in models and "uncoded (model, same delays + compute)" in models
    drawn = chromium.execute_script("const gd = document.getElementById('chart-loss_time');"
                                    "return gd && gd.data ? gd.data.length : 0")
    assert drawn >= 2  # the run's losses and the target line
    assert console_errors(chromium) == []
