"""What a report shows, read from run directories: the run log (`run.jsonl`, schema flexgc.run.v1, see
`flexgc.master.accounting`), the job's identity beside it (`job.json`, written when the job starts, and
`summary.json`, when it ends), and the model's view of the same delays.

Every injected delay is a pure function of (delay_seed, iteration, slot), so knowing the code, the delay
spec and the seed is enough to recompute each iteration's planned delays and the model's ideal decode
instant (no compute time, no communication) for exactly the delays the run saw.

`RunData` reads `run.jsonl` incrementally (`refresh()` parses only the bytes appended since the last
call), so the live view follows a growing log at the cost of the new lines.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flexgc.common.codes import Code, parse_code
from flexgc.common.delays import DelayModel, parse_delay
from flexgc.common.errors import ConfigError, FlexgcError
from flexgc.targets import (
    TARGET_FRACTION,
    LossPoint,
    SnapshotLosses,
    TimeToTarget,
    default_target,
    loss_points,
    time_to_target,
)

_log = logging.getLogger(__name__)

RUN_LOG = "run.jsonl"
SUMMARY = "summary.json"
JOB = "job.json"
SCHEMA = "flexgc.run.v1"
# the timeline of a slot-iteration costs ~100 B of JSON: keep at most this many slot-iterations per page
TIMELINE_SLOT_BUDGET = 25_600


def _round(x: float | None, nd: int = 2) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), nd)


@dataclass
class RunData:
    """One run directory, re-read with `refresh()` as the master appends to it."""

    path: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    job: dict[str, Any] = field(default_factory=dict)       # job.json
    summary: dict[str, Any] = field(default_factory=dict)   # summary.json
    code: Code | None = None
    delay: DelayModel | None = None
    seed: int | None = None
    # per record: the realized delays (n, P) in seconds (inf: never) and the model's ideal decode instant
    durations_s: list[np.ndarray | None] = field(default_factory=list)
    ideal_ms: list[float | None] = field(default_factory=list)
    model_note: str = "the job's identity (job.json or summary.json) is not there yet"
    generation: int = 0  # +1 whenever run.jsonl was rewritten rather than appended to
    plans: list[dict[str, Any]] = field(default_factory=list)  # the adaptive plan switches (`plan` events)
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # validation figures (`eval` events)
    snapshots: SnapshotLosses | None = None  # full-batch losses of the parameter snapshots, evaluated once
    # the live view reads on past a line it cannot use (and says so here, on the page); a report refuses it
    skip_bad_lines: bool = False
    error: str = ""
    _offset: int = 0
    _lines: int = 0                  # lines of run.jsonl read so far (to name a bad one)
    _inode: int | None = None
    _mtimes: dict[str, float] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path | str, wait: bool = False) -> RunData:
        """Read a run directory; with `wait` (the live view) it may be empty or not exist yet."""
        p = Path(path)
        if wait:
            run = cls(p, skip_bad_lines=True)
            run.refresh()
            return run
        if not p.is_dir():
            raise ConfigError(f"run directory {str(p)!r} does not exist; give a folder that holds {RUN_LOG} "
                              "(a master's --out)")
        if not any((p / name).exists() for name in (RUN_LOG, SUMMARY, JOB)):
            raise ConfigError(f"run directory {str(p)!r} holds neither {RUN_LOG} nor {SUMMARY} nor {JOB}: not a "
                              "flexgc run (a master's --out)")
        run = cls(p)
        run.refresh()
        return run

    @property
    def n(self) -> int:
        if self.records:
            return len(self.records[0]["workers"])
        return int(self.info.get("n") or 0)

    # -- reading ------------------------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Read what was appended to run.jsonl (and a new job.json or summary.json). True when anything changed."""
        changed = self._read_meta()
        log = self.path / RUN_LOG
        try:
            st = log.stat()
        except FileNotFoundError:
            return changed
        if st.st_ino != self._inode or st.st_size < self._offset:  # rewritten (a resumed master trims it)
            changed = changed or bool(self.records)
            self.generation += self._inode is not None
            self._inode, self._offset, self._lines = st.st_ino, 0, 0
            self.records, self.durations_s, self.ideal_ms, self.plans, self.evaluations = [], [], [], [], []
        if st.st_size == self._offset:
            return changed
        with log.open("rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read(st.st_size - self._offset)
        end = chunk.rfind(b"\n") + 1  # a torn last line (the master mid-write) waits for the next refresh
        self._offset += end
        new = []
        for number, line in enumerate(chunk[:end].splitlines(), start=self._lines + 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict) or rec.get("schema") != SCHEMA:
                    got = rec.get("schema") if isinstance(rec, dict) else type(rec).__name__
                    raise FlexgcError(f"{log}: line {number}: record schema {got!r}; this report reads {SCHEMA!r}")
            except ValueError as exc:
                bad = FlexgcError(f"{log}: line {number} is not a JSON record ({getattr(exc, 'msg', exc)}: "
                                  f"{line[:40]!r}); the master writes whole lines only: remove or fix that line")
                if not self.skip_bad_lines:
                    raise bad from None
                self._skipped(bad)
                continue
            except FlexgcError as bad:
                if not self.skip_bad_lines:
                    raise
                self._skipped(bad)
                continue
            new.append(rec)
        self._lines += chunk[:end].count(b"\n")
        if any("event" in rec for rec in new):
            # a resumed master's marker supersedes the records it runs again: the log's own rule applies
            from flexgc.master.accounting import apply_record

            self.plans += [rec for rec in new if rec.get("event") == "plan"]
            for rec in new:  # a resume drops the evaluations of the iterations it runs again
                if rec.get("event") == "resume":
                    self.evaluations = [e for e in self.evaluations if e["iteration"] < rec["from_iteration"]]
                elif rec.get("event") == "eval":
                    self.evaluations.append(rec)
            records = list(self.records)
            for rec in new:
                apply_record(records, rec)
            self.records, self.durations_s, self.ideal_ms = records, [], []
            self._add_model(0)
            return True
        self.records.extend(new)
        self._add_model(len(self.records) - len(new))
        return changed or bool(new)

    def _skipped(self, bad: FlexgcError) -> None:
        """The live view skips a line it cannot use: said once in the log and shown on the page."""
        if not self.error:
            _log.warning("%s (the live view skips it)", bad)
        self.error = f"{bad} (skipped)"

    def _read_meta(self) -> bool:
        """Re-read job.json (written when the job starts) and summary.json (when it ends) if they changed;
        recompute the model when the identity they give changed. True when anything changed."""
        changed = False
        for name in (JOB, SUMMARY):
            path = self.path / name
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:
                continue
            if mtime == self._mtimes.get(name):
                continue
            try:
                value = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # both are replaced atomically by the master, so only a foreign file gets here
            self._mtimes[name] = mtime
            if name == JOB:
                self.job = value
            else:
                self.summary = value
            changed = True
        if changed:
            before = (self.code.spec if self.code else None, self.delay, self.seed)
            self._identify()
            if (self.code.spec if self.code else None, self.delay, self.seed) != before:
                self.durations_s, self.ideal_ms = [], []
                self._add_model(0)
        return changed

    @property
    def info(self) -> dict[str, Any]:
        """The job's identity and outcome: job.json's fields (n for its `workers`) under summary.json's."""
        job = {**self.job, "n": self.job["workers"]} if "workers" in self.job else dict(self.job)
        return {**job, **self.summary}

    def _identify(self) -> None:
        s = self.info
        try:
            self.code = parse_code(str(s["code"]), int(s["n"]))
            self.delay = parse_delay(str(s["delay"]))
            self.seed = int(s["delay_seed"])
            self.model_note = ""
        except (KeyError, TypeError, ValueError, FlexgcError) as exc:
            self.code = self.delay = self.seed = None
            self.model_note = f"no model ideal: {JOB} / {SUMMARY} do not name a code, delay and seed this version " \
                              f"reads ({exc})"

    def _add_model(self, start: int) -> None:
        """Realized delays and the ideal decode instant of records[start:] (or None without an identity)."""
        new = self.records[start:]
        if self.code is None or self.delay is None or self.seed is None or not new:
            self.durations_s += [None] * len(new)
            self.ideal_ms += [None] * len(new)
            return
        from flexgc.common.analysis import decode_times
        from flexgc.common.delays import realized_durations

        codes = self.plan_codes()
        durations_s: list[np.ndarray | None] = [None] * len(new)
        ideal_ms: list[float | None] = [None] * len(new)
        for plan in sorted({int(r.get("plan") or 0) for r in new}):  # each iteration under the code it ran
            code = codes.get(plan)
            rows = [j for j, r in enumerate(new) if int(r.get("plan") or 0) == plan]
            if code is None:
                continue
            durations = realized_durations(code, self.delay, self.seed, [int(new[j]["iteration"]) for j in rows])
            ideal = decode_times(code, durations).latency * 1e3
            for j, d, x in zip(rows, durations, ideal):
                durations_s[j], ideal_ms[j] = d, _round(float(x), 3)
        self.durations_s += durations_s
        self.ideal_ms += ideal_ms

    def plan_codes(self) -> dict[int, Code]:
        """The code of every plan the run used: 0 is the job's first code, then each plan event's (the last
        event of a plan id wins: a resumed master may announce an id again)."""
        codes: dict[int, Code] = {} if self.code is None else {0: self.code}
        for event in self.plans:
            try:
                codes[int(event["plan"])] = parse_code(str(event["code"]), self.code.n if self.code else self.n)
            except (KeyError, TypeError, ValueError, FlexgcError):
                continue
        return codes

    def code_of(self, index: int) -> Code | None:
        """The code records[index] ran under."""
        return self.plan_codes().get(int(self.records[index].get("plan") or 0)) if self.plans else self.code

    # -- derived ------------------------------------------------------------------------------------------

    def identity(self) -> list[tuple[str, str]]:
        """(field, value) pairs for the page header: what ran, where and with which versions."""
        s = self.info
        pairs = [("run directory", str(self.path))]
        if "code" not in s:
            pairs.append(("job", f"no {JOB} or {SUMMARY} (yet); n={self.n} from the run log"))
            return pairs
        data = ", ".join(f"{k}={s[k]}" for k in ("model", "d", "samples", "dtype") if s.get(k) is not None)
        pairs += [("code", str(s.get("code"))), ("n", str(s.get("n"))), ("data", data),
                  ("delay", f"{s.get('delay')} (seed {s.get('delay_seed')})")]
        for key, label in (("versions", "versions"), ("machine", "machine")):
            if key in s:
                value = s[key]
                pairs.append((label, ", ".join(f"{k} {v}" for k, v in value.items()) if isinstance(value, dict)
                              else str(value)))
        if not self.summary:
            pairs.append(("outcome", f"running (or stopped before writing {SUMMARY})"))
            return pairs
        wall = f" in {s['wall_s']} s" if s.get("wall_s") is not None else ""
        outcome = (f"{s.get('exact_iterations')} exact, {s.get('approximate_iterations')} approximate, "
                   f"{s.get('failed_iterations')} failed{wall}")
        if s.get("interrupted"):
            outcome += " (interrupted)"
        pairs.append(("outcome", outcome))
        val = s.get("validation")
        if isinstance(val, dict):
            figures = ", ".join(f"{k} {val[k]:.4g}" for k in ("val_accuracy", "val_loss") if val.get(k) is not None)
            pairs.append(("validation", f"{figures} after iteration {val.get('iteration')} "
                          f"({val.get('val_samples')} held-out rows)"))
        adapt = s.get("adapt")
        if isinstance(adapt, dict):
            pairs.append(("adapt", f"{adapt.get('mode')}: {adapt.get('switches')} plan switches in "
                          f"{adapt.get('checks')} checks; last plan {adapt.get('code')}"))
        return pairs

    def stats(self) -> dict[str, Any]:
        """The run's headline figures over the records read so far."""
        recs = self.records
        ok = [i for i, r in enumerate(recs) if r["outcome"] != "FAILED" and r["latency_ms"] is not None]
        lat = np.array([recs[i]["latency_ms"] for i in ok], dtype=float)
        pairs = [(recs[i]["latency_ms"], self.ideal_ms[i]) for i in ok if self.ideal_ms[i] is not None
                 and math.isfinite(self.ideal_ms[i] or math.inf)]
        loads = [w["load"] for r in recs for w in r["workers"] if w["task_sent_ms"] is not None]
        losses = [r["loss"] for r in recs if r["loss"] is not None]
        last = next((r for r in reversed(recs) if r["loss"] is not None), None)
        outcomes = [r["outcome"] for r in recs]
        return {
            "iterations": len(recs), "exact": outcomes.count("EXACT"), "approximate": outcomes.count("APPROXIMATE"),
            "failed": outcomes.count("FAILED"),
            "mean_ms": _round(float(lat.mean())) if lat.size else None,
            "median_ms": _round(float(np.median(lat))) if lat.size else None,
            "p90_ms": _round(float(np.percentile(lat, 90))) if lat.size else None,
            "ideal_mean_ms": _round(float(np.mean([b for _, b in pairs]))) if pairs else None,
            "measured_over_ideal": _round(float(np.mean([a for a, _ in pairs]) / np.mean([b for _, b in pairs])), 3)
            if pairs and np.mean([b for _, b in pairs]) > 0 else None,
            "mean_load": _round(float(np.mean(loads)), 4) if loads else None,
            "final_loss": _round(losses[-1], 6) if losses else None,
            # an APPROXIMATE record's loss is the estimate of the partitions it decoded, not the full-batch loss
            "final_loss_estimate": last is not None and last["outcome"] == "APPROXIMATE",
        }

    @property
    def scheme(self) -> str | None:
        """The code spec, with "+adapt" when the master adapted its placement (the summary's adapt entry)."""
        code = self.info.get("code")
        return None if code is None else f"{code}+adapt" if self.summary.get("adapt") else str(code)

    @property
    def approximate(self) -> bool:
        """Whether any iteration stepped on an approximate gradient (ignore:s, or --on-deadline approximate)."""
        return any(r["outcome"] == "APPROXIMATE" for r in self.records)

    def evaluated_losses(self) -> dict[int, float]:
        """L(theta_t) of the parameter snapshots the run kept (`--snapshot-every`), on the whole data."""
        if self.snapshots is None:
            self.snapshots = SnapshotLosses(self.path)
        return self.snapshots.update()

    def loss_points(self) -> list[LossPoint]:
        """The loss of the run's parameters against wall-clock time (flexgc.targets): the exact records', and
        the snapshots' evaluated on the whole data."""
        return loss_points(self.records, self.evaluated_losses(), full_batch=not self.info.get("batch_size"))

    def time_to_target(self, target: float) -> TimeToTarget:
        """When the run's full-batch loss first reached `target` (flexgc.targets)."""
        return time_to_target(self.records, target, self.evaluated_losses(),
                              full_batch=not self.info.get("batch_size"))

    def timeline_entry(self, index: int) -> dict[str, Any]:
        """records[index] in the compact form the page draws its Gantt from (see `layout_slot`).

        w[slot] = [task_sent, first_byte, delay_ms[], compute_ms[], result_arrival_ms[level], cancel_sent,
                   cancel_ack, task_done, planned]: planned is the injected delay (ms) of the partition the
                   slot was waiting on when the iteration ended (-1: unresponsive, never ends; None: none or
                   unknown). used = [slot, level, weight, ...] flattened: the rows the decode used.
        """
        rec = self.records[index]
        durations = self.durations_s[index] if index < len(self.durations_s) else None
        code = self.code_of(index)
        slots = []
        for w in rec["workers"]:
            done = len(w["compute_ms"])
            planned: float | None = None
            slot = int(w["slot"])
            if durations is not None and code is not None and w["task_sent_ms"] is not None \
                    and not w["finished"] and done < code.max_partitions(slot):
                d = float(durations[slot, done])
                planned = _round(d * 1e3) if math.isfinite(d) else -1
            slots.append([_round(w["task_sent_ms"]), _round(w["first_byte_ms"]),
                          [_round(x) for x in w["delay_ms"]], [_round(x) for x in w["compute_ms"]],
                          [_round(x) for x in w["result_arrival_ms"]], _round(w["cancel_sent_ms"]),
                          _round(w["cancel_ack_ms"]), _round(w.get("task_done_ms")), planned])
        used: list[float] = []
        for slot, level, weight in rec["rows_used"]:
            used += [slot, level, round(float(weight), 3)]
        return {"i": rec["iteration"], "plan": int(rec.get("plan") or 0), "lat": _round(rec["latency_ms"]),
                "ideal": self.ideal_ms[index],
                "outcome": rec["outcome"], "level": rec["level"], "stragglers": rec["stragglers"],
                "used": used, "w": slots, "who": [worker_label(w) for w in rec["workers"]]}

    def worker_scores(self) -> list[Any]:
        """Who straggled over the whole run, per worker id (`master.stragglers`: relative and individual scores,
        straggle rate, stalls), the slowest first; [] without the job's code or worker ids (an older run log)."""
        from flexgc.master.stragglers import StragglerScores

        if self.code is None or not any(w.get("worker_id") for r in self.records for w in r["workers"]):
            return []
        scores = StragglerScores(self.code.k, window=max(1, len(self.records)))
        for rec in self.records:
            scores.observe(rec)
        return scores.scores()

    def series(self) -> dict[str, list[Any]]:
        """Per-iteration columns of the page's step control: iteration, latency (a FAILED one: until the
        deadline), outcome."""
        return {"iteration": [r["iteration"] for r in self.records],
                "latency": [_round(r["latency_ms"]) for r in self.records],
                "outcome": [r["outcome"] for r in self.records]}


def worker_label(w: dict[str, Any]) -> str:
    """worker@host of a record's slot entry ("" when the run log does not say: an older run, or no task)."""
    worker_id, host = w.get("worker_id"), w.get("host")
    return "" if not worker_id else f"{worker_id}@{host}" if host else str(worker_id)


def comparison_target(runs: Sequence[RunData], target_loss: float | None = None) -> tuple[float | None, str]:
    """The target loss of a page (given, or flexgc.targets' default rule over these runs) and how it was set."""
    if target_loss is not None:
        return target_loss, "given (--target-loss)"
    target = default_target([(run.loss_points(), run.approximate) for run in runs])
    if target is None:
        return None, "no run has a full-batch loss (no exact iteration, no parameter snapshot)"
    return target, (f"default: {TARGET_FRACTION:.0%} of the way from the initial loss to the lowest full-batch loss "
                    "these runs reached, counting only runs without approximate iterations where there are any")


def model_comparison(code: Code, delay: DelayModel, seed: int, iterations: Sequence[int],
                     compute_ms: float = 0.0) -> list[tuple[str, np.ndarray]]:
    """What `code`, CRC(s_max) and uncoded need per iteration, in ms (inf: they could never decode it), on
    exactly the delays a run with `seed` injected, each partition taking `compute_ms` more (the run's measured
    compute per partition: `measured_compute_ms`), by the model's decode instant (analysis.ideal_latencies_ms):
    the demo's rows. A CRC(s_max) that cannot be built at this n is left out."""
    from flexgc.common.analysis import ideal_latencies_ms

    codes = {code.spec: code}
    # a job with room to grow (grow=E: its last E slots empty at the start) is compared on the slots it had
    grow = f"grow={code.n - code.holders}" if "grow=" in code.spec else ""
    for spec in ([f"crc:s={code.s_max}"] if code.s_max else []) + ["uncoded"]:  # CRC(0) is uncoded
        if grow:
            spec += ("," if ":" in spec else ":") + grow
        try:
            other = parse_code(spec, code.n)
        except FlexgcError as exc:
            _log.info("model row left out spec=%s reason=%s", spec, exc)
            continue
        codes.setdefault(other.spec, other)
    return [(f"{c.spec} {model_label(compute_ms)}", ideal_latencies_ms(c, delay, seed, list(iterations),
                                                                        compute_ms / 1e3))
            for c in codes.values()]


def model_label(compute_ms: float) -> str:
    """How a model row is named: on the same delays, and with the measured compute when there was any."""
    return "(model, same delays + compute)" if compute_ms > 0 else "(model, same delays)"


def measured_compute_ms(records: Sequence[dict[str, Any]]) -> float:
    """The median compute time of one partition over a run's records (0.0 when none was measured)."""
    times = [ms for r in records for w in r["workers"] for ms in w["compute_ms"] if ms is not None]
    return float(np.median(times)) if times else 0.0


def crc_comparison(code: Code, models: Sequence[tuple[str, np.ndarray]]) -> np.ndarray | None:
    """CRC(s_max)'s model row among `models`, to compare a run of `code` with; None when there is none or the
    run's code is that CRC itself (a code is not compared with itself)."""
    spec = f"crc:s={code.s_max}"
    if not code.s_max or code.family == "crc":
        return None
    return next((values for name, values in models if name.startswith(f"{spec} (model")), None)


def latency_row(name: str, values_ms: np.ndarray) -> dict[str, Any]:
    """A model row's figures: mean over the iterations it could decode, median (inf: more than half it could
    not), and stalls: the iterations it could never decode."""
    finite = values_ms[np.isfinite(values_ms)]
    median = float(np.median(values_ms)) if values_ms.size else math.nan
    return {"scheme": name, "mean_ms": _round(float(finite.mean())) if finite.size else None,
            "median_ms": _round(median) if math.isfinite(median) else ("inf" if values_ms.size else None),
            "stalls": int(values_ms.size - finite.size)}


def saving_sentence(live_mean_ms: float, smax: int, crc_mean_ms: float, compute_ms: float = 0.0) -> str:
    """How the live mean latency compares with CRC(s_max)'s model on the same delays and, when measured, the
    same compute per partition (the demo's last line)."""
    gain = 100 * (1 - live_mean_ms / crc_mean_ms)
    side = "below" if gain >= 0 else "above"
    same = "same delays and compute" if compute_ms > 0 else "same delays"
    return (f"live mean latency {live_mean_ms:.1f} ms is {abs(gain):.0f}% {side} what CRC(s={smax}) needs on the "
            f"{same} ({crc_mean_ms:.1f} ms, model)")


def model_rows(run: RunData) -> dict[str, Any]:
    """One run's answer to "how much did its code save here": its measured latency, and what it, CRC(s_max)
    and uncoded need on exactly its delays (model); an adaptive run adds the model of the plans it ran.
    {"rows": [latency_row, ...], "saving": saving_sentence or ""}; no rows without the job's identity."""
    if run.code is None or run.delay is None or run.seed is None or not run.records:
        return {"rows": [], "saving": ""}
    measured = np.array([r["latency_ms"] if r["outcome"] != "FAILED" and r["latency_ms"] is not None else math.inf
                         for r in run.records], dtype=float)
    rows = [latency_row(f"{run.code.spec} (measured, live)", measured)]
    if run.plans:
        rows.append(latency_row("the plans it ran (model, same delays)",
                                np.array([math.inf if x is None else x for x in run.ideal_ms], dtype=float)))
    iterations = [int(r["iteration"]) for r in run.records]
    compute_ms = measured_compute_ms(run.records)
    models = model_comparison(run.code, run.delay, run.seed, iterations, compute_ms)
    rows += [latency_row(name, values) for name, values in models]
    crc_values = crc_comparison(run.code, models)
    crc = latency_row("crc", crc_values) if crc_values is not None else None
    saving = ""
    if crc is not None and crc["mean_ms"] and rows[0]["mean_ms"] is not None:
        saving = saving_sentence(rows[0]["mean_ms"], run.code.s_max, crc["mean_ms"], compute_ms)
    return {"rows": rows, "saving": saving}


def layout_slot(slot: Sequence[Any]) -> dict[str, list[tuple[float, float, int]]]:
    """Where a slot's bars go on the timeline: {kind: [(start_ms, length_ms, partition position)]}.

    The worker waits each partition's injected delay, then computes it, in its order, from the moment
    the master sent the task (the master's clock; the gap before a level mark is the upload). The page's
    JavaScript lays bars out the same way (tests compare the two). planned -1 (never) has length inf.
    """
    sent, _first, delays, computes, _arrivals, _cs, _ca, _done, planned = slot
    bars: dict[str, list[tuple[float, float, int]]] = {"delay": [], "compute": [], "planned": []}
    if sent is None:
        return bars
    t = float(sent)
    for p, (d, c) in enumerate(zip(delays, computes)):
        bars["delay"].append((t, float(d or 0.0), p))
        t += float(d or 0.0)
        bars["compute"].append((t, float(c or 0.0), p))
        t += float(c or 0.0)
    if planned is not None:
        bars["planned"].append((t, math.inf if planned < 0 else float(planned), len(computes)))
    return bars


def entry_extent_ms(entry: dict[str, Any]) -> float:
    """The latest instant worth showing for a timeline entry (marks, bars, decode and ideal)."""
    times = [entry["lat"] or 0.0, entry["ideal"] or 0.0]
    for slot in entry["w"]:
        times += [x for x in (slot[1], slot[5], slot[6], slot[7]) if x is not None]
        times += [x for x in slot[4] if x is not None]
        for kind in ("delay", "compute", "planned"):
            times += [a + b for a, b, _ in layout_slot(slot)[kind] if math.isfinite(b)]
    return max(times)


def select_iterations(runs: Sequence[RunData], budget_slots: int = TIMELINE_SLOT_BUDGET) -> tuple[list[int], str]:
    """Which iterations get a timeline in a static page, and a note saying what was left out.

    All of them while the budget (slot-iterations summed over runs) allows; else the slowest of every run
    (a tenth of the kept ones) and the rest evenly spaced, the first and last included.
    """
    numbers = sorted({r["iteration"] for run in runs for r in run.records})
    cost = sum(run.n for run in runs) or 1
    keep = max(2, budget_slots // cost)
    if len(numbers) <= keep:
        return numbers, ""
    chosen: set[int] = set()
    per_run_slowest = max(1, keep // 10 // max(1, len(runs)))
    for run in runs:
        ranked = sorted((r for r in run.records if r["latency_ms"] is not None), key=lambda r: -r["latency_ms"])
        chosen |= {r["iteration"] for r in ranked[:per_run_slowest]}
    room = max(2, keep - len(chosen))
    chosen |= {numbers[round(j * (len(numbers) - 1) / (room - 1))] for j in range(room)}
    kept = sorted(chosen)
    note = (f"timeline kept for {len(kept)} of {len(numbers)} iterations (evenly spaced, plus the slowest of each "
            f"run) to keep this file small; `flexgc report --timeline-max N` keeps more, `flexgc view` shows all")
    return kept, note


def run_labels(runs: Sequence[RunData]) -> list[str]:
    """Short labels: the identity fields that differ between the runs (the directory name if none do)."""
    if len(runs) == 1:
        return [str(runs[0].scheme or runs[0].path.name)]
    fields = ("code", "delay", "delay_seed", "n")
    infos = [{**run.info, "code": run.scheme} for run in runs]
    differ = [f for f in fields if len({json.dumps(info.get(f)) for info in infos}) > 1]
    labels = []
    for run, info in zip(runs, infos):
        parts = [f"{info[f]}" if f == "code" else f"{f}={info[f]}" for f in differ if info.get(f) is not None]
        labels.append(" · ".join(parts) or run.path.name)
    if len(set(labels)) < len(labels):
        labels = [f"{label} ({run.path.name})" for label, run in zip(labels, runs)]
    return labels


def generator_identity() -> dict[str, str]:
    """Who made the page: the versions and machine of the report itself (the run log does not record its own)."""
    import platform

    from flexgc import __version__

    versions = {"flexgc": __version__, "python": platform.python_version(), "numpy": np.__version__}
    try:
        import plotly

        versions["plotly"] = plotly.__version__
    except ImportError:
        pass
    return {"versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
            "machine": f"{platform.node()} ({platform.system()} {platform.machine()}, {os.cpu_count()} CPUs)"}
