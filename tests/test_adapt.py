"""Adaptive placement with real processes (docs/design.md §2.10): the plan follows measured speed, every
iteration stays exact, a switch costs no iteration, and a master killed after a switch resumes under the
same plan with the same parameters as centralized gradient descent."""

from __future__ import annotations

import functools
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flexgc.common.codes import parse_code
from flexgc.harness.local import LocalCluster
from flexgc.master.accounting import read_run_events
from tests.helpers import centralized_params, job_config, read_records, run_job, wait_for

pytestmark = pytest.mark.slow

SLOW = (0, 3, 4)
TWO_CLASS = f"shifted-exp:a=1,mu=20,unit_s=0.15/slow:workers={'+'.join(map(str, SLOW))},factor=4.5"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _assert_exact_and_centralized(cfg: object, records: list[dict], params: np.ndarray) -> None:
    assert records and all(r["outcome"] == "EXACT" for r in records)
    assert all(r["residual"] <= 1e-9 for r in records)
    reference = centralized_params(cfg)  # type: ignore[arg-type]
    assert np.linalg.norm(params - reference) <= 1e-12 * np.linalg.norm(reference)


def test_two_class_cluster_gets_a_speed_plan_and_stays_exact(tmp_path: Path) -> None:
    cfg = job_config(tmp_path, workers=6, code="nested:levels=0,1,2", iterations=20, adapt="speed",
                     replan_every=5, delay=TWO_CLASS, samples=1200, momentum=0.0)
    summary, records, params = run_job(cfg, timeout_s=180)

    _assert_exact_and_centralized(cfg, records, params)
    switches = read_run_events(tmp_path / "run.jsonl", "plan")
    assert switches, "no plan switch on a two-class cluster"
    first = switches[0]
    code = parse_code(first["code"], 6)
    assert code.family == "weighted" and code.s_max == 2 and code.k == 6 * cfg.adapt_split
    # the slow slots own the small blocks
    own = [int(code.prefix[0, i]) for i in range(6)]
    assert max(own[i] for i in SLOW) < min(own[i] for i in range(6) if i not in SLOW)
    assert first["predicted_gain"] >= 0.05 and first["t_stat"] >= 3
    # plans only change at boundaries: before the switch plan 0, from it on the new plan, never mixed
    plans = [r["plan"] for r in records]
    assert plans == sorted(plans) and plans[0] == 0
    assert plans[first["iteration"]] == first["plan"] and plans[first["iteration"] - 1] < first["plan"]
    # every worker loaded its new partitions before the switch (none made the plan wait past its boundaries)
    assert sorted(first["ready_workers"]) == list(range(6))
    assert summary["adapt"]["switches"] == len(switches) and summary["adapt"]["code"] == switches[-1]["code"]


def test_adapt_off_keeps_the_static_code(tmp_path: Path) -> None:
    cfg = job_config(tmp_path, workers=4, iterations=6, delay=TWO_CLASS.replace("0+3+4", "0"))
    summary, records, params = run_job(cfg, timeout_s=120)
    _assert_exact_and_centralized(cfg, records, params)
    assert summary["adapt"] is None and not read_run_events(tmp_path / "run.jsonl", "plan")
    assert all(r["plan"] == 0 for r in records)


def test_master_killed_after_a_switch_resumes_under_the_same_plan(tmp_path: Path) -> None:
    cfg = job_config(tmp_path, workers=6, code="nested:levels=0,1,2", iterations=24, adapt="speed",
                     replan_every=5, delay=TWO_CLASS, samples=1200, checkpoint_every=2, port=_free_port(),
                     momentum=0.0)
    out = tmp_path
    with LocalCluster(cfg) as cluster:
        cluster.start_master()
        cluster.start_workers(reconnect_max_s=0.2)

        def switched_and_checkpointed() -> bool:
            events = read_run_events(out / "run.jsonl", "plan")
            return bool(events) and len(read_records(out)) >= events[0]["iteration"] + 3
        wait_for(switched_and_checkpointed, 90, "a plan switch and a checkpoint after it")
        assert cluster.master is not None
        cluster.master.kill()
        cluster.master.join(10)
        with np.load(out / "checkpoint.npz") as ckpt:
            saved = json.loads(str(ckpt["extra"]))["adapt"]
            resumed_from = int(ckpt["iteration"])
        assert saved["plan"] >= 1 and saved["code"].startswith("weighted:")
        cluster.start_master()  # same port and run directory; the workers reconnect by themselves
        assert cluster.wait_master(150) == 0
    records = read_records(out)
    assert [r["iteration"] for r in records] == list(range(cfg.iterations))
    # the resumed master started under the checkpointed plan: no iteration after the resume ran plan 0
    assert all(r["plan"] >= saved["plan"] for r in records[resumed_from:])
    _assert_exact_and_centralized(cfg, records, np.load(out / "params.npy"))


def _at_least(count: Callable[[], list[Any]], n: int) -> bool:
    return len(count()) >= n


def test_elastic_removes_gone_workers_restores_tolerance_and_takes_a_newcomer_in(tmp_path: Path) -> None:
    # enough iterations (about 12 s) that the removals and the newcomer's start fit in a loaded machine's job
    cfg = job_config(tmp_path, workers=6, code="nested:levels=0,1,2", iterations=400, adapt="elastic",
                     replace_after_s=0.3, delay="shifted-exp:a=1,mu=20,unit_s=0.1", samples=1200, momentum=0.0)
    out = tmp_path

    def removals() -> list[dict]:
        return [e for e in read_run_events(out / "run.jsonl", "plan") if "removed" in e["reason"]]

    with LocalCluster(cfg) as cluster:
        cluster.start_master()
        cluster.start_workers(reconnect_max_s=0.2)
        wait_for(lambda: len(read_records(out)) >= 3, 60, "3 iterations")
        # three workers die for good, one after the other: with s_max = 2 the third death would fail every
        # iteration of a static code; each is removed (and the tolerance restored) before the next dies
        for count, slot in enumerate((1, 3, 5), start=1):
            cluster.workers[slot].kill()
            wait_for(functools.partial(_at_least, removals, count), 60, f"removal {count} (slot {slot})")
        before = len(read_records(out))
        cluster.start_worker(1, worker_id="newcomer")
        wait_for(lambda: any("taken in" in e["reason"] for e in read_run_events(out / "run.jsonl", "plan")), 60,
                 "the newcomer taken in")
        assert len(read_records(out)) < cfg.iterations, "the job ended before the newcomer was taken in"
        assert cluster.wait_master(120) == 0
    records = read_records(out)
    _assert_exact_and_centralized(cfg, records, np.load(out / "params.npy"))
    events = read_run_events(out / "run.jsonl", "plan")
    last = parse_code(events[-1]["code"], 6)
    assert last.s_max == 2 and sum(1 for o in last.order if o) == 4  # 3 removed, one taken back in
    assert any(r["workers"][1]["task_sent_ms"] is not None for r in records[before:])  # the newcomer works


def test_a_plan_switch_on_a_dataset_the_master_serves_loads_its_partitions_and_stays_exact(tmp_path: Path) -> None:
    # the workers fetch a plan's partitions from the master (FetchPartition) before it is in use
    cfg = job_config(tmp_path, workers=6, code="nested:levels=0,1,2", iterations=20, adapt="speed",
                     replan_every=5, delay=TWO_CLASS, model="softmax", data="sklearn:digits", momentum=0.0)
    _, records, params = run_job(cfg, timeout_s=180)

    _assert_exact_and_centralized(cfg, records, params)
    switches = read_run_events(tmp_path / "run.jsonl", "plan")
    assert switches and sorted(switches[0]["ready_workers"]) == list(range(6))


def test_a_master_killed_after_a_removal_resumes_the_plan_without_waiting_for_the_gone_worker(tmp_path: Path) -> None:
    # the resumed master waits only for the slots its checkpointed plan gives work to: the join timeout
    # (120 s) would outlast the test's wait if it waited for the removed slot's worker
    cfg = job_config(tmp_path, workers=5, code="nested:levels=0,1", iterations=300, adapt="elastic",
                     replace_after_s=0.3, delay="shifted-exp:a=1,mu=20,unit_s=0.05", samples=1000, momentum=0.0,
                     checkpoint_every=1, port=_free_port(), join_timeout_s=120.0)
    out = tmp_path
    with LocalCluster(cfg) as cluster:
        cluster.start_master()
        cluster.start_workers(reconnect_max_s=0.2)
        wait_for(lambda: len(read_records(out)) >= 3, 60, "3 iterations")
        cluster.workers[2].kill()

        def removed_and_checkpointed() -> bool:
            events = read_run_events(out / "run.jsonl", "plan")
            return bool(events) and len(read_records(out)) >= events[0]["iteration"] + 3
        wait_for(removed_and_checkpointed, 60, "the removal and a checkpoint after it")
        assert cluster.master is not None
        cluster.master.kill()
        cluster.master.join(10)
        with np.load(out / "checkpoint.npz") as ckpt:
            saved = parse_code(json.loads(str(ckpt["extra"]))["adapt"]["code"], 5)
        assert saved.order[2] == () and saved.s_max == 1
        assert len(read_records(out)) < cfg.iterations, "the job ended before the master was killed"
        cluster.start_master()
        assert cluster.wait_master(60) == 0
    records = read_records(out)
    assert [r["iteration"] for r in records] == list(range(cfg.iterations))
    _assert_exact_and_centralized(cfg, records, np.load(out / "params.npy"))


def test_elastic_growth_takes_workers_beyond_workers_into_the_code_up_to_max_workers(tmp_path: Path) -> None:
    # --workers 4 --max-workers 6: the job starts on its code for 4 slots with 2 empty ones; workers that join
    # while every slot is held get the empty slots and are given a share at a boundary (one more would wait as a
    # spare: there are max_workers slots, test_membership.py)
    cfg = job_config(tmp_path, workers=4, max_workers=6, code="nested:levels=0,1", iterations=400,
                     adapt="elastic", delay="shifted-exp:a=1,mu=20,unit_s=0.1", samples=1200, momentum=0.0)
    out = tmp_path

    def taken_in() -> list[dict]:
        return [e for e in read_run_events(out / "run.jsonl", "plan") if "taken in" in e["reason"]]

    with LocalCluster(cfg) as cluster:
        cluster.start_master()
        cluster.start_workers(reconnect_max_s=0.2)
        wait_for(lambda: len(read_records(out)) >= 3, 60, "3 iterations")
        first = read_records(out)[0]
        assert [w["task_sent_ms"] is not None for w in first["workers"]] == [True] * 4 + [False] * 2
        assert not {4, 5} & set(first["stragglers"])   # an empty slot is no straggler
        for count, slot in enumerate((4, 5), start=1):   # no preferred slot: the master picks the empty ones
            cluster.start_worker(slot, worker_id=f"grown-{count}", any_slot=True)
            wait_for(functools.partial(lambda c: sum(e["reason"].count("taken in") for e in taken_in()) >= c, count),
                     60, f"grown worker {count} taken in")
        assert len(read_records(out)) < cfg.iterations, "the job ended before the grown workers were taken in"
        assert cluster.wait_master(120) == 0
    records = read_records(out)
    _assert_exact_and_centralized(cfg, records, np.load(out / "params.npy"))
    event = read_run_events(out / "run.jsonl", "plan")[-1]
    last = parse_code(event["code"], 6)
    assert last.holders == 6 and last.s_max == 1 and last.k == 16
    after = [r for r in records if r["iteration"] >= event["iteration"]]
    assert after and all(r["workers"][5]["task_sent_ms"] is not None for r in after)  # the grown slots work
    assert {r["workers"][4]["worker_id"] for r in after} == {"grown-1"}


def test_a_master_killed_after_growth_resumes_with_every_grown_slot_working(tmp_path: Path) -> None:
    cfg = job_config(tmp_path, workers=4, max_workers=6, code="nested:levels=0,1", iterations=600, adapt="elastic",
                     delay="shifted-exp:a=1,mu=20,unit_s=0.05", samples=1000, momentum=0.0, checkpoint_every=1,
                     port=_free_port(), join_timeout_s=60.0)
    out = tmp_path

    def grown() -> bool:
        return sum(e["reason"].count("taken in") for e in read_run_events(out / "run.jsonl", "plan")) >= 2

    with LocalCluster(cfg) as cluster:
        cluster.start_master()
        cluster.start_workers(reconnect_max_s=0.2)
        wait_for(lambda: len(read_records(out)) >= 3, 60, "3 iterations")
        for slot in (4, 5):
            cluster.start_worker(slot, worker_id=f"grown-{slot}", any_slot=True, reconnect_max_s=0.2)
        wait_for(grown, 60, "both grown workers taken in")
        switched = read_run_events(out / "run.jsonl", "plan")[-1]["iteration"]
        wait_for(lambda: len(read_records(out)) >= switched + 3, 60, "a checkpoint after the growth")
        assert cluster.master is not None
        cluster.master.kill()
        cluster.master.join(10)
        killed_at = len(read_records(out))
        assert killed_at < cfg.iterations, "the job ended before the master was killed"
        cluster.start_master()
        assert cluster.wait_master(120) == 0
    records = read_records(out)
    assert [r["iteration"] for r in records] == list(range(cfg.iterations))
    _assert_exact_and_centralized(cfg, records, np.load(out / "params.npy"))
    # the resumed master runs the grown plan: all six slots work (the workers rejoined, whatever slot each got)
    assert all(sum(w["task_sent_ms"] is not None for w in r["workers"]) == 6 for r in records[killed_at + 5:])
