"""`flexgc report RUN_DIR ...` and `flexgc view RUN_DIR ...` (registered by flexgc.cli)."""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Any

from flexgc.common.errors import ConfigError

_log = logging.getLogger(__name__)

FORMATS = ("html", "png", "pdf", "svg")


def register(sub: Any) -> None:
    report = sub.add_parser(
        "report", help="an interactive HTML report of one or more run directories (or static figures)",
        description="One self-contained HTML file (plotly.js inlined: opens offline) with the iteration "
        "timeline of every worker, latency against the model's ideal for the same delays, its CDF, loss, level "
        "use, load per worker, bytes, cancel latency and stragglers, the full-batch loss against wall-clock time "
        "and the time to a target loss. Several run directories share the axes (e.g. the runs of `flexgc bench`, "
        "in its --out's runs/); one alone also gets what CRC(s_max) and uncoded would have needed on its delays. "
        "--format png|pdf|svg writes the same charts as static figures (matplotlib) for papers.")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a master's --out folder (run.jsonl)")
    report.add_argument("--out", help="the HTML file (default: RUN_DIR/report.html for one run, report.html "
                        "for several), or the folder for --format png|pdf|svg (default: RUN_DIR/figures or figures)")
    report.add_argument("--format", choices=FORMATS, default="html", help="html (interactive, default) or a "
                        "static figure format")
    report.add_argument("--timeline-max", type=int, default=None, metavar="N",
                        help="keep the timelines of at most about N iterations per run (default: as many as "
                        "keep the file small, ~25,600 slot-iterations in all)")
    report.add_argument("--iteration", default="slowest", metavar="N|slowest",
                        help="the iteration whose timeline a static format draws (default: the slowest)")
    report.add_argument("--target-loss", type=float, default=None, metavar="X",
                        help="the loss of the time-to-target table and the loss-over-time chart (default: 90%% of "
                        "the way from the initial loss to the lowest full-batch loss of the runs shown, of those "
                        "without approximate iterations when there are any; docs/report.md)")
    report.set_defaults(handler=run_report)

    view = sub.add_parser(
        "view", help="serve the report of running jobs on localhost, updated as run.jsonl grows",
        description="Serves the report page and follows each run.jsonl as the master appends to it: the page "
        "shows a new iteration within about a second. Reads the files only; the master is not involved.")
    view.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a master's --out folder (may not exist yet)")
    view.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1; 0.0.0.0 in a container)")
    view.add_argument("--port", type=int, default=8050, help="port (8050; 0 picks a free one)")
    view.set_defaults(handler=run_view)


def _expand(paths: list[str]) -> list[str]:
    """The run directories: a folder that is no run but holds runs (a `flexgc bench --out`, or its runs/)
    stands for every run in it, as the bench's own report shows them."""
    from flexgc.report import run_dirs_below
    from flexgc.report.data import JOB, RUN_LOG, SUMMARY

    out: list[str] = []
    for text in paths:
        path = Path(text)
        if path.is_dir() and not any((path / name).exists() for name in (RUN_LOG, SUMMARY, JOB)):
            runs = run_dirs_below(path / "runs" if (path / "runs").is_dir() else path)
            if runs:
                _log.info("%s holds %d runs: reporting them all", text, len(runs))
                out += [str(d) for d in runs]
                continue
        out.append(text)
    return out


def _warn_if_other_jobs(run_dirs: list[str]) -> None:
    """Several runs of different jobs (model or data) share one loss axis and one target: say so once."""
    import json

    from flexgc.report.data import JOB

    seen: dict[tuple[str, ...], str] = {}
    for text in run_dirs:
        try:
            job = json.loads((Path(text) / JOB).read_text())
        except (OSError, ValueError):
            continue
        key = tuple(str(job.get(k)) for k in ("model", "data", "samples", "features", "classes", "data_seed"))
        seen.setdefault(key, text)
    if len(seen) > 1:
        _log.warning("these runs train %d different jobs (model or data differ, e.g. %s): their losses and times to "
                     "target are not comparable; report each job's runs on their own", len(seen),
                     " and ".join(list(seen.values())[:2]))


def _default_out(run_dirs: list[str], name: str) -> Path:
    return Path(run_dirs[0]) / name if len(run_dirs) == 1 else Path(name)


def run_report(args: argparse.Namespace) -> int:
    if args.timeline_max is not None and args.timeline_max < 1:
        raise ConfigError(f"timeline-max={args.timeline_max}; need an integer >= 1")
    given = list(args.run_dirs)
    args.run_dirs = _expand(given)
    if len(given) == 1 and args.run_dirs != given and not args.out:  # a bench's --out: its report beside it
        args.out = str(Path(given[0]) / ("report.html" if args.format == "html" else "figures"))
    _warn_if_other_jobs(args.run_dirs)
    if args.format == "html":
        from flexgc.report import write_report

        path = write_report(args.run_dirs, args.out or _default_out(args.run_dirs, "report.html"),
                            timeline_max=args.timeline_max, target_loss=args.target_loss)
        print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB)")
        return 0
    return _write_figures(args)


def _write_figures(args: argparse.Namespace) -> int:
    from flexgc.plots import save_static
    from flexgc.report.charts import summary_charts, timeline_chart
    from flexgc.report.data import RunData, comparison_target, entry_extent_ms, run_labels

    runs = [RunData.open(p) for p in args.run_dirs]
    labels = run_labels(runs)
    out = Path(args.out) if args.out else _default_out(args.run_dirs, "figures")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    target, _ = comparison_target(runs, args.target_loss)
    for chart in summary_charts(runs, labels, target):
        written.append(out / f"{chart.key}.{args.format}")
        save_static(chart, written[-1])
    first = runs[0]
    if first.records:
        if args.iteration == "slowest":
            target = max(first.records, key=lambda r: r["latency_ms"] or 0.0)["iteration"]
        else:
            try:
                target = int(args.iteration)
            except ValueError:
                raise ConfigError(f"iteration={args.iteration!r}; allowed: an iteration number or 'slowest'") \
                    from None
        found = []
        for run, label in zip(runs, labels):
            index = next((j for j, r in enumerate(run.records) if r["iteration"] == target), None)
            if index is not None:
                found.append((run, label, index))
        if not found:
            raise ConfigError(f"iteration={target}: not in the run log (iterations "
                              f"{first.records[0]['iteration']}..{first.records[-1]['iteration']})")
        xmax = max(entry_extent_ms(run.timeline_entry(j)) for run, _, j in found) * 1.04
        for run, label, j in found:
            slug = re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")[:60] if len(runs) > 1 else "run"
            written.append(out / f"timeline-{slug}-{target}.{args.format}")
            save_static(timeline_chart(run, j, label, xmax), written[-1])
    print(f"figures: {len(written)} {args.format} files in {out}")
    return 0


def run_view(args: argparse.Namespace) -> int:
    import signal
    import sys

    from flexgc.plots import plotly_js
    from flexgc.report.view import Viewer, make_server

    plotly_js()  # without the report extra: fail now, naming it, not on the first page request
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a container's stop: close the socket, exit 0
    viewer = Viewer(args.run_dirs)
    try:
        server = make_server(viewer, args.host, args.port)
    except OSError as exc:
        from flexgc.common.transport import bind_failure

        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {bind_failure(f'{args.host}:{args.port}')}"
                          if exc.errno is not None else f"cannot listen on {args.host}:{args.port}: {exc}") from None
    host, port = str(server.server_address[0]), int(server.server_address[1])
    print(f"flexgc view: http://{host}:{port}/ following {', '.join(args.run_dirs)} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
