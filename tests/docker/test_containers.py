"""The image and the compose files for real: a Docker engine runs the master and the workers in containers
on the compose bridge network (.ci/setup-docker.sh starts one in CI).

1. `up --detach` then `wait master` runs the job to the end and returns the master's exit code; results on
   the named volume, copied out with `docker compose cp`; every replica has its own worker id (its
   container hostname). (`up --exit-code-from master` is racy: a worker that exits 0 after the master's
   Shutdown makes Compose stop the master, which may then exit 143.)
2. The slow-link override: one worker's uplink shaped by tc tbf inside its container; it is the straggler,
   every iteration decodes; the worker's flexgc process runs as uid 10001 with no capabilities.
3. SIGKILL of a worker's flexgc process inside its container: the restart policy brings the container back,
   the worker rejoins its slot, no iteration is lost or wrong.
4. SIGKILL of the master's process, then `docker compose restart` (SIGTERM): the master resumes from its
   checkpoint on the volume and ends with the parameters of uninterrupted gradient descent.
5. A worker with a wrong join token is refused and exits non-zero; no token appears in any log.
6. `up --scale worker=6` on a job started with 4 workers and FLEXGC_MAX_WORKERS=6: the running master takes
   the two new workers into the code (elastic growth), every iteration exact.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from flexgc.common.config import master_config
from tests.helpers import centralized_params

from .conftest import COMPOSE, SLOW_LINK, Project

pytestmark = [pytest.mark.docker, pytest.mark.timeout(240)]

N = 4
# about 0.1 s per partition: an iteration takes 0.1-0.3 s
JOB = {"FLEXGC_SAMPLES": "4000", "FLEXGC_DELAY": "shifted-exp:a=1,mu=4,unit_s=0.4"}


def _worker_ids(logs: str) -> dict[int, list[str]]:
    """slot -> the worker ids the master granted it, in order (its `joined slot=S worker_id=W` lines)."""
    out: dict[int, list[str]] = {}
    for line in logs.splitlines():
        if "flexgc.master" in line and " joined slot=" in line:
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            out.setdefault(int(fields["slot"]), []).append(fields["worker_id"])
    return out


def _status(project: Project, pid: int, service: str, index: int = 1) -> dict[str, str]:
    text = project.exec(service, f"cat /proc/{pid}/status", index, user="0")
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def test_image_is_small_and_runs_as_non_root_without_compiler_or_sources(flexgc_image: str) -> None:
    # Execute
    (info,) = json.loads(subprocess.run(["docker", "image", "inspect", flexgc_image], capture_output=True,
                                        text=True, timeout=30, check=True).stdout)
    probe = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--entrypoint", "sh", flexgc_image, "-c",
         "id -u; for t in gcc cc g++ make pip pip3; do command -v $t; done; ls -d /src /wheels /wheelhouse 2>&1; "
         "flexgc --version"], capture_output=True, text=True, timeout=60)

    # Assert
    assert info["Size"] <= 300e6, info["Size"]
    assert info["Config"]["User"] == "10001:10001"
    lines = probe.stdout.splitlines()
    assert lines[0] == "10001" and lines[-1].startswith("flexgc "), probe.stdout + probe.stderr
    assert all("No such file" in line for line in lines[1:-1]), probe.stdout  # no compiler, pip, sources


def test_up_runs_the_job_and_returns_the_master_exit_code(compose_project: Callable[..., Project],
                                                          tmp_path: Path) -> None:
    # Prepare
    project = compose_project(**JOB, FLEXGC_ITERATIONS="20")

    # Execute: the README's commands
    project.run("up", "--detach", timeout_s=120)
    wait = project.run("wait", "master", timeout_s=120, check=False)
    project.run("cp", "master:/runs/demo", str(tmp_path / "runs-demo"))
    records = project.records()
    summary = json.loads((tmp_path / "runs-demo" / "summary.json").read_text())
    containers = project.containers()

    # Assert: 20 exact iterations, the master's exit code 0 returned, results on the volume
    assert wait.returncode == 0 and "exited with status code 0" in wait.stdout, wait.stdout + wait.stderr
    assert {c["Service"]: c["ExitCode"] for c in containers} == {"master": 0, "worker": 0}
    assert sorted(r["iteration"] for r in records) == list(range(20))
    assert all(r["outcome"] == "EXACT" for r in records)
    assert summary["exact_iterations"] == 20 and summary["failed_iterations"] == 0
    # n replicas of one service, each its own worker id: its container's hostname (the short container id)
    workers = [c for c in containers if c["Service"] == "worker"]
    hostnames = {project.inspect(c["ID"])["Config"]["Hostname"] for c in workers}
    granted = _worker_ids(project.logs())
    assert len(workers) == N and len(hostnames) == N
    assert sorted(granted) == list(range(N)) and {ids[0] for ids in granted.values()} == hostnames


def test_shaped_worker_is_the_straggler_and_runs_without_capabilities(
        compose_project: Callable[..., Project]) -> None:
    # Prepare: the override as it is: worker-slow sends at 5 Mbit/s; d = 20000 float64 = 160 kB per coded
    # message, 256 ms on that link, while a partition takes about 50 ms: the three others decode level 1
    # (100 ms) long before its level-0 message is through
    project = compose_project(files=(COMPOSE, SLOW_LINK), FLEXGC_ITERATIONS="200",
                              FLEXGC_DELAY="shifted-exp:a=1,mu=1000,unit_s=0.2", FLEXGC_CHECKPOINT_EVERY="0")

    # Execute
    project.run("up", "--detach", "--wait", "master", timeout_s=120)
    project.run("up", "--detach", timeout_s=120)
    project.wait_for(lambda: len(project.records()) >= 8, 90, "8 iterations")
    pid = project.pid("worker-slow", "worker")
    status = _status(project, pid, "worker-slow")
    qdisc = project.exec("worker-slow", "tc -s qdisc show dev eth0")
    project.run("stop", "--timeout", "10", "master", timeout_s=60)  # SIGTERM: ends the job early, cleanly
    records = project.records()
    slot = next(s for s, ids in _worker_ids(project.logs()).items() if "worker-slow" in ids)

    # Assert: tc tbf in its own container, applied as root before flexgc started as uid 10001 with nothing
    assert "tbf 1: root" in qdisc and "rate 5Mbit" in qdisc, qdisc
    assert status["Uid"].split()[:2] == ["10001", "10001"], status
    assert status["CapEff"] == status["CapPrm"] == status["CapInh"] == "0000000000000000", status
    assert status["NoNewPrivs"] == "1", status
    # every iteration decoded; the shaped worker was left behind in nearly all of them
    assert len(records) >= 8 and all(r["outcome"] == "EXACT" for r in records)
    behind = sum(slot in r["stragglers"] for r in records)
    assert behind >= 0.8 * len(records), [r["stragglers"] for r in records]


def _kill(project: Project, service: str, role: str, index: int = 1, user: str | None = None) -> None:
    pid = project.pid(service, role, index)
    project.exec(service, f"kill -KILL {pid}", index, user=user)


def test_killed_worker_process_is_restarted_and_rejoins_its_slot(compose_project: Callable[..., Project]) -> None:
    # Prepare
    iterations = 60
    project = compose_project(**JOB, FLEXGC_ITERATIONS=str(iterations), FLEXGC_CHECKPOINT_EVERY="0")
    project.run("up", "--detach", timeout_s=120)
    project.wait_for(lambda: len(project.records()) >= 5, 90, "5 iterations")
    victim = next(c for c in project.containers() if c["Service"] == "worker" and c["Name"].endswith("-2"))
    hostname = project.inspect(victim["ID"])["Config"]["Hostname"]

    # Execute: SIGKILL of its flexgc process from inside (docker kill would count as a manual stop, which
    # the restart policy ignores)
    _kill(project, "worker", "worker", index=2, user="0")
    project.wait_for(lambda: project.inspect(victim["ID"])["RestartCount"] >= 1, 60, "container restarted")
    killed_at = len(project.records())
    rc = project.wait_exit("master", timeout_s=180)
    records = project.records()
    granted = _worker_ids(project.logs())

    # Assert: back in its slot (same worker id, granted again), and it delivered afterwards
    (slot,) = [s for s, ids in granted.items() if hostname in ids]
    assert granted[slot].count(hostname) >= 2, granted
    assert any(r["workers"][slot]["first_byte_ms"] is not None for r in records if r["iteration"] > killed_at + 3)
    # no iteration lost, none failed, and the parameters are gradient descent's: no wrong gradient entered
    assert rc == 0 and sorted(r["iteration"] for r in records) == list(range(iterations))
    assert all(r["outcome"] == "EXACT" for r in records)
    _assert_gradient_descent(project, iterations)


def _assert_gradient_descent(project: Project, iterations: int) -> None:
    """The final parameters are those of full-batch gradient descent on the compose file's job."""
    params = np.load(project.runs_dir() / "demo" / "params.npy")
    cfg = master_config(workers=N, code="nested:levels=0,1,2,3", iterations=iterations, model="logistic",
                        samples=int(JOB["FLEXGC_SAMPLES"]), features=100, dtype="float64")
    reference = centralized_params(cfg)
    assert np.linalg.norm(params - reference) <= 1e-9 * np.linalg.norm(reference)


def test_master_resumes_after_sigkill_and_restart_with_identical_parameters(
        compose_project: Callable[..., Project]) -> None:
    # Prepare
    iterations = 60
    project = compose_project(**JOB, FLEXGC_ITERATIONS=str(iterations), FLEXGC_CHECKPOINT_EVERY="5")
    project.run("up", "--detach", timeout_s=120)
    (master,) = [c for c in project.containers() if c["Service"] == "master"]
    project.wait_for(lambda: len(project.records()) >= 12, 90, "12 iterations")

    # Execute: SIGKILL (the restart policy restarts it), then `docker compose restart` (SIGTERM: checkpoint)
    _kill(project, "master", "master")
    project.wait_for(lambda: project.inspect(master["ID"])["RestartCount"] >= 1, 60, "master restarted")
    resumed_at = project.wait_for(lambda: _resumed(project), 90, "master resumed from its checkpoint")
    project.wait_for(lambda: len(project.records()) >= resumed_at + 10, 90, "10 iterations after the resume")
    # the master alone: stopped with SIGTERM it checkpoints and does not tell its workers to exit; they
    # reconnect to the restarted master, which resumes the job
    project.run("restart", "master", timeout_s=120)
    rc = project.wait_exit("master", timeout_s=180)
    records = project.records()
    logs = project.logs()

    # Assert: two resumes from the checkpoint on the volume, the job completed, gradient descent's result
    assert rc == 0, logs[-4000:]
    assert logs.count("resumed") >= 2, logs[-4000:]
    assert sorted({r["iteration"] for r in records}) == list(range(iterations))
    assert all(r["outcome"] == "EXACT" for r in records)
    _assert_gradient_descent(project, iterations)


def _resumed(project: Project) -> int | None:
    """The iteration the restarted master resumed at, once its log says so."""
    for line in project.run("logs", "--no-color", "master", check=False).stdout.splitlines():
        if "resumed" in line and "iteration=" in line:
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            return int(fields["iteration"])
    return None


def test_wrong_token_is_refused_and_no_token_is_logged(compose_project: Callable[..., Project]) -> None:
    # Prepare: master and workers share a token; one more worker brings another
    right, wrong = "right-token-3f9a2c", "wrong-token-7b41d0"
    project = compose_project(**JOB, FLEXGC_ITERATIONS="10", FLEXGC_TOKEN=right)

    # Execute
    project.run("up", "--detach", timeout_s=120)
    intruder = project.run("run", "--rm", "--no-deps", "-e", f"FLEXGC_TOKEN={wrong}", "worker", timeout_s=90,
                           check=False)
    rc = project.wait_exit("master", timeout_s=120)
    logs = project.logs() + intruder.stdout + intruder.stderr
    files = {p.name: p.read_text(errors="replace") for p in (project.runs_dir() / "demo").glob("*.json*")}

    # Assert: refused (exit 2, UNAUTHENTICATED), the job done with the right token, no token anywhere
    assert intruder.returncode == 2, intruder.stdout[-2000:] + intruder.stderr[-2000:]
    assert "UNAUTHENTICATED" in logs or "token" in logs.lower()
    assert rc == 0 and json.loads(files["summary.json"])["exact_iterations"] == 10
    for text in (logs, *files.values()):
        assert right not in text and wrong not in text


def test_a_job_grows_when_workers_are_scaled_up_to_max_workers(compose_project: Callable[..., Project]) -> None:
    # Prepare: 4 workers, room for 6 (the README's `--scale worker=6`)
    iterations = 80
    project = compose_project(**JOB, FLEXGC_ITERATIONS=str(iterations), FLEXGC_CHECKPOINT_EVERY="0",
                              FLEXGC_MAX_WORKERS="6")
    project.run("up", "--detach", timeout_s=120)
    project.wait_for(lambda: len(project.records()) >= 5, 90, "5 iterations")
    master = next(c["ID"] for c in project.containers() if c["Service"] == "master")

    # Execute
    project.run("up", "--detach", "--scale", "worker=6", timeout_s=120)
    def grown() -> list[dict]:
        events = project.events("plan")
        return events if sum(e["reason"].count("taken in") for e in events) >= 2 else []
    plans = project.wait_for(grown, 120, "both new workers taken in")
    rc = project.wait_exit("master", timeout_s=180)
    records = project.records()

    # Assert: the same master (not recreated), both new slots working after the last take-in, every
    # iteration exact, the parameters gradient descent's
    assert master in {c["ID"] for c in project.containers() if c["Service"] == "master"}
    assert rc == 0 and sorted(r["iteration"] for r in records) == list(range(iterations))
    assert all(r["outcome"] == "EXACT" for r in records)
    after = [r for r in records if r["iteration"] >= plans[-1]["iteration"]]
    assert after and all(r["workers"][slot]["task_sent_ms"] is not None for r in after for slot in (4, 5))
    params = np.load(project.runs_dir() / "demo" / "params.npy")
    cfg = master_config(workers=N, max_workers=6, code="nested:levels=0,1,2,3", iterations=iterations,
                        model="logistic", samples=int(JOB["FLEXGC_SAMPLES"]), features=100, dtype="float64")
    reference = centralized_params(cfg)
    assert np.linalg.norm(params - reference) <= 1e-9 * np.linalg.norm(reference)

