"""Latency accounting: the JSON-lines run log (data with a schema, separate from logs) and the summary.

Run log schema (one JSON object per iteration, `schema: "flexgc.run.v1"`):
    iteration, outcome (EXACT | APPROXIMATE | FAILED), latency_ms (task first sent -> gradient decoded),
    decode_ms, level (highest level used), rows_used [[slot, level, weight], ...], residual, cond, loss,
    stragglers (slots with work and no used row), bytes_up, bytes_down, cancel_latency_ms (max ack - sent),
    stale_results, duplicates, verify_rel_err (verify mode), and `workers`: per slot task_sent_ms,
    first_byte_ms, level_done_ms[l], result_arrival_ms[l], cancel_sent_ms, cancel_ack_ms, task_done_ms
    (push: the worker's whole task arrived, flagged task_done; such a worker gets no Cancel, so its
    cancel_sent_ms is null unless a Cancel crossed the flag, and then cancel_ack_ms is the flag's
    arrival), partitions_done, finished, load,
    compute_ms[p], delay_ms[p], bytes_up, bytes_down, slot, worker_id and host (who held the slot when it
    was sent the task, and its machine: the worker's hostname, or its address; null when no task went out);
    `plan`: the id of the plan (code) the iteration ran under (0: the job's code; docs/design.md §2.10);
    `started_ms`: when the iteration started, in ms since the first iteration this master process ran
    started (a resumed master starts again at 0), on the same monotonic clock, so started_ms + latency_ms is
    the decode's wall-clock instant.
Event records carry `event` instead of an iteration: ``resume`` (a resumed master runs on from
`from_iteration`) and ``plan`` (an adaptive plan switch: iteration, plan, code, reason, predicted_gain,
current_ms, predicted_ms, speeds_s, workers); `read_run_log` applies the first and skips the others.
All other *_ms times are relative to the iteration's start on the master's monotonic clock.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from flexgc.common.codes import Code
from flexgc.common.errors import StorageError
from flexgc.master.coordinator import Iteration, Outcome

_log = logging.getLogger(__name__)

SCHEMA = "flexgc.run.v1"


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), nd)


def iteration_record(code: Code, it: Iteration, outcome: Outcome, loss: float | None,
                     verify_rel_err: float | None = None, origin: float | None = None) -> dict[str, Any]:
    """The run-log record of one finished iteration (schema flexgc.run.v1, see above); `origin`: the
    perf_counter instant started_ms counts from (None: started_ms is null)."""
    dec = outcome.decoding
    used = set(dec.messages) if dec is not None else set()
    rows_used = ([[code.message_of(m)[1], code.message_of(m)[0], float(w)] for m, w in
                  zip(dec.messages, dec.weights)] if dec is not None else [])
    used_slots = {code.message_of(m)[1] for m in used}
    workers = []
    cancel_lat = []
    for slot in range(code.n):
        t = it.timing[slot]
        done = t.partitions_done if t.partitions_done is not None else len(t.compute_ms)
        # field by field (not dataclasses.asdict, which deep-copies): this runs once per slot and iteration
        workers.append({
            "task_sent_ms": _r(t.task_sent_ms), "first_byte_ms": _r(t.first_byte_ms),
            "level_done_ms": [_r(x) for x in t.level_done_ms],
            "result_arrival_ms": [_r(x) for x in t.result_arrival_ms],
            "cancel_sent_ms": _r(t.cancel_sent_ms), "cancel_ack_ms": _r(t.cancel_ack_ms),
            "task_done_ms": _r(t.task_done_ms), "partitions_done": t.partitions_done, "finished": t.finished,
            "compute_ms": [_r(x) for x in t.compute_ms], "delay_ms": [_r(x) for x in t.delay_ms],
            "bytes_up": t.bytes_up, "bytes_down": t.bytes_down,
            "load": round(code.load(done), 6) if slot in it.sent else 0.0, "slot": slot,
            "worker_id": t.worker_id, "host": t.host,
        })
        if t.cancel_ack_ms is not None and t.cancel_sent_ms is not None:
            cancel_lat.append(t.cancel_ack_ms - t.cancel_sent_ms)
    return {
        "schema": SCHEMA,
        "iteration": it.number,
        "outcome": outcome.phase.name,
        "latency_ms": _r(outcome.latency_ms),
        "decode_ms": _r(outcome.decode_ms, 4),
        "level": dec.level if dec is not None else None,
        "rows_used": rows_used,
        "residual": float(dec.residual) if dec is not None else None,
        "cond": _r(dec.cond) if dec is not None else None,
        "loss": loss,
        # slots the code gives work to whose rows the decode did without (an empty slot is no straggler)
        "stragglers": [i for i in range(code.n) if code.order[i] and (dec is None or i not in used_slots)],
        "bytes_up": sum(w["bytes_up"] for w in workers),
        "bytes_down": sum(w["bytes_down"] for w in workers),
        "cancel_latency_ms": _r(max(cancel_lat)) if cancel_lat else None,
        "stale_results": it.stale_results,
        "duplicates": it.duplicates,
        "verify_rel_err": verify_rel_err,
        "plan": it.plan,
        "started_ms": _r((it.started - origin) * 1e3) if origin is not None else None,
        "workers": workers,
    }


def slim(rec: dict[str, Any]) -> dict[str, Any]:
    """What the summary needs of a record; a long job keeps only this in memory (the file has the rest)."""
    return {"iteration": rec["iteration"], "outcome": rec["outcome"], "latency_ms": rec["latency_ms"],
            "level": rec["level"], "loss": rec["loss"], "stale_results": rec["stale_results"],
            "bytes_up": rec["bytes_up"], "bytes_down": rec["bytes_down"],
            "loads": [w["load"] for w in rec["workers"] if w["task_sent_ms"] is not None]}


def apply_record(records: list[dict[str, Any]], rec: dict[str, Any]) -> None:
    """Add one line of run.jsonl to the effective records: an iteration record is appended; a resume marker
    (``"event": "resume"``) drops the records of its iteration and later, which the resumed master runs
    again (a crash after the last checkpoint leaves them in the file: the log is only ever appended to)."""
    if rec.get("event") == "resume":
        start = rec["from_iteration"]
        records[:] = [r for r in records if r["iteration"] < start]
    elif "event" not in rec:  # other events (an adaptive plan switch: `read_run_events`) are no iterations
        records.append(rec)


def read_run_events(path: Path | str, event: str) -> list[dict[str, Any]]:
    """The records of one event kind in a run.jsonl (e.g. ``plan``: every adaptive plan switch, in order)."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text()
    out = []
    for line in text[: text.rfind("\n") + 1].splitlines():
        if line.strip():
            rec = json.loads(line)
            if rec.get("event") == event:
                out.append(rec)
    return out


def read_run_log(path: Path | str) -> list[dict[str, Any]]:
    """The effective iteration records of a run.jsonl (resume markers applied), also while the master is
    still appending to it.

    A record is complete once its newline is written; a torn last line (a read racing the write, or a
    crash mid-write) is left out rather than failing the reader.
    """
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text()
    complete = text[: text.rfind("\n") + 1]
    records: list[dict[str, Any]] = []
    for line in complete.splitlines():
        if line.strip():
            apply_record(records, json.loads(line))
    return records


class RunLog:
    """Appends one record per iteration to OUT/run.jsonl once it is settled (or later ones are).

    The file is only ever appended to, one whole record per write: a resumed master first cuts a torn
    last line (a crash mid-write), then appends a resume marker and runs on from its checkpoint.
    """

    def __init__(self, out: Path | None, resume_from: int = 0) -> None:
        self.path = out / "run.jsonl" if out else None
        self.records: list[dict[str, Any]] = []
        self._pending: dict[int, tuple[Iteration, Outcome, float | None, float | None]] = {}
        self._origin: float | None = None  # the first iteration's start in this process (started_ms = 0)
        if self.path is None:
            return
        try:
            existed = self.path.exists() and self.path.stat().st_size > 0
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if existed:
                self.records = [slim(r) for r in read_run_log(self.path) if r["iteration"] < resume_from]
                text = self.path.read_bytes()
                os.ftruncate(self._fd, text.rfind(b"\n") + 1)  # a torn last record goes; whole ones stay
                self._append({"schema": SCHEMA, "event": "resume", "from_iteration": resume_from,
                              "time_unix": round(time.time(), 3)})
        except OSError as exc:
            raise StorageError(self.path, exc) from None

    def _append(self, rec: dict[str, Any]) -> None:
        assert self.path is not None
        data = (json.dumps(rec) + "\n").encode()
        size = os.fstat(self._fd).st_size
        try:
            view = memoryview(data)
            while view:  # one append per record; a regular file takes it whole unless the disk is full
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            os.ftruncate(self._fd, size)  # never leave half a record behind
            raise StorageError(self.path, exc) from None

    def add(self, it: Iteration, outcome: Outcome, loss: float | None, verify: float | None) -> None:
        """Queue a finished iteration; its record is written once it is settled (see flush)."""
        if self._origin is None:
            self._origin = it.started
        self._pending[it.number] = (it, outcome, loss, verify)

    def flush(self, code: Code, force: bool = False, newest: int | None = None) -> list[dict[str, Any]]:
        """Write the queued records, in order, that are settled, at least 2 behind `newest`, or all (`force`)."""
        out = []
        for number in sorted(self._pending):
            it, outcome, loss, verify = self._pending[number]
            if not (force or it.settled or (newest is not None and number <= newest - 2)):
                break  # records stay in iteration order: later ones wait for this one
            del self._pending[number]
            rec = iteration_record(it.code, it, outcome, loss, verify, self._origin)  # the plan it ran under
            self.records.append(slim(rec))
            out.append(rec)
            if self.path is not None:
                self._append(rec)
        return out

    def event(self, rec: dict[str, Any]) -> None:
        """Append an event record at once (an adaptive plan switch); iteration readers skip it."""
        if self.path is not None:
            self._append({"schema": SCHEMA, **rec, "time_unix": round(time.time(), 3)})

    def close(self) -> None:
        """Close run.jsonl."""
        if self.path is not None:
            os.close(self._fd)


def summarize(code: Code, records: list[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    """summary.json's figures from the slim records of a run (plus `extra`)."""
    lat = np.array([r["latency_ms"] for r in records if r["outcome"] != "FAILED"], dtype=float)
    outcomes = [r["outcome"] for r in records]
    loads = [x for r in records for x in r["loads"]]
    levels: dict[str, int] = {}
    for r in records:
        if r["level"] is not None:
            levels[str(r["level"])] = levels.get(str(r["level"]), 0) + 1
    return {
        "code": code.spec,
        "n": code.n,
        "iterations": len(records),
        "exact_iterations": outcomes.count("EXACT"),
        "approximate_iterations": outcomes.count("APPROXIMATE"),
        "failed_iterations": outcomes.count("FAILED"),
        "latency_ms": {
            "mean": _r(float(lat.mean())) if lat.size else None,
            "median": _r(float(np.median(lat))) if lat.size else None,
            "p90": _r(float(np.percentile(lat, 90))) if lat.size else None,
        },
        "mean_load": _r(float(np.mean(loads)), 5) if loads else None,
        "level_use": levels,
        "final_loss": next((r["loss"] for r in reversed(records) if r["loss"] is not None), None),
        "stale_results": sum(r["stale_results"] for r in records),
        "bytes_up": sum(r["bytes_up"] for r in records),
        "bytes_down": sum(r["bytes_down"] for r in records),
        **extra,
    }
