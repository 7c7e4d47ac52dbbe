"""flexgc.plots: one chart description, two backends."""

from __future__ import annotations

import sys

import plotly.graph_objects as go
import pytest

from flexgc.common.errors import ConfigError
from flexgc.plots import Chart, Series, plotly_figure, plotly_js, plotly_template, save, save_static


def _chart() -> Chart:
    lanes = ["slot 0", "slot 1"]
    return Chart("t", "every kind", "ms", "", [
        Series("line", [0, 1, 2], [1.0, None, 3.0], markers=True, text=["a", "b", "c"]),
        Series("step", [0, 1], [0.5, 1.0], kind="step", group=1, dash="dash"),
        Series("bars", [3.0, 4.0], lanes, kind="hbar", base=[0.0, 1.0], color="#123456"),
        Series("marks", [2.0], ["slot 1"], kind="markers", symbol="circle-open"),
        Series("decode", [5.0], [], kind="vline"),
    ], categories=lanes, xrange=(0.0, 6.0))


def test_plotly_figure_is_valid_and_keeps_every_series() -> None:
    fig = plotly_figure(_chart())
    go.Figure(fig)  # plotly's own validation: raises on a trace or layout key plotly.js does not know
    assert [t["name"] for t in fig["data"]] == ["line", "step", "bars", "marks", "decode"]
    bars = fig["data"][2]
    assert (bars["type"], bars["orientation"], bars["base"], bars["x"]) == ("bar", "h", [0.0, 1.0], [3.0, 4.0])
    assert fig["data"][0]["y"] == [1.0, None, 3.0] and fig["data"][0]["hovertext"] == ["a", "b", "c"]
    assert fig["data"][1]["line"]["shape"] == "hv"
    assert fig["layout"]["yaxis"]["categoryarray"] == ["slot 0", "slot 1"]
    assert fig["layout"]["xaxis"]["range"] == [0.0, 6.0]


def test_series_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="len"):
        Series("x", [1, 2], [1])
    with pytest.raises(ValueError, match="base"):
        Series("x", [1.0], ["a"], kind="hbar")


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".pdf", b"%PDF"), (".svg", b"<?xml")])
def test_static_backend_writes_each_format(tmp_path, suffix: str, magic: bytes) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / f"chart{suffix}"
    save(_chart(), path)
    assert path.read_bytes().startswith(magic)


def test_html_backend_is_self_contained(tmp_path) -> None:
    path = tmp_path / "chart.html"
    save(_chart(), path)
    text = path.read_text()
    assert "Plotly.newPlot" in text and "<script src" not in text


def test_unknown_suffix_names_the_allowed_ones(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"\.png, \.pdf, \.svg, \.html"):
        save_static(_chart(), tmp_path / "chart.jpg")


def test_missing_plotly_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("plotly.io", "plotly.offline"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails
    plotly_template.cache_clear()
    plotly_js.cache_clear()
    with pytest.raises(ConfigError, match=r"flexgc\[report\]"):
        plotly_js()
    with pytest.raises(ConfigError, match=r"flexgc\[report\]"):
        plotly_template()
    monkeypatch.undo()
    plotly_template.cache_clear()
