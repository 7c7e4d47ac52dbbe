"""Straggler traces: the shipped factor matrices, the trace-file format and a converter (docs/traces.md).

A trace is a matrix F of slowdown factors, ``(steps, workers)``: row t is an iteration, column w a worker,
and F[t, w] how long worker w took in step t relative to the median of the matrix. The ``trace:`` delay
model (`flexgc.common.delays`, docs/design.md §3.1) replays it. A trace file is either

* CSV: lines starting with ``#`` are comments, the first other line is the header (one name per column,
  the names are not used), every further line one row of finite numbers > 0; blank lines are skipped; or
* ``.npz``: exactly one 2-D array of finite numbers > 0.

The shipped traces (`SHIPPED`) are addressed by a short name, so a worker in a container resolves them
from its own installed package; any other value is a path. `convert_step_times` turns measured step
times into a factor file (``python -m flexgc.common.traces convert IN OUT``). This module imports only
numpy and `flexgc.common` (docs/style.md §1).
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np

from flexgc.common.errors import ConfigError

TRACE_DIR = Path(__file__).resolve().parent
# short name -> file in this folder (NOTICE.md says where each comes from)
SHIPPED: dict[str, str] = {
    "bytedance-se": "bytedance-se-compute.csv",
    "bytedance-ar": "bytedance-ar-compute.csv",
}
# the columns of a step-time file in long form (one measurement a line), in any order
LONG_COLUMNS = ("step", "worker", "seconds")


def resolve(name: str) -> Path:
    """The file a ``trace:file=NAME`` names: a shipped trace by its short name, else the path itself."""
    return TRACE_DIR / SHIPPED[name] if name in SHIPPED else Path(name).expanduser()


def load_factors(name: str, field_name: str = "") -> np.ndarray:
    """The factor matrix F of a shipped trace or a file, ``(steps, workers)`` float64, read-only.

    Parsed once per (path, modification time, size): a worker calls this for every task. Raises
    ConfigError naming the file, and the line and column of a malformed or non-positive entry; its
    message starts with ``field_name: `` when one is given.
    """
    prefix = f"{field_name}: " if field_name else ""
    path = resolve(name)
    try:
        stat = path.stat()
    except OSError as exc:
        raise ConfigError(f"{prefix}trace file {name!r}: {exc.strerror or exc}; shipped traces: "
                          f"{', '.join(SHIPPED)} (any other value is a path)") from None
    try:
        return _load_cached(str(path), stat.st_mtime_ns, stat.st_size)
    except ConfigError as exc:
        raise ConfigError(f"{prefix}{exc}") from None


@functools.lru_cache(maxsize=16)
def _load_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    del mtime_ns, size  # cache keys only: an edited file is parsed again
    if path.endswith(".npz"):
        F = _read_npz(path)
    else:
        F = read_matrix_csv(path)
    F.setflags(write=False)
    return F


def _read_npz(path: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            if len(names) != 1:
                raise ConfigError(f"trace file {path!r}: holds {len(names)} arrays ({', '.join(names) or 'none'}); "
                                  f"need exactly one 2-D array")
            F = np.asarray(archive[names[0]])
    except (OSError, ValueError) as exc:
        raise ConfigError(f"trace file {path!r}: not a readable .npz ({exc})") from None
    if F.ndim != 2 or 0 in F.shape or not np.issubdtype(F.dtype, np.number) or np.iscomplexobj(F):
        raise ConfigError(f"trace file {path!r}: array {names[0]!r} has shape {F.shape} and dtype {F.dtype}; "
                          f"need a non-empty 2-D array of real numbers (steps x workers)")
    F = F.astype(np.float64)
    bad = ~(np.isfinite(F) & (F > 0))
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise ConfigError(f"trace file {path!r}: array {names[0]!r} entry [{row}, {col}] (row, column from 0) is "
                          f"{float(F[row, col])!r}; every factor must be finite and > 0")
    return F


def read_matrix_csv(path: str, what: str = "factor") -> np.ndarray:
    """A ``(rows, columns)`` CSV matrix: ``#`` comments, one header row, then finite numbers > 0.

    `what` names an entry in errors ("factor", "step time"). Every error names the file, line and
    column (from 1).
    """
    rows: list[list[float]] = []
    width = 0
    header_line = 0
    for number, fields in _csv_lines(path):
        if not header_line:
            header_line, width = number, len(fields)
            continue
        if len(fields) != width:
            hint = (" (fields are separated by commas; this line holds a ';')"
                    if len(fields) == 1 and ";" in fields[0] else "")
            raise ConfigError(f"trace file {path!r}: line {number} has {len(fields)} "
                              f"field{'' if len(fields) == 1 else 's'}; the header (line {header_line}) has "
                              f"{width}{hint}")
        rows.append([_positive(path, number, column, cell, what) for column, cell in enumerate(fields, 1)])
    if not rows:
        found = "a header but no data rows" if header_line else "no header and no data rows"
        raise ConfigError(f"trace file {path!r}: {found}; need '#' comments, one header row, then one row "
                          f"per step")
    return np.array(rows, dtype=np.float64)


def _csv_lines(path: str) -> list[tuple[int, list[str]]]:
    """(line number from 1, fields) of every line that is not blank or a '#' comment."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"trace file {path!r}: cannot be read as UTF-8 text ({exc})") from None
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            out.append((number, [cell.strip() for cell in stripped.split(",")]))
    return out


def _positive(path: str, line: int, column: int, cell: str, what: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise ConfigError(f"trace file {path!r}: line {line}, column {column}: {cell!r} is not a number"
                          ) from None
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"trace file {path!r}: line {line}, column {column}: {what} {cell!r}; every {what} "
                          f"must be finite and > 0")
    return value


# ---------------------------------------------------------------------------------------------
# converting measured step times


def read_step_times(path: str) -> np.ndarray:
    """Measured step times, ``(steps, workers)`` seconds, from a CSV in either form:

    * long: a header naming the columns step, worker and seconds (any order, any case), then one
      measurement a line; steps and workers are sorted (numerically when they are all integers); every
      (step, worker) pair must appear exactly once;
    * matrix: any other header, then one row per step and one column per worker (like a factor file).
    """
    lines = _csv_lines(path)
    header = [name.lower() for name in lines[0][1]] if lines else []
    if sorted(header) != sorted(LONG_COLUMNS):
        return read_matrix_csv(path, "step time")
    position = [header.index(name) for name in LONG_COLUMNS]
    cells: dict[tuple[str, str], float] = {}
    seen: dict[tuple[str, str], int] = {}
    for number, fields in lines[1:]:
        if len(fields) != 3:
            raise ConfigError(f"trace file {path!r}: line {number} has {len(fields)} fields; need 3 "
                              f"({', '.join(LONG_COLUMNS)})")
        step, worker, seconds = (fields[i] for i in position)
        if (step, worker) in seen:
            raise ConfigError(f"trace file {path!r}: line {number}: step {step!r}, worker {worker!r} was already "
                              f"given on line {seen[step, worker]}; aggregate repeated measurements first")
        seen[step, worker] = number
        cells[step, worker] = _positive(path, number, position[2] + 1, seconds, "step time")
    steps = _sorted_labels([s for s, _ in cells])
    workers = _sorted_labels([w for _, w in cells])
    if not cells:
        raise ConfigError(f"trace file {path!r}: a header but no measurements")
    T = np.full((len(steps), len(workers)), math.nan)
    row = {s: i for i, s in enumerate(steps)}
    col = {w: j for j, w in enumerate(workers)}
    for (step, worker), value in cells.items():
        T[row[step], col[worker]] = value
    missing = np.argwhere(np.isnan(T))
    if len(missing):
        i, j = missing[0]
        raise ConfigError(f"trace file {path!r}: no time for step {steps[i]!r}, worker {workers[j]!r} "
                          f"({len(missing)} (step, worker) pairs missing); every pair must appear once")
    return T


def _sorted_labels(labels: list[str]) -> list[str]:
    unique = list(dict.fromkeys(labels))
    try:
        return sorted(unique, key=int)
    except ValueError:
        return sorted(unique)


def factors_from_step_times(T: np.ndarray) -> np.ndarray:
    """Step times ``(steps, workers)`` divided by their median: the factor matrix of a trace file."""
    return T / float(np.median(T))


def write_factor_csv(path: str | os.PathLike[str], F: np.ndarray, comments: list[str]) -> None:
    """Write F as a factor file: the comment lines (each prefixed with '# '), a header worker0,..., the rows."""
    lines = [f"# {c}" for c in comments]
    lines.append(",".join(f"worker{j}" for j in range(F.shape[1])))
    lines.extend(",".join(f"{v:.6g}" for v in row) for row in F)
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def convert_step_times(source: str, dest: str | os.PathLike[str], note: str = "") -> np.ndarray:
    """Read measured step times from `source` (`read_step_times`), write their factor file to `dest`, and
    return the factors. `note` (e.g. where the times come from) becomes the first comment line."""
    T = read_step_times(source)
    F = factors_from_step_times(T)
    comments = ([note] if note else []) + [
        f"per-step time of each worker from {Path(source).name}, divided by the median over the whole matrix "
        f"({float(np.median(T)):.6g} s); rows = steps, columns = workers ({F.shape[0]} x {F.shape[1]}).",
        "Replay: --delay trace:file=THIS_FILE (docs/traces.md).",
    ]
    write_factor_csv(dest, F, comments)
    return F


def describe(F: np.ndarray) -> dict[str, float]:
    """Figures of a factor matrix: shape, and per step the worker / step-median ratio's p90, p99 and max,
    and the slowest worker over the step median at the median and p90 step (docs/traces.md)."""
    ratio = F / np.median(F, axis=1, keepdims=True)
    slowest = ratio.max(axis=1)
    return {"steps": F.shape[0], "workers": F.shape[1], "p90": float(np.quantile(ratio, 0.9)),
            "p99": float(np.quantile(ratio, 0.99)), "max": float(ratio.max()),
            "slowest_median_step": float(np.median(slowest)), "slowest_p90_step": float(np.quantile(slowest, 0.9))}
