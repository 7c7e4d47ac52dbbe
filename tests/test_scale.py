"""Many worker slots per process: n = 256 slots in four worker processes run a whole job exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flexgc.harness.local import LocalCluster
from tests.helpers import centralized_params, job_config, read_records

pytestmark = pytest.mark.slow


def test_256_slots_in_four_processes_train_exactly(tmp_path: Path) -> None:
    # Prepare: nested FRC (cond <= 2 at any n), 2 rows per partition, a short job
    cfg = job_config(tmp_path, workers=256, code="nested-frc:groups=1,2,4", iterations=4, samples=512, features=4,
                     join_timeout_s=120.0, deadline_s=60.0)
    procs: list[subprocess.Popen[bytes]] = []
    with LocalCluster(cfg) as cluster:
        try:
            cluster.start_master()

            # Execute: 4 processes of 64 slots each (ids p<j>-0 .. p<j>-63)
            procs = [subprocess.Popen([sys.executable, "-m", "flexgc", "worker", "--master", cluster.target,
                                       "--worker-id", f"p{j}", "--slots", "64", "--log-level", "WARNING"])
                     for j in range(4)]
            rc = cluster.wait_master(300)
            codes = [p.wait(60) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(10)

    # Assert: every iteration decoded exactly, every slot worked, the parameters of centralized GD
    assert rc == 0 and codes == [0, 0, 0, 0]
    records = read_records(tmp_path)
    assert [r["outcome"] for r in records] == ["EXACT"] * cfg.iterations
    assert all(w["task_sent_ms"] is not None for r in records for w in r["workers"])
    params = np.load(tmp_path / "params.npy")
    reference = centralized_params(cfg)
    assert np.linalg.norm(params - reference) <= 1e-9 * np.linalg.norm(reference)


def test_slots_of_one_process_serve_their_injected_delays_side_by_side(tmp_path: Path) -> None:
    # Prepare: 8 slots in one process, each delayed 0.25 s per iteration (model A, a = 1, no spread), uncoded:
    # with the compute pool's 2 threads serving the delays, the last slot would start 3 delays late
    delay_s = 0.25
    cfg = job_config(tmp_path, workers=8, code="uncoded", iterations=3, samples=400, features=4,
                     delay=f"shifted-exp:a=1,mu=1e9,unit_s={8 * delay_s}")
    with LocalCluster(cfg) as cluster:
        cluster.start_master()
        cluster.start_workers(per_process=8)
        rc = cluster.wait_master(120)

    # Assert: exact, every slot's first chunk within one delay of what it waited (not a queue of delays)
    assert rc == 0
    records = read_records(tmp_path)
    assert [r["outcome"] for r in records] == ["EXACT"] * cfg.iterations
    for r in records[1:]:  # iteration 0 includes the threads' start
        for w in r["workers"]:
            waited_ms = sum(w["delay_ms"])
            assert waited_ms == pytest.approx(delay_s * 1e3, rel=0.2), w
            queued_ms = w["first_byte_ms"] - w["task_sent_ms"] - waited_ms - sum(w["compute_ms"])
            assert queued_ms < delay_s * 1e3, (r["iteration"], w["slot"], queued_ms)
    params = np.load(tmp_path / "params.npy")
    reference = centralized_params(cfg)
    assert np.linalg.norm(params - reference) <= 1e-12 * np.linalg.norm(reference)
