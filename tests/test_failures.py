"""A failure during training ends the job fast, in one line that says why, with exit 1 (through the CLI):
a model that raises or returns a wrong shape, a training that diverges, workers that never come."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import one_line_error, read_records, run_cli

pytestmark = pytest.mark.slow

MODEL_ENV = {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def _run_job(tmp_path: Path, master: list[str], workers: int, broken: tuple[int, ...] = (),
             worker_args: tuple[str, ...] = (), timeout_s: float = 90.0) -> tuple[int, str, list[tuple[int, str]]]:
    """`flexgc master MASTER...` and `workers` workers (those in `broken` with FLEXGC_TEST_BROKEN=1); the
    master's exit code and stderr, and each worker's."""
    return _run_job_env(tmp_path, {}, master, workers, broken, worker_args, timeout_s)


def _run_job_env(tmp_path: Path, extra_env: dict[str, str], master: list[str], workers: int,
                 broken: tuple[int, ...] = (), worker_args: tuple[str, ...] = (),
                 timeout_s: float = 90.0) -> tuple[int, str, list[tuple[int, str]]]:
    """As `_run_job`, with `extra_env` in every process's environment."""
    env = {**os.environ, **MODEL_ENV, **extra_env}
    proc = subprocess.Popen([sys.executable, "-m", "flexgc", "master", "--port", "0", "--out", str(tmp_path / "run"),
                             "--checkpoint-every", "0", *master], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    children: list[subprocess.Popen[str]] = []
    try:
        assert proc.stdout is not None
        port = json.loads(proc.stdout.readline())["port"]
        for i in range(workers):
            children.append(subprocess.Popen(
                [sys.executable, "-m", "flexgc", "worker", "--master", f"127.0.0.1:{port}", "--worker-id", f"w{i}",
                 "--model-modules", "tests", "--join-timeout-s", "30", *worker_args],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                env={**env, "FLEXGC_TEST_BROKEN": "1" if i in broken else "0"}))
        _, err = proc.communicate(timeout=timeout_s)
        results = [(w.wait(30), w.communicate()[1]) for w in children]
    finally:
        for child in [proc, *children]:
            if child.poll() is None:
                child.kill()
            child.wait(10)
    return proc.returncode, err, results


def _last_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("flexgc:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(("fail", "says"), [
    ("raise", "ValueError: boom from the user's model"),
    ("shape", "ModelOutputError: loss_and_grad returned a gradient of shape (5,)"),
])
def test_a_model_that_fails_on_every_worker_ends_the_job_at_once(tmp_path: Path, fail: str, says: str) -> None:
    started = time.monotonic()

    rc, err, workers = _run_job(tmp_path, ["--workers", "3", "--code", "crc:s=1", "--iterations", "50",
                                           "--model", f"tests.failing_models:build,fail={fail}", "--samples", "60",
                                           "--features", "6", "--deadline-s", "120"], workers=3)

    # Assert: long before the 120 s deadline, one line naming a worker, the model and the exception
    assert time.monotonic() - started < 60
    assert rc == 1, err
    assert "Traceback" not in err, err
    line = _last_line(err)
    assert "training failed:" in line and "workers cannot compute the model" in line, line
    assert f"model tests.failing_models:build,fail={fail}: {says}" in line, line
    assert "worker w" in line
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["failure"] in line
    for code, werr in workers:
        assert "Traceback" not in werr, werr
        assert code in (0, 1), werr  # 1: it failed itself; 0: the master ended the job first
    assert any(code == 1 and says in werr for code, werr in workers), workers


def test_a_model_that_fails_on_one_worker_makes_it_dead_and_the_job_finishes(tmp_path: Path) -> None:
    rc, err, workers = _run_job(tmp_path, ["--workers", "3", "--code", "crc:s=1", "--iterations", "4",
                                           "--model", "tests.failing_models:build,fail=env", "--samples", "60",
                                           "--features", "6", "--deadline-s", "120", "--log-level", "WARNING"],
                                workers=3, broken=(1,))

    assert rc == 0, err
    errors = [line for line in err.splitlines() if " ERROR " in line]
    assert len(errors) == 1, err
    assert "worker_id=w1" in errors[0] and "ValueError: boom from the user's model" in errors[0]
    assert "treated as dead" in errors[0]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["exact_iterations"] == 4 and summary["failure"] is None
    assert workers[1][0] == 1 and "Traceback" not in workers[1][1]
    assert workers[0][0] == 0 and workers[2][0] == 0


def test_a_diverging_training_ends_with_the_iteration_and_the_loss(tmp_path: Path) -> None:
    started = time.monotonic()

    rc, err, workers = _run_job(tmp_path, ["--workers", "2", "--code", "crc:s=1", "--iterations", "2000",
                                           "--model", "least-squares", "--lr", "50", "--samples", "60",
                                           "--features", "6", "--deadline-s", "120"], workers=2)

    assert time.monotonic() - started < 60
    assert rc == 1, err
    assert "Traceback" not in err
    line = _last_line(err)
    assert line.startswith("flexgc: training diverged at iteration "), line
    assert "(loss=" in line
    assert "deadline iteration=" not in err
    assert all(code == 0 and "Traceback" not in werr for code, werr in workers), workers


def test_a_master_whose_workers_never_come_exits_naming_how_many_joined(tmp_path: Path) -> None:
    started = time.monotonic()

    run = run_cli("master", "--workers", "4", "--code", "crc:s=1", "--port", "0", "--iterations", "100",
                  "--join-timeout-s", "1", "--deadline-s", "30", "--out", str(tmp_path / "run"))

    assert time.monotonic() - started < 25  # not one iteration per --deadline-s
    assert run.returncode == 1, run.stderr
    line = _last_line(run.stderr)
    assert "only 0 of 4 workers joined within --join-timeout-s=1" in line, line
    assert "an exact decode needs at least 3" in line, line
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(("fail", "says"), [
    ("init", "init_params(0) raised OSError: no such checkpoint: weights.npy"),
    ("init-shape", "init_params(0) returned shape (6,); need (5,) finite floats"),
])
def test_a_model_whose_init_params_fails_ends_the_master_in_one_line(tmp_path: Path, fail: str, says: str) -> None:
    run = run_cli("master", "--workers", "2", "--port", "0", "--iterations", "3", "--features", "5",
                  "--model", f"tests.failing_models:build,fail={fail}", "--out", str(tmp_path / "run"),
                  env=MODEL_ENV)

    line = one_line_error(run, 1, "model='tests.failing_models:build,fail=", says)
    assert line.startswith("flexgc: "), line


def test_the_masters_flexgc_delay_is_not_every_workers_override(tmp_path: Path) -> None:
    # Prepare: one environment for master and workers (a shared .env, a Kubernetes ConfigMap) with FLEXGC_DELAY;
    # the master's command line says --delay none, which is what job.json records
    slow = "shifted-exp:a=1,mu=1000,unit_s=0.5"

    rc, err, _ = _run_job_env(tmp_path, {"FLEXGC_DELAY": slow},
                              ["--workers", "2", "--code", "crc:s=1", "--iterations", "2", "--delay", "none",
                               "--samples", "40", "--features", "3"], workers=2)

    # Assert: the workers ran the recorded job (no injected delay), not FLEXGC_DELAY as their own override
    assert rc == 0, err
    assert json.loads((tmp_path / "run" / "job.json").read_text())["delay"] == "none"
    delays = [ms for r in read_records(tmp_path / "run") for w in r["workers"] for ms in w["delay_ms"]]
    assert delays and max(delays) < 250, delays
    help_text = run_cli("worker", "--help").stdout
    assert "FLEXGC_WORKER_DELAY" in help_text


def test_a_finished_job_with_failed_iterations_started_again_exits_0_and_touches_nothing(tmp_path: Path) -> None:
    # Prepare: a job whose every iteration fails (its one worker never answers): exit 1, as documented
    job = ["--workers", "1", "--code", "uncoded", "--iterations", "2", "--deadline-s", "0.5", "--samples", "20",
           "--features", "3", "--checkpoint-every", "1"]  # the checkpoint says the job is complete
    rc, err, _ = _run_job_env(tmp_path, {"FLEXGC_WORKER_DELAY": "none/dead:workers=0"}, job, workers=1)
    assert rc == 1, err
    files = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}

    # Execute: what a restart policy (compose: on-failure) does with the master's container
    again = run_cli("master", "--port", "0", "--out", str(tmp_path / "run"), *job)

    # Assert: nothing to run is no failure (else the policy restarts it again and again), and nothing changed
    assert again.returncode == 0, again.stderr
    assert "is complete (iteration 2 of 2): nothing to run" in again.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()} == files
