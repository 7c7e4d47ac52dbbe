"""A run directory on a filesystem that fills up: the job ends once, cleanly (exit 74, one line naming
the path and the errno), workers are told to stop, no temporary file stays, the last checkpoint is intact,
run.jsonl holds whole records only, and the run resumes exactly once space is back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import centralized_params, job_config, master_args, read_records, run_job

pytestmark = pytest.mark.slow


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", f"flexgc-test-{uuid.uuid4().hex[:6]}",
                          str(path)], capture_output=True, text=True, timeout=20)
    return run.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) to make a 96 KiB filesystem (a full disk)")
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "96k"):
        pytest.skip("this kernel refuses a tmpfs mount here (no full disk to test with)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=20)


def test_a_full_disk_ends_the_job_once_and_cleanly_then_it_resumes_exactly(small_disk: Path, tmp_path: Path) -> None:
    # Prepare: enough iterations that run.jsonl outgrows 96 KiB; a checkpoint every 4
    out = small_disk / "run"
    cfg = job_config(out, workers=2, code="crc:s=1", iterations=400, checkpoint_every=4, features=20, samples=80)

    # Execute: the master and two workers, as a user starts them
    master = subprocess.Popen([sys.executable, "-m", "flexgc", "master", *master_args(cfg), "--log-level", "WARNING"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers: list[subprocess.Popen[str]] = []
    try:
        assert master.stdout is not None
        port = json.loads(master.stdout.readline())["port"]
        workers = [subprocess.Popen([sys.executable, "-m", "flexgc", "worker", "--master", f"127.0.0.1:{port}",
                                     "--worker-id", f"w{i}", "--log-level", "WARNING"], stderr=subprocess.PIPE,
                                    text=True) for i in range(2)]
        _, stderr = master.communicate(timeout=120)
        worker_codes = [w.wait(30) for w in workers]
    finally:
        for child in [master, *workers]:
            if child.poll() is None:
                child.kill()
                child.wait(10)

    # Assert: exit 74 with one line naming the path and the errno; the workers were told to stop
    errors = [line for line in stderr.splitlines() if line.startswith("flexgc:")]
    assert master.returncode == 74, stderr
    assert "Traceback" not in stderr and len(errors) == 1, stderr
    assert f"cannot write {out}" in errors[0] and "[ENOSPC]" in errors[0] and "the disk is full" in errors[0]
    assert worker_codes == [0, 0]
    # the files are whole: no temporary file, whole records only, a checkpoint that loads
    assert not list(out.glob("*.tmp"))
    assert (out / "run.jsonl").read_bytes().endswith(b"\n")
    records = read_records(out)
    with np.load(out / "checkpoint.npz") as ckpt:
        saved_at = int(ckpt["iteration"])
    assert 0 < saved_at <= len(records) < cfg.iterations

    # Execute: space is back (the run moves to a roomy disk), and the same job resumes
    roomy = tmp_path / "roomy"
    shutil.copytree(out, roomy)
    cfg2 = job_config(roomy, workers=2, code="crc:s=1", iterations=400, checkpoint_every=4, features=20, samples=80)
    run_job(cfg2, timeout_s=180)

    # Assert: every iteration once, and the parameters of an uninterrupted run
    assert [r["iteration"] for r in read_records(roomy)] == list(range(cfg.iterations))
    params = np.load(roomy / "params.npy")
    reference = centralized_params(cfg2)
    assert np.linalg.norm(params - reference) <= 1e-9 * np.linalg.norm(reference)
