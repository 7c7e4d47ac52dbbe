"""The report page: one self-contained HTML file (plotly.js, the page's own script and the data inlined; no
network), also served by `flexgc view`, which sets `live` and lets the script poll for new iterations."""

from __future__ import annotations

import html
import json
import time
from collections.abc import Sequence
from importlib import resources
from typing import Any

from flexgc.plots import PALETTE, plotly_figure, plotly_js, plotly_template
from flexgc.report.charts import TIMELINE_COLORS, TIMELINE_TRACES, summary_charts
from flexgc.report.data import (
    RunData,
    comparison_target,
    generator_identity,
    model_rows,
    run_labels,
    select_iterations,
)
from flexgc.targets import rank_key

DATA_ELEMENT_ID = "flexgc-data"
LIVE_TAIL = 50  # timelines a live page gets up front


def run_meta(run: RunData, label: str) -> dict[str, Any]:
    """What the page knows of a run besides its timelines."""
    return {"label": label, "path": str(run.path), "n": run.n, "identity": run.identity(), "stats": run.stats(),
            "levels": list(run.code.levels) if run.code is not None else None,
            "order": [list(o) for o in run.code.order] if run.code is not None else None,
            # an adaptive run's other plans (an entry's "plan" picks one): their partitions and levels
            "plans": {str(k): {"order": [list(o) for o in c.order], "levels": list(c.levels)}
                      for k, c in run.plan_codes().items() if k} if run.plans else {},
            "model_note": run.model_note, "error": run.error, "generation": run.generation, **run.series()}


def charts_payload(runs: Sequence[RunData], labels: Sequence[str], target: float | None = None) -> list[dict[str, Any]]:
    return [{"key": c.key, "note": c.note, **plotly_figure(c)} for c in summary_charts(runs, labels, target)]


def targets_payload(runs: Sequence[RunData], labels: Sequence[str], target: float | None,
                    rule: str) -> dict[str, Any]:
    """The time-to-target table: every run, ranked (exact runs first, then by time to target)."""
    rows = []
    for run, label in zip(runs, labels):
        stats = run.stats()
        row: dict[str, Any] = {"label": label, "approximate": run.approximate, "exact": stats["exact"],
                               "approximate_iterations": stats["approximate"], "failed": stats["failed"],
                               "mean_ms": stats["mean_ms"]}
        if target is not None:
            row.update(run.time_to_target(target).as_dict())
        rows.append(row)
    rows.sort(key=lambda r: rank_key(r["approximate"], r.get("time_to_target_s"), r["mean_ms"]))
    return {"target": target, "rule": rule, "rows": rows}


def page_data(runs: Sequence[RunData], timeline_max: int | None = None, live: bool = False,
              version: int = 0, target_loss: float | None = None) -> dict[str, Any]:
    """Everything the page draws. A static page keeps the timelines of a bounded set of iterations; a live
    one the newest `LIVE_TAIL` (the viewer serves any other on request). `target_loss`: the time-to-target
    table's (default: flexgc.targets' rule over these runs)."""
    labels = run_labels(runs)
    target, rule = comparison_target(runs, target_loss)
    note = ""
    if not live:
        keep, note = select_iterations(runs, *([] if timeline_max is None else
                                               [timeline_max * max(1, sum(r.n for r in runs))]))
        wanted = set(keep)
    metas = []
    for run, label in zip(runs, labels):
        meta = run_meta(run, label)
        indices = (range(max(0, len(run.records) - LIVE_TAIL), len(run.records)) if live else
                   [j for j, r in enumerate(run.records) if r["iteration"] in wanted])
        meta["timeline"] = {str(run.records[j]["iteration"]): run.timeline_entry(j) for j in indices}
        if not live and len(runs) == 1:  # one run alone answers "how much did its code save here"
            meta["model_rows"] = model_rows(run)
        metas.append(meta)
    return {"live": live, "version": version, "palette": PALETTE, "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "generator": generator_identity(), "timeline_note": note, "timeline_traces": TIMELINE_TRACES,
            "timeline_colors": TIMELINE_COLORS, "template": plotly_template(), "runs": metas,
            "targets": targets_payload(runs, labels, target, rule), "charts": charts_payload(runs, labels, target)}


def _asset(name: str) -> str:
    return resources.files("flexgc.report").joinpath(name).read_text(encoding="utf-8")


def render(data: dict[str, Any], title: str = "flexgc report") -> str:
    """The whole page as one string. JSON inside <script> cannot contain '</': it is escaped."""
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    return "".join([
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<link rel='icon' href='data:,'>",  # no favicon request (a 404 is a console error)
        f"<title>{html.escape(title)}</title><style>", _asset("page.css"), "</style>",
        "<script>", plotly_js(), "</script></head><body>",
        _asset("page.html"),
        f"<script type='application/json' id='{DATA_ELEMENT_ID}'>", payload, "</script>",
        "<script>", _asset("page.js"), "</script></body></html>\n",
    ])
