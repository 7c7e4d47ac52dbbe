"""Faults with real processes: hung workers, master crash and resume from checkpoint."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import numpy as np
import pytest

from flexgc.harness.local import LocalCluster
from tests.helpers import centralized_params, job_config, master_args, read_records, run_cli, wait_for

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_hung_worker_is_a_straggler_and_discards_stale_work_on_resume(tmp_path: Path) -> None:
    cfg = job_config(tmp_path, code="nested:levels=0,1,2", iterations=30, delay="shifted-exp:a=1,mu=4,unit_s=0.06")
    out = tmp_path
    with LocalCluster(cfg) as cluster:
        cluster.start_master()
        cluster.start_workers()
        wait_for(lambda: len(read_records(out)) >= 3, 60, "3 iterations")
        cluster.signal_worker(1, signal.SIGSTOP)
        stopped_at = len(read_records(out))
        wait_for(lambda: len(read_records(out)) >= stopped_at + 5, 60, "5 iterations while slot 1 hangs")
        cluster.signal_worker(1, signal.SIGCONT)
        resumed_at = len(read_records(out))
        assert cluster.wait_master(120) == 0
    records = read_records(out)
    assert all(r["outcome"] == "EXACT" for r in records)
    hung = records[stopped_at + 1:resumed_at - 1]
    assert hung and all(1 in r["stragglers"] for r in hung)
    # back at work after SIGCONT: it delivers again, and what it computed before the stop was dropped
    assert any(r["workers"][1]["first_byte_ms"] is not None for r in records[resumed_at + 2:])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["exact_iterations"] == cfg.iterations


def test_master_crash_resumes_from_checkpoint_with_identical_parameters(tmp_path: Path) -> None:
    port = _free_port()
    cfg = job_config(tmp_path, code="nested:levels=0,1,2", iterations=24, checkpoint_every=3, port=port,
                     delay="shifted-exp:a=1,mu=4,unit_s=0.04")
    out = tmp_path
    with LocalCluster(cfg) as cluster:
        cluster.start_master()
        cluster.start_workers(reconnect_max_s=0.2)
        wait_for(lambda: len(read_records(out)) >= 8, 60, "8 iterations")
        assert cluster.master is not None and cluster.master.pid is not None
        cluster.master.kill()
        cluster.master.join(10)
        assert (out / "checkpoint.npz").exists()
        with np.load(out / "checkpoint.npz") as ckpt:
            resumed_from = int(ckpt["iteration"])
        assert resumed_from >= 6 and resumed_from % 3 == 0
        before = (out / "run.jsonl").read_bytes()
        cluster.start_master()                      # same port and run directory; workers reconnect alone
        assert cluster.wait_master(120) == 0
    records = read_records(out)
    assert [r["iteration"] for r in records] == list(range(cfg.iterations))
    # the run log was only appended to: everything before the crash is still there, then a resume marker
    after = (out / "run.jsonl").read_bytes()
    whole = before[:before.rfind(b"\n") + 1]
    assert after.startswith(whole)
    lines = [json.loads(line) for line in after[len(whole):].splitlines()]
    assert lines[0]["event"] == "resume" and lines[0]["from_iteration"] == resumed_from
    assert not any(line.get("event") for line in lines[1:])
    params = np.load(out / "params.npy")
    reference = centralized_params(cfg)
    assert np.linalg.norm(params - reference) <= 1e-9 * np.linalg.norm(reference)


def test_sigterm_checkpoints_and_the_workers_carry_on_with_the_restarted_master(tmp_path: Path) -> None:
    # Prepare: a long job; SIGTERM to the master (a container restart, a rolling update)
    cfg = job_config(tmp_path, iterations=60, checkpoint_every=0, port=_free_port(),
                     delay="shifted-exp:a=1,mu=4,unit_s=0.02")
    out = tmp_path
    with LocalCluster(cfg) as cluster:
        cluster.start_master()
        cluster.start_workers(reconnect_max_s=0.2)
        wait_for(lambda: len(read_records(out)) >= 3, 60, "3 iterations")
        assert cluster.master is not None
        cluster.master.terminate()
        assert cluster.wait_master(30) == 0
        summary = json.loads((out / "summary.json").read_text())
        with np.load(out / "checkpoint.npz") as ckpt:
            checkpointed = int(ckpt["iteration"])

        # Execute: the master comes back on the same port and run directory; nobody restarts the workers
        assert all(cluster.workers[slot].is_alive() for slot in range(cfg.workers))  # not told to exit
        cluster.start_master()
        rc = cluster.wait_master(120)
        for slot in range(cfg.workers):           # the finished job's Shutdown ends them
            cluster.workers[slot].join(30)
            assert cluster.workers[slot].exitcode == 0

    # Assert: the interruption checkpointed; the same workers finished the job, every iteration once
    assert summary["interrupted"] is True and summary["interrupted_by"] == "SIGTERM"
    assert checkpointed == summary["next_iteration"] >= 3
    assert rc == 0
    assert [r["iteration"] for r in read_records(out)] == list(range(cfg.iterations))
    params = np.load(out / "params.npy")
    reference = centralized_params(cfg)
    assert np.linalg.norm(params - reference) <= 1e-9 * np.linalg.norm(reference)


def test_restarting_a_completed_job_ends_at_once_and_keeps_its_results(tmp_path: Path) -> None:
    # Prepare: a finished job with a checkpoint at its last iteration
    cfg = job_config(tmp_path, iterations=4, checkpoint_every=2, join_timeout_s=120.0)
    with LocalCluster(cfg) as cluster:
        cluster.start_master()
        cluster.start_workers()
        assert cluster.wait_master(60) == 0
    params = np.load(tmp_path / "params.npy")
    files = {name: (tmp_path / name).read_bytes() for name in ("summary.json", "run.jsonl", "params.npy")}

    # Execute: the same master again, no workers (it must not wait out the 120 s join timeout)
    run = run_cli("master", *master_args(cfg), timeout_s=30)

    # Assert
    assert run.returncode == 0, run.stderr
    assert "is complete (iteration 4 of 4): nothing to run, its files stay as they are" in run.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["next_iteration"] == 4 and summary["exact_iterations"] == 4
    assert [r["iteration"] for r in read_records(tmp_path)] == [0, 1, 2, 3]
    np.testing.assert_array_equal(np.load(tmp_path / "params.npy"), params)
    assert {name: (tmp_path / name).read_bytes() for name in files} == files  # not one byte rewritten
