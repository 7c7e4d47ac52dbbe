"""The report's charts as backend-neutral `flexgc.plots.Chart`s: the same builders feed the interactive page
(Plotly) and the static paper figures (matplotlib, `flexgc report --format pdf`). Each run keeps its color
(group = the run's index) in every chart; the model ideal is the same color, dashed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from flexgc.plots import Chart, Series
from flexgc.report.data import RunData, entry_extent_ms, layout_slot


def _ok(rec: dict[str, Any]) -> bool:
    return rec["outcome"] != "FAILED" and rec["latency_ms"] is not None


def latency_chart(runs: Sequence[RunData], labels: Sequence[str]) -> Chart:
    series = []
    for g, (run, label) in enumerate(zip(runs, labels)):
        its = [r["iteration"] for r in run.records]
        text = [f"iteration {r['iteration']}: {r['outcome']}, level {r['level']}, "
                f"stragglers {','.join(map(str, r['stragglers'])) or '-'}" for r in run.records]
        series.append(Series(f"{label} (measured)", its, [r["latency_ms"] if _ok(r) else None for r in run.records],
                             markers=True, group=g, text=text))
        if any(x is not None for x in run.ideal_ms):
            series.append(Series(f"{label} (model, same delays)", its, list(run.ideal_ms), dash="dash", group=g))
    series += _plan_switches(runs, labels, series)
    return Chart("latency", "Iteration latency, measured and the model's ideal for the same delays",
                 "iteration", "latency (ms)", series, note="click a point to show that iteration's timeline; "
                 "dotted verticals: adaptive plan switches (the first iteration under the new plan is to the right)")


def _plan_switches(runs: Sequence[RunData], labels: Sequence[str], drawn: Sequence[Series]) -> list[Series]:
    """A dotted vertical line in the run's color at each plan switch (a `plan` event of --adapt), half an
    iteration before the first iteration that ran the new plan, over the range the latencies span."""
    values = [y for s in drawn for y in s.y if isinstance(y, int | float) and math.isfinite(y)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    out = []
    for g, (run, label) in enumerate(zip(runs, labels)):
        xs: list[float | None] = []
        ys: list[float | None] = []
        text: list[str] = []
        for event in run.plans:
            x = float(event["iteration"]) - 0.5
            gain = event.get("predicted_gain")
            what = (f"plan {event.get('plan')} from iteration {event['iteration']}: {event.get('code')} "
                    f"({event.get('reason')}{'' if gain is None else f', predicted gain {gain:.1%}'})")
            xs += [x, x, None]
            ys += [lo, hi, None]
            text += [what, what, ""]
        if xs:
            out.append(Series(f"{label} plan switch", xs, ys, group=g, dash="dot", text=text))
    return out


def loss_time_chart(runs: Sequence[RunData], labels: Sequence[str], target: float | None) -> Chart:
    """The full-batch loss of each run's parameters against wall-clock time (flexgc.targets); an approximate
    iteration's loss, an estimate, as hollow markers; the target as a dotted line."""
    series = []
    tmax = 0.0
    for g, (run, label) in enumerate(zip(runs, labels)):
        points = run.loss_points()
        tmax = max([tmax, *(p.time_s for p in points)])
        for counted, name in ((True, label), (False, f"{label} (estimate: approximate iteration)")):
            pick = [p for p in points if p.counted == counted]
            if pick:
                series.append(Series(name, [round(p.time_s, 3) for p in pick], [p.loss for p in pick],
                                     kind="line" if counted else "markers", group=g,
                                     symbol="circle" if counted else "circle-open",
                                     markers=len(pick) <= 200,
                                     text=[f"after {p.steps} iterations: loss {p.loss:.6g} ({p.source})"
                                           for p in pick]))
    if target is not None and series:
        series.append(Series(f"target {target:.6g}", [0.0, round(tmax, 3)], [target, target], dash="dot",
                             color="#555555"))
    return Chart("loss_time", "Full-batch loss against wall-clock time since the first iteration started",
                 "wall-clock time (s)", "loss", series,
                 note="the loss of the parameters at the instant they existed (the previous iteration's decode); "
                 "hollow: an approximate iteration's estimate, which never counts towards the target")


def cdf_chart(runs: Sequence[RunData], labels: Sequence[str]) -> Chart:
    series = []
    for g, (run, label) in enumerate(zip(runs, labels)):
        lat = np.sort([r["latency_ms"] for r in run.records if _ok(r)])
        if lat.size:
            series.append(Series(f"{label} (measured)", lat.tolist(), (np.arange(1, lat.size + 1) / lat.size).tolist(),
                                 kind="step", group=g))
        ideal = np.sort([x for x in run.ideal_ms if x is not None and math.isfinite(x)])
        if ideal.size:
            series.append(Series(f"{label} (model)", ideal.tolist(),
                                 (np.arange(1, ideal.size + 1) / ideal.size).tolist(), kind="step", dash="dash",
                                 group=g))
    return Chart("cdf", "Latency CDF", "latency (ms)", "fraction of iterations", series)


def _per_iteration(key: str, title: str, ylabel: str, runs: Sequence[RunData], labels: Sequence[str],
                   value: Any, kind: str = "line") -> Chart:
    series = []
    for g, (run, label) in enumerate(zip(runs, labels)):
        its = [r["iteration"] for r in run.records]
        series.append(Series(label, its, [value(r) for r in run.records], kind=kind,  # type: ignore[arg-type]
                             group=g, markers=kind == "line" and len(its) <= 200))
    return Chart(key, title, "iteration", ylabel, series)


def level_chart(runs: Sequence[RunData], labels: Sequence[str]) -> Chart:
    series = []
    levels = sorted({r["level"] for run in runs for r in run.records if r["level"] is not None})
    for g, (run, label) in enumerate(zip(runs, labels)):
        counts = [sum(r["level"] == lv for r in run.records) for lv in levels]
        names = [_level_name(run, lv) for lv in levels]
        series.append(Series(label, [str(lv) for lv in levels], counts, kind="bar", group=g,
                             text=[f"{n}: {c} iterations" for n, c in zip(names, counts)]))
    return Chart("levels", "Level use: the highest level of the rows each decode used", "level", "iterations",
                 series)


def _level_name(run: RunData, level: int) -> str:
    if run.code is not None and level < run.code.n_levels:
        return f"level {level} (s={run.code.levels[level]})"
    return f"level {level}"


def load_chart(runs: Sequence[RunData], labels: Sequence[str]) -> Chart:
    series = []
    for g, (run, label) in enumerate(zip(runs, labels)):
        loads = [[w["load"] for r in run.records if w_ok(w := r["workers"][slot])] for slot in range(run.n)]
        series.append(Series(label, [str(s) for s in range(run.n)],
                             [float(np.mean(x)) if x else 0.0 for x in loads], kind="bar", group=g))
    return Chart("load", "Mean load per worker (fraction of the data computed, iterations it had a task)", "slot",
                 "load", series)


def w_ok(w: dict[str, Any]) -> bool:
    return w["task_sent_ms"] is not None


def bytes_chart(runs: Sequence[RunData], labels: Sequence[str]) -> Chart:
    series = []
    for g, (run, label) in enumerate(zip(runs, labels)):
        its = [r["iteration"] for r in run.records]
        series.append(Series(f"{label} up", its, [r["bytes_up"] for r in run.records], group=g))
        series.append(Series(f"{label} down", its, [r["bytes_down"] for r in run.records], group=g, dash="dot"))
    return Chart("bytes", "Payload bytes per iteration (up: workers to master; down, dotted)", "iteration", "bytes",
                 series)


def worker_charts(runs: Sequence[RunData], labels: Sequence[str]) -> list[Chart]:
    """Who straggles, per worker id and host over the whole run: its relative score (median time against the
    median worker's: chronic lag) and how often the decode did without it (straggle rate); the hover adds the
    individual score and its stalls (one-off: more than 3x its median, or no answer)."""
    score_series, rate_series = [], []
    for g, (run, label) in enumerate(zip(runs, labels)):
        scores = run.worker_scores()
        if not scores:
            continue
        names = [s.label for s in scores]
        text = [f"{s.label} (slot {s.slot}): {s.relative:.2f}x the median worker's time, {s.individual:.2f}x its own "
                f"best, decode did without it in {s.straggle_rate:.0%} of {s.samples} iterations, {s.stalls} stalls"
                for s in scores]
        score_series.append(Series(label, names, [round(s.relative, 3) for s in scores], kind="bar", group=g,
                                   text=text))
        rate_series.append(Series(label, names, [round(s.straggle_rate, 3) for s in scores], kind="bar", group=g,
                                  text=text))
    if not score_series:
        return []
    return [Chart("worker_score", "Straggler score per worker: its median time per unit of data over the run "
                  "against the median worker's (1 = typical; a chronic straggler stays above)", "worker@host",
                  "x median worker", score_series, note="slowest first; hover: the score against its own best and "
                  "its one-off stalls"),
            Chart("worker_straggles", "Straggle frequency per worker: share of its iterations whose decode did "
                  "without it", "worker@host", "share of iterations", rate_series)]


def validation_charts(runs: Sequence[RunData], labels: Sequence[str]) -> list[Chart]:
    """Validation accuracy and loss (--val-fraction, --eval-every) against the iteration whose step the
    parameters include; none when no run evaluated."""
    charts = []
    for key, title, ylabel in (("val_accuracy", "Validation accuracy (held-out rows, --val-fraction)", "accuracy"),
                               ("val_loss", "Validation loss (mean over the held-out rows)", "loss")):
        series = []
        for g, (run, label) in enumerate(zip(runs, labels)):
            points = [(e["iteration"], e[key]) for e in run.evaluations if e.get(key) is not None]
            if points:
                series.append(Series(label, [x for x, _ in points], [y for _, y in points], markers=True, group=g,
                                     text=[f"after iteration {x}: {key} {y:.6g}" for x, y in points]))
        if series:
            charts.append(Chart(key, title, "iteration", ylabel, series))
    return charts


def summary_charts(runs: Sequence[RunData], labels: Sequence[str], target: float | None = None) -> list[Chart]:
    """Every chart below the timeline, in page order (`target`: the loss the time-to-target table uses)."""
    return [
        latency_chart(runs, labels),
        cdf_chart(runs, labels),
        loss_time_chart(runs, labels, target),
        _per_iteration("loss", "Loss (full batch, at the iteration's parameters; an approximate iteration's: "
                       "an estimate)", "loss", runs, labels, lambda r: r["loss"]),
        *validation_charts(runs, labels),
        level_chart(runs, labels),
        load_chart(runs, labels),
        bytes_chart(runs, labels),
        _per_iteration("cancel", "Cancel latency (slowest ack after the cancel was sent)", "ms", runs, labels,
                       lambda r: r["cancel_latency_ms"], kind="markers"),
        _per_iteration("stragglers", "Stragglers per iteration (slots none of whose rows the decode used)",
                       "stragglers", runs, labels, lambda r: len(r["stragglers"]), kind="step"),
        *worker_charts(runs, labels),
    ]


# the timeline's traces, in the order both the page's script and `timeline_chart` draw them
TIMELINE_TRACES = ("injected delay", "compute", "not waited (cancelled)", "level message (used)",
                   "level message (not used)", "cancel sent", "cancel acked", "task done (flagged)", "decode",
                   "model ideal decode (same delays)")
TIMELINE_COLORS = ("#b8b8b8", "#1f77b4", "#f4b6b6", "#2ca02c", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e",
                   "#000000", "#17becf")


def lane_label(slot: int, who: str) -> str:
    """A timeline lane's name: the slot and the worker that held it in that iteration (the page's script names
    lanes the same way)."""
    return f"slot {slot} · {who}" if who else f"slot {slot}"


def timeline_chart(run: RunData, index: int, label: str, xmax_ms: float | None = None) -> Chart:
    """The Gantt of records[index]: the static twin of the page's interactive timeline (same traces)."""
    entry = run.timeline_entry(index)
    lanes = [lane_label(s, who) for s, who in enumerate(entry["who"])]
    xmax = xmax_ms or entry_extent_ms(entry) * 1.04 or 1.0
    bars: dict[str, tuple[list[float], list[float], list[str]]] = {k: ([], [], []) for k in
                                                                     ("delay", "compute", "planned")}
    for s, slot in enumerate(entry["w"]):
        for kind, items in layout_slot(slot).items():
            for start, length, _p in items:
                bars[kind][0].append(start)
                bars[kind][1].append(length if math.isfinite(length) else max(xmax - start, 0.0))
                bars[kind][2].append(lanes[s])
    used = {(int(entry["used"][j]), int(entry["used"][j + 1])) for j in range(0, len(entry["used"]), 3)}
    arrivals: tuple[list[float], list[str], list[str]] = ([], [], [])
    marks: dict[int, tuple[list[float], list[str]]] = {5: ([], []), 6: ([], []), 7: ([], [])}
    for s, slot in enumerate(entry["w"]):
        for level, t in enumerate(slot[4]):
            if t is not None:
                arrivals[0].append(t)
                arrivals[1].append(lanes[s])
                arrivals[2].append("circle" if (s, level) in used else "circle-open")
        for field in marks:
            if slot[field] is not None:
                marks[field][0].append(slot[field])
                marks[field][1].append(lanes[s])
    names, colors = TIMELINE_TRACES, TIMELINE_COLORS
    series = [Series(names[j], bars[kind][1], bars[kind][2], kind="hbar", base=bars[kind][0], color=colors[j],
                     opacity=0.6 if kind == "planned" else 1.0)
              for j, kind in enumerate(("delay", "compute", "planned"))]
    for j, symbol in ((3, "circle"), (4, "circle-open")):
        pick = [m for m, sym in enumerate(arrivals[2]) if sym == symbol]
        series.append(Series(names[j], [arrivals[0][m] for m in pick], [arrivals[1][m] for m in pick],
                             kind="markers", symbol=symbol, color=colors[j]))
    for j, (field, symbol) in enumerate(((5, "x"), (6, "triangle-left"), (7, "star")), start=5):
        series.append(Series(names[j], marks[field][0], marks[field][1], kind="markers", symbol=symbol,
                             color=colors[j]))
    if entry["lat"] is not None:
        series.append(Series(names[8], [entry["lat"]], [], kind="vline", color=colors[8]))
    if entry["ideal"] is not None:
        series.append(Series(names[9], [entry["ideal"]], [], kind="vline", color=colors[9], dash="dash"))
    return Chart("timeline", f"{label}: iteration {entry['i']} ({entry['outcome']}, level {entry['level']}, "
                 f"{entry['lat']} ms)", "ms since the iteration started (master clock)", "", series,
                 categories=lanes, xrange=(0.0, xmax))
