"""One plotting module for every flexgc figure: a chart is data (`Chart` of `Series`), drawn by two backends.

- `plotly_figure(chart)`: a Plotly figure as a JSON-able dict, for the interactive report and live view
  (`flexgc report`, `flexgc view`, `flexgc analyze --plot FILE.html`);
- `draw_matplotlib(chart, ax)` / `save_static(chart, path)`: the static backend for papers (PNG, PDF, SVG;
  `flexgc analyze --plot FILE.png|pdf`, `flexgc report --format pdf`).

Both import their library lazily, so a missing extra fails only the command that needs it, naming it.
Runs (or codes) keep one color across every chart: `Series.group` picks it from `PALETTE`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from flexgc.common.errors import ConfigError

Kind = Literal["line", "step", "markers", "bar", "hbar", "vline"]
Dash = Literal["solid", "dash", "dot"]

# Plotly's default qualitative palette (also readable in print)
PALETTE = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880", "#ff97ff",
           "#fecb52")
STATIC_FORMATS = ("png", "pdf", "svg")


@dataclass(frozen=True)
class Series:
    """One trace. x/y are equal-length sequences; None in y is a gap (or a missing point).

    kind: line (with `markers` optional), step (a CDF: post-step), markers, bar (vertical, grouped across
    series), hbar (horizontal bars from `base` to `base + x` in lane y: a Gantt), vline (a vertical line at
    each x over the whole plot).
    """

    name: str
    x: Sequence[Any]
    y: Sequence[Any]
    kind: Kind = "line"
    group: int = 0                      # color index into PALETTE (a run, a code)
    color: str | None = None            # overrides the group color
    dash: Dash = "solid"
    markers: bool = False
    symbol: str = "circle"              # plotly marker symbol names; the static backend maps the common ones
    base: Sequence[float] | None = None  # hbar only
    text: Sequence[str] | None = None   # hover text per point
    opacity: float = 1.0
    legend: bool = True

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y) and self.kind != "vline":
            raise ValueError(f"series {self.name!r}: len(x)={len(self.x)} != len(y)={len(self.y)}")
        if self.kind == "hbar" and (self.base is None or len(self.base) != len(self.x)):
            raise ValueError(f"series {self.name!r}: hbar needs one base per bar")


@dataclass(frozen=True)
class Chart:
    """A titled pair of axes with its series. `categories` fixes the order of a categorical y axis (lanes)."""

    key: str
    title: str
    xlabel: str
    ylabel: str
    series: list[Series] = field(default_factory=list)
    categories: Sequence[str] | None = None
    note: str = ""
    xrange: tuple[float, float] | None = None
    integer_x: bool = False             # x ticks on integers only (counts, e.g. dead workers)

    def color(self, s: Series) -> str:
        return s.color or PALETTE[s.group % len(PALETTE)]


# ---------------------------------------------------------------------------------------------------------
# plotly (interactive)

_PLOTLY_DASH = {"solid": "solid", "dash": "dash", "dot": "dot"}
LEGEND_BESIDE_MAX = 6  # legend entries shown beside a chart; more go below it


def _clean(values: Sequence[Any]) -> list[Any]:
    """JSON has no NaN/inf: non-finite floats become None (a gap)."""
    return [None if isinstance(v, float) and not math.isfinite(v) else v for v in values]


def plotly_traces(chart: Chart) -> list[dict[str, Any]]:
    """The chart's series as plotly.js trace dicts (plain JSON: the page's JS builds the same kinds)."""
    traces: list[dict[str, Any]] = []
    for s in chart.series:
        color = chart.color(s)
        t: dict[str, Any] = {"name": s.name, "showlegend": s.legend, "legendgroup": s.name}
        if s.text is not None:
            t["hovertext"] = list(s.text)  # hover only (`text` would also print on bars)
            t["hoverinfo"] = "x+y+text+name" if s.kind != "hbar" else "text"
        if s.opacity != 1.0:
            t["opacity"] = s.opacity
        if s.kind in ("line", "step"):
            t.update(type="scatter", x=_clean(s.x), y=_clean(s.y), mode="lines+markers" if s.markers else "lines",
                     line={"color": color, "dash": _PLOTLY_DASH[s.dash], **({"shape": "hv"} if s.kind == "step"
                                                                          else {})},
                     marker={"color": color, "size": 5, "symbol": s.symbol})
        elif s.kind == "markers":
            t.update(type="scatter", x=_clean(s.x), y=_clean(s.y), mode="markers",
                     marker={"color": color, "size": 8, "symbol": s.symbol})
        elif s.kind == "bar":
            t.update(type="bar", x=_clean(s.x), y=_clean(s.y), marker={"color": color})
        elif s.kind == "hbar":
            t.update(type="bar", orientation="h", x=_clean(s.x), y=list(s.y), base=_clean(s.base or []),
                     marker={"color": color, "line": {"width": 0}})
        elif s.kind == "vline":
            xs: list[Any] = []
            ys: list[Any] = []
            lo, hi = (chart.categories[0], chart.categories[-1]) if chart.categories else (0, 1)
            for x in s.x:
                xs += [x, x, None]
                ys += [lo, hi, None]
            t.update(type="scatter", x=xs, y=ys, mode="lines", line={"color": color, "dash": _PLOTLY_DASH[s.dash],
                                                                     "width": 2})
        traces.append(t)
    return traces


def plotly_figure(chart: Chart, height: int = 320) -> dict[str, Any]:
    """{"data": [...], "layout": {...}} for Plotly.newPlot / Plotly.react: plain JSON, built without plotly's
    (slow) figure validation, so the live view can rebuild every chart each second; the tests validate
    each chart with plotly.graph_objects. The look comes from `plotly_template()`, which the page adds."""
    layout: dict[str, Any] = {
        "title": {"text": chart.title, "font": {"size": 14}},
        "xaxis": {"title": {"text": chart.xlabel}, "zeroline": False},
        "yaxis": {"title": {"text": chart.ylabel}, "zeroline": False},
        "height": height, "margin": {"l": 60, "r": 20, "t": 40, "b": 45},
        "legend": {"font": {"size": 10}}, "barmode": "group", "hovermode": "closest",
        "modebar": {"orientation": "v"},  # upright at the right edge: across the top it covers the title
    }
    entries = sum(1 for s in chart.series if s.legend)
    if entries > LEGEND_BESIDE_MAX:
        # many runs: the legend goes below the plot, in rows, instead of taking half its width beside it
        rows = math.ceil(entries / 3)
        layout["legend"].update(orientation="h", x=0, xanchor="left", y=-0.3, yanchor="top")
        layout["margin"]["b"] += 18 * rows
        layout["height"] = height + 18 * rows
    if chart.xrange is not None:
        layout["xaxis"]["range"] = list(chart.xrange)
    if chart.integer_x:
        layout["xaxis"]["dtick"] = 1
    if chart.categories is not None:
        layout["yaxis"].update(type="category", categoryorder="array", categoryarray=list(chart.categories),
                               autorange="reversed")
    return {"data": [_plain(t) for t in plotly_traces(chart)], "layout": layout}


@functools.lru_cache(maxsize=1)
def plotly_template() -> dict[str, Any]:
    """plotly's `plotly_white` template as layout JSON (~7 KB): a page sends it once for all its charts."""
    try:
        import plotly.io as pio
    except ImportError:
        raise ConfigError("report: plotly is not installed; install the `report` extra "
                          "(pip install 'flexgc[report]')") from None
    return _plain(pio.templates["plotly_white"].to_plotly_json())  # type: ignore[no-any-return]


def _plain(value: Any) -> Any:
    """plotly's JSON dicts may hold numpy arrays or tuples: make them lists for json.dumps."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@functools.lru_cache(maxsize=1)
def plotly_js() -> str:
    """plotly.js, minified, to inline into a page (no CDN: the page must open offline)."""
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise ConfigError("report: plotly is not installed; install the `report` extra "
                          "(pip install 'flexgc[report]')") from None
    return str(get_plotlyjs())


def save_html(chart: Chart, path: Path | str) -> None:
    """One chart as a self-contained interactive HTML page."""
    import json

    fig = plotly_figure(chart, height=520)
    fig["layout"]["template"] = plotly_template()
    payload = json.dumps(fig).replace("</", "<\\/")
    Path(path).write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>" + _escape(chart.title) + "</title>"
        "<script>" + plotly_js() + "</script></head><body><div id='chart'></div><script>"
        "const f=" + payload + ";Plotly.newPlot('chart',f.data,f.layout,{responsive:true});</script></body></html>")


def _escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)


# ---------------------------------------------------------------------------------------------------------
# matplotlib (static)

_MPL_DASH = {"solid": "-", "dash": "--", "dot": ":"}
_MPL_MARKER = {"circle": "o", "circle-open": "o", "x": "x", "diamond": "D", "triangle-left": "<",
               "triangle-right": ">", "star": "*", "square": "s", "line-ns": "|", "cross": "P"}


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plot: matplotlib is not installed; install the `plot` extra "
                          "(pip install 'flexgc[plot]')") from None
    return plt


def draw_matplotlib(chart: Chart, ax: Any) -> None:
    """Draw `chart` on a matplotlib Axes."""
    import numpy as np

    lanes = {c: i for i, c in enumerate(chart.categories or [])}
    bars = [s for s in chart.series if s.kind == "bar"]
    for s in chart.series:
        color = chart.color(s)
        label = s.name if s.legend else None
        ys: list[Any] = [np.nan if v is None else v for v in s.y]
        if s.kind in ("line", "step", "markers"):
            y = [lanes.get(v, v) if isinstance(v, str) else v for v in ys]
            xs = [np.nan if v is None else v for v in s.x]
            marker = _MPL_MARKER.get(s.symbol, "o")
            filled = not s.symbol.endswith("-open")
            if s.kind == "markers" and marker in ("x", "|", "+"):  # line-art markers: no face, no edge
                ax.scatter(xs, y, marker=marker, label=label, alpha=s.opacity, zorder=3, c=color)
            elif s.kind == "markers":
                ax.scatter(xs, y, marker=marker, label=label, alpha=s.opacity, zorder=3,
                           facecolors=color if filled else "none", edgecolors=color)
            elif s.kind == "step":
                ax.step(xs, y, where="post", color=color, linestyle=_MPL_DASH[s.dash], label=label)
            else:
                ax.plot(xs, y, color=color, linestyle=_MPL_DASH[s.dash], label=label, alpha=s.opacity,
                        marker=marker if s.markers else None, markersize=4)
        elif s.kind == "bar":
            i, width = bars.index(s), 0.8 / len(bars)
            cats = list(dict.fromkeys(x for b in bars for x in b.x))
            pos = {c: j for j, c in enumerate(cats)}
            ax.bar([pos[x] - 0.4 + (i + 0.5) * width for x in s.x], ys, width=width, color=color, label=label)
            ax.set_xticks(range(len(cats)), [str(c) for c in cats])
        elif s.kind == "hbar":
            ax.barh([lanes.get(v, v) for v in s.y], s.x, left=s.base, height=0.6, color=color, label=label,
                    alpha=s.opacity)
        elif s.kind == "vline":
            for j, x in enumerate(s.x):
                ax.axvline(x, color=color, linestyle=_MPL_DASH[s.dash], label=label if j == 0 else None)
    if lanes:
        ax.set_yticks(range(len(lanes)), list(lanes))
        ax.set_ylim(len(lanes) - 0.5, -0.5)
    if chart.xrange is not None:
        ax.set_xlim(*chart.xrange)
    if chart.integer_x:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(chart.xlabel)
    ax.set_ylabel(chart.ylabel)
    ax.set_title(chart.title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if any(s.legend for s in chart.series):
        ax.legend(fontsize="small")


def save_static(chart: Chart, path: Path | str, size_in: tuple[float, float] = (8, 5)) -> None:
    """One chart to PNG, PDF or SVG (by the file's suffix), for papers."""
    fmt = Path(path).suffix.lstrip(".").lower()
    if fmt not in STATIC_FORMATS:
        raise ConfigError(f"plot file {str(path)!r}: suffix .{fmt}; allowed: "
                          + ", ".join("." + f for f in (*STATIC_FORMATS, "html")))
    plt = _pyplot()
    height = size_in[1] if not chart.categories else max(size_in[1], 1.0 + 0.28 * len(chart.categories))
    fig, ax = plt.subplots(figsize=(size_in[0], height))
    try:
        draw_matplotlib(chart, ax)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def save(chart: Chart, path: Path | str) -> None:
    """By suffix: .html (interactive, Plotly) or .png/.pdf/.svg (static, matplotlib)."""
    if Path(path).suffix.lower() == ".html":
        save_html(chart, path)
    else:
        save_static(chart, path)
