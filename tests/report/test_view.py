"""flexgc view's server, without a browser: what a polling page receives as run.jsonl grows."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flexgc.report.view import Viewer, make_server


@pytest.fixture()
def growing(real_run: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """A run directory holding the first record of the real run; the test appends the rest."""
    lines = (real_run / "run.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "run.jsonl").write_text(lines[0])
    return tmp_path, lines


@pytest.fixture()
def served(growing: tuple[Path, list[str]]) -> Iterator[tuple[str, Viewer]]:
    viewer = Viewer([growing[0]], min_refresh_s=0.0)
    server = make_server(viewer, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", viewer
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = resp.read()
        return json.loads(body) if resp.headers["Content-Type"] == "application/json" else body.decode()


def test_updates_carry_only_what_changed(served: tuple[str, Viewer], growing: tuple[Path, list[str]]) -> None:
    base, _ = served
    first = get(f"{base}/api/data?v=0&have=0")
    assert first["changed"] and first["runs"][0]["iteration"] == [0] and list(first["runs"][0]["timeline"]) == ["0"]
    assert get(f"{base}/api/data?v={first['version']}&have=1") == {"changed": False, "version": first["version"]}
    with (growing[0] / "run.jsonl").open("a") as fh:
        fh.write(growing[1][1] + growing[1][2])
    second = get(f"{base}/api/data?v={first['version']}&have=1")
    assert second["changed"] and second["version"] > first["version"]
    assert second["runs"][0]["iteration"] == [0, 1, 2] and sorted(second["runs"][0]["timeline"]) == ["1", "2"]
    assert {c["key"] for c in second["charts"]} >= {"latency", "cdf"}


def test_page_and_timeline_routes(served: tuple[str, Viewer], growing: tuple[Path, list[str]]) -> None:
    base, _ = served
    page = get(f"{base}/")
    assert '"live":true' in page and "Plotly" in page
    assert get(f"{base}/api/timeline?run=0&i=0")["i"] == 0
    assert get(f"{base}/healthz") == "ok\n"
    for bad, code in (("/api/timeline?run=0&i=99", 404), ("/api/timeline?run=5&i=0", 404),
                      ("/api/timeline?run=x", 400), ("/nowhere", 404)):
        with pytest.raises(urllib.error.HTTPError) as err:
            get(base + bad)
        assert err.value.code == code, bad


def test_a_viewer_may_start_before_the_run_exists(tmp_path: Path) -> None:
    viewer = Viewer([tmp_path / "later"], min_refresh_s=0.0)
    assert viewer.update(0, [0])["runs"][0]["iteration"] == []
    (tmp_path / "later").mkdir()
    (tmp_path / "later" / "run.jsonl").write_text("")
    assert viewer.update(viewer.version, [0])["changed"] is False


def test_a_bad_line_in_a_followed_run_is_shown_and_skipped_not_a_failed_request(
        served: tuple[str, Viewer], growing: tuple[Path, list[str]]) -> None:
    # a run log with a torn or foreign line (a disk that filled, an editor): the live view keeps serving
    base, _ = served
    first = get(f"{base}/api/data?v=0&have=0")
    assert first["runs"][0]["error"] == ""
    with (growing[0] / "run.jsonl").open("a") as fh:
        fh.write(growing[1][1] + "{not json\n" + '{"schema": "someone-else/9"}\n' + growing[1][2])
    second = get(f"{base}/api/data?v={first['version']}&have=1")
    assert second["runs"][0]["iteration"] == [0, 1, 2]    # the good records on both sides of the bad lines
    assert "line 4: record schema 'someone-else/9'" in second["runs"][0]["error"]
    assert "(skipped)" in second["runs"][0]["error"]
    assert "someone-else/9" in get(f"{base}/")   # the page renders, the error in its data (shown as a row)
    assert get(f"{base}/api/timeline?run=0&i=2")["i"] == 2
