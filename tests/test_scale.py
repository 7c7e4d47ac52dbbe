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
