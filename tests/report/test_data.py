"""flexgc.report.data: reading run directories (also while they grow) and what the page is built from."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from flexgc.common.analysis import ideal_latencies_ms
from flexgc.common.codes import parse_code
from flexgc.common.delays import parse_delay
from flexgc.common.errors import ConfigError, FlexgcError
from flexgc.report.charts import latency_chart, summary_charts
from flexgc.report.data import (
    RunData,
    comparison_target,
    layout_slot,
    model_comparison,
    model_rows,
    run_labels,
    select_iterations,
)


def test_entries_match_the_run_log(real_run: Path) -> None:
    run = RunData.open(real_run)
    lines = [json.loads(x) for x in (real_run / "run.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in run.records] == [r["iteration"] for r in lines]
    for j, rec in enumerate(lines):
        entry = run.timeline_entry(j)
        assert len(entry["w"]) == len(rec["workers"]) == 4
        for slot, w in zip(entry["w"], rec["workers"]):
            bars = layout_slot(slot)
            assert len(bars["compute"]) == len(bars["delay"]) == len(w["compute_ms"])
            if bars["compute"]:  # laid end to end from the task's send instant
                start, length, _ = bars["compute"][-1]
                total = sum(w["delay_ms"]) + sum(w["compute_ms"])
                assert start + length == pytest.approx(w["task_sent_ms"] + total, abs=0.05)
        assert entry["used"][0::3] == [u[0] for u in rec["rows_used"]]


def test_ideal_is_the_models_decode_instant_for_the_same_delays(real_run: Path) -> None:
    run = RunData.open(real_run)
    summary = json.loads((real_run / "summary.json").read_text())
    iters = [r["iteration"] for r in run.records]
    want = ideal_latencies_ms(parse_code(summary["code"], summary["n"]), parse_delay(summary["delay"]),
                              summary["delay_seed"], iters)
    got = np.array([math.inf if x is None else x for x in run.ideal_ms])
    np.testing.assert_allclose(got, want, atol=1e-3)  # kept to the microsecond


def test_planned_delay_marks_what_the_cancel_cut_short(real_run: Path) -> None:
    run = RunData.open(real_run)
    planned = [slot[8] for j in range(len(run.records)) for slot in run.timeline_entry(j)["w"]]
    cut = [(j, w) for j, r in enumerate(run.records) for w in r["workers"]
           if w["task_sent_ms"] is not None and not w["finished"]]
    assert cut, "the job should have cancelled someone"
    for j, w in cut:
        p = run.timeline_entry(j)["w"][w["slot"]][8]
        assert p is not None and (p == -1 or p > 0)
    assert all(p is None or p == -1 or p > 0 for p in planned)


def test_refresh_follows_appends_and_leaves_a_torn_line_out(real_run: Path, tmp_path: Path) -> None:
    lines = (real_run / "run.jsonl").read_text().splitlines(keepends=True)
    log = tmp_path / "run.jsonl"
    log.write_text(lines[0])
    run = RunData.open(tmp_path)
    assert len(run.records) == 1 and run.refresh() is False
    with log.open("a") as fh:
        fh.write(lines[1] + lines[2][:40])  # the master mid-write
    assert run.refresh() is True and len(run.records) == 2
    with log.open("a") as fh:
        fh.write(lines[2][40:])
    assert run.refresh() is True and [r["iteration"] for r in run.records] == [0, 1, 2]
    assert run.ideal_ms == [None] * 3  # no summary yet: no identity, no model
    shutil.copy(real_run / "summary.json", tmp_path / "summary.json")
    assert run.refresh() is True and all(x is not None for x in run.ideal_ms)


def test_job_json_gives_the_identity_while_the_job_runs(real_run: Path, tmp_path: Path) -> None:
    summary = json.loads((real_run / "summary.json").read_text())
    job = {"code": summary["code"], "workers": summary["n"], "delay": summary["delay"],
           "delay_seed": summary["delay_seed"], "model": summary["model"], "d": summary["d"]}
    (tmp_path / "job.json").write_text(json.dumps(job))  # what the master writes when the job starts
    (tmp_path / "run.jsonl").write_text((real_run / "run.jsonl").read_text())
    run = RunData.open(tmp_path)
    identity = dict(run.identity())
    assert identity["code"] == summary["code"] and identity["outcome"].startswith("running")
    assert all(x is not None for x in run.ideal_ms) and run.model_note == ""
    ideal = list(run.ideal_ms)
    shutil.copy(real_run / "summary.json", tmp_path / "summary.json")  # the job ends
    assert run.refresh() is True and "exact" in dict(run.identity())["outcome"] and run.ideal_ms == ideal


def test_a_rewritten_log_starts_over(real_run: Path, tmp_path: Path) -> None:
    lines = (real_run / "run.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "run.jsonl").write_text("".join(lines[:3]))
    run = RunData.open(tmp_path)
    tmp = tmp_path / "run.tmp"
    tmp.write_text(lines[0])
    os.replace(tmp, tmp_path / "run.jsonl")  # what a resumed master does
    assert run.refresh() is True and len(run.records) == 1 and run.generation == 1


def test_evaluations_are_read_with_resume_markers_and_charted(real_run: Path, tmp_path: Path) -> None:
    lines = (real_run / "run.jsonl").read_text().splitlines(keepends=True)
    events = [{"event": "eval", "iteration": 0, "val_loss": 0.7, "val_accuracy": 0.5},
              {"event": "eval", "iteration": 2, "val_loss": 0.6, "val_accuracy": 0.6},
              {"event": "resume", "from_iteration": 2},
              {"event": "eval", "iteration": 2, "val_loss": 0.5, "val_accuracy": 0.7}]
    summary = json.loads((real_run / "summary.json").read_text())
    summary["validation"] = {"iteration": 2, "val_loss": 0.5, "val_accuracy": 0.7, "val_samples": 40}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "run.jsonl").write_text("".join(lines[:3]) + "".join(
        json.dumps({"schema": "flexgc.run.v1", **e}) + "\n" for e in events))
    without = RunData.open(real_run)

    run = RunData.open(tmp_path)

    assert [(e["iteration"], e["val_loss"]) for e in run.evaluations] == [(0, 0.7), (2, 0.5)]
    charts = {c.key: c for c in summary_charts([run, without], ["a", "b"])}
    assert [s.y for s in charts["val_accuracy"].series] == [[0.5, 0.7]]  # only the run that evaluated
    assert [s.x for s in charts["val_loss"].series] == [[0, 2]]
    assert not {"val_accuracy", "val_loss"} & {c.key for c in summary_charts([without], ["b"])}
    assert ("validation", "val_accuracy 0.7, val_loss 0.5 after iteration 2 (40 held-out rows)") in run.identity()


def test_open_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"neither run\.jsonl nor summary\.json"):
        RunData.open(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        RunData.open(tmp_path / "nope")
    assert RunData.open(tmp_path / "nope", wait=True).records == []


def test_a_foreign_schema_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run.jsonl").write_text(json.dumps({"schema": "other.v9", "iteration": 0}) + "\n")
    with pytest.raises(FlexgcError, match=r"other\.v9"):
        RunData.open(tmp_path)


def test_select_iterations_keeps_all_within_budget_else_the_slowest_and_a_spread(real_run: Path) -> None:
    run = RunData.open(real_run)
    numbers = [r["iteration"] for r in run.records]
    assert select_iterations([run]) == (numbers, "")
    kept, note = select_iterations([run], budget_slots=4 * 4)  # room for 4 iterations of n = 4
    slowest = max(run.records, key=lambda r: r["latency_ms"] or 0)["iteration"]
    assert slowest in kept and numbers[0] in kept and numbers[-1] in kept
    assert len(kept) <= 5 and f"{len(kept)} of {len(numbers)}" in note


def test_labels_name_what_differs(real_run: Path, real_crc_run: Path) -> None:
    runs = [RunData.open(real_run), RunData.open(real_crc_run)]
    assert run_labels(runs) == ["nested:levels=0,1,2", "crc:s=2"]
    assert run_labels(runs[:1]) == ["nested:levels=0,1,2"]


def _with_a_plan_switch(real_run: Path, out: Path, at: int = 4, code: str = "crc:s=2") -> Path:
    """A copy of the real run whose records from `at` on name plan 1, announced by a `plan` event (what an
    adaptive master writes)."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(real_run / "summary.json", out / "summary.json")
    lines = []
    for line in (real_run / "run.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["iteration"] == at:
            lines.append(json.dumps({"schema": rec["schema"], "event": "plan", "iteration": at, "plan": 1,
                                     "code": code, "reason": "first check", "predicted_gain": 0.2}))
        rec["plan"] = int(rec["iteration"] >= at)
        lines.append(json.dumps(rec))
    (out / "run.jsonl").write_text("\n".join(lines) + "\n")
    return out


def test_each_iteration_gets_the_model_of_the_plan_it_ran(real_run: Path, tmp_path: Path) -> None:
    run = RunData.open(_with_a_plan_switch(real_run, tmp_path / "adaptive"))
    summary = json.loads((real_run / "summary.json").read_text())
    iters = [r["iteration"] for r in run.records]
    delay, seed = parse_delay(summary["delay"]), summary["delay_seed"]

    assert [e["plan"] for e in run.plans] == [1] and run.plan_codes()[1].spec == "crc:s=2"
    got = np.array([math.inf if x is None else x for x in run.ideal_ms])
    np.testing.assert_allclose(got[:4], ideal_latencies_ms(run.plan_codes()[0], delay, seed, iters[:4]), atol=1e-3)
    np.testing.assert_allclose(got[4:], ideal_latencies_ms(parse_code("crc:s=2", 4), delay, seed, iters[4:]),
                               atol=1e-3)
    latency = latency_chart([run], ["x"])
    (marks,) = [s for s in latency.series if s.name == "x plan switch"]
    assert marks.x[:2] == [3.5, 3.5] and "plan 1 from iteration 4: crc:s=2" in (marks.text or [""])[0]


def test_one_run_answers_what_crc_and_uncoded_would_have_needed(real_run: Path) -> None:
    run = RunData.open(real_run)
    summary = json.loads((real_run / "summary.json").read_text())
    iters = [r["iteration"] for r in run.records]

    rows = model_rows(run)

    assert [r["scheme"] for r in rows["rows"]] == ["nested:levels=0,1,2 (measured, live)",
                                                   "nested:levels=0,1,2 (model, same delays + compute)",
                                                   "crc:s=2 (model, same delays + compute)",
                                                   "uncoded (model, same delays + compute)"]
    compute_ms = float(np.median([ms for r in run.records for w in r["workers"] for ms in w["compute_ms"]]))
    crc = ideal_latencies_ms(parse_code("crc:s=2", 4), parse_delay(summary["delay"]), summary["delay_seed"], iters,
                             compute_ms / 1e3)
    assert rows["rows"][2]["mean_ms"] == pytest.approx(float(crc[np.isfinite(crc)].mean()), abs=0.01)
    assert rows["rows"][2]["stalls"] == int((~np.isfinite(crc)).sum())
    assert "what CRC(s=2) needs on the same delays and compute" in rows["saving"]


def test_a_real_runs_loss_points_are_its_exact_losses_in_wall_clock_order(real_run: Path) -> None:
    run = RunData.open(real_run)
    points = run.loss_points()
    exact = [r for r in run.records if r["outcome"] == "EXACT"]
    assert [p.loss for p in points if p.source == "exact"] == [r["loss"] for r in exact]
    assert [p.time_s for p in points] == sorted(p.time_s for p in points) and points[0].time_s == 0.0
    target, rule = comparison_target([run])
    assert target is not None and "90%" in rule
    assert run.time_to_target(target).reached


def test_a_grown_jobs_model_rows_compare_on_the_slots_it_had() -> None:
    # a job with room to grow (2 empty slots of 6) is compared with CRC and uncoded on its 4 slots, not on 6
    code = parse_code("nested:levels=0,1,grow=2", 6)
    delay = parse_delay("shifted-exp:a=1,mu=5,unit_s=0.1")
    rows = dict(model_comparison(code, delay, 3, list(range(20))))
    assert list(rows) == ["nested:levels=0,1,grow=2 (model, same delays)", "crc:s=1,grow=2 (model, same delays)",
                          "uncoded:grow=2 (model, same delays)"]
    on_four = ideal_latencies_ms(parse_code("uncoded", 4), delay, 3, list(range(20)))
    np.testing.assert_allclose(rows["uncoded:grow=2 (model, same delays)"], on_four)


def test_an_approximate_runs_final_loss_is_flagged_as_an_estimate(tmp_path: Path) -> None:
    run = RunData(tmp_path)
    rec = {"outcome": "EXACT", "latency_ms": 5.0, "workers": [], "loss": 0.3}
    run.records, run.ideal_ms = [rec, {**rec, "outcome": "APPROXIMATE", "loss": 0.28}], [None, None]
    assert run.stats()["final_loss"] == 0.28 and run.stats()["final_loss_estimate"] is True
    run.records = [rec]
    assert run.stats()["final_loss_estimate"] is False
