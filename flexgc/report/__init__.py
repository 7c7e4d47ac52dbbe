"""See a run: `flexgc report` (one self-contained interactive HTML file, or static paper figures) and
`flexgc view` (the same page, live, on localhost). Reads run directories only; the master never imports
this package. Needs the `report` extra (plotly) for HTML, the `plot` extra (matplotlib) for figures."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path

_log = logging.getLogger(__name__)


def write_report(run_dirs: Sequence[Path | str], out: Path | str, timeline_max: int | None = None,
                 target_loss: float | None = None) -> Path:
    """Write the interactive report of `run_dirs` (same axes, one color per run) to `out`; returns its path.
    `target_loss`: the time-to-target table's (default: flexgc.targets' rule over these runs)."""
    from flexgc.common.errors import ConfigError, StorageError
    from flexgc.report.data import RunData
    from flexgc.report.page import page_data, render

    path = Path(out)
    if path.is_dir():
        raise ConfigError(f"out={str(path)!r} is a directory; name the HTML file (e.g. {path / 'report.html'})")
    runs = [RunData.open(p) for p in run_dirs]
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(render(page_data(runs, timeline_max=timeline_max, target_loss=target_loss)), encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)  # never a half-written file left beside the report
        raise StorageError(path, exc) from None
    return path


def run_dirs_below(folder: Path) -> list[Path]:
    """The run directories directly below `folder`, in the order their logs were last written."""
    return sorted((p.parent for p in folder.glob("*/run.jsonl")), key=lambda d: (d / "run.jsonl").stat().st_mtime)


def write_report_if_available(run_dirs: Sequence[Path], out: Path, target_loss: float | None = None) -> Path | None:
    """`write_report` for commands whose report is a bonus (bench, demo): None, with a warning, when the
    `report` extra is not installed or there is no run to show."""
    if importlib.util.find_spec("plotly") is None:
        _log.warning("no report: plotly is not installed (pip install 'flexgc[report]')")
        return None
    if not run_dirs:
        return None
    return write_report(run_dirs, out, target_loss=target_loss)
