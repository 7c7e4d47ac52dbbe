"""deploy/swarm/stack.yml for real: `docker stack deploy` of the file as it is, on a one-node swarm
(`docker swarm init --advertise-addr 127.0.0.1`, left again at the end when this test made it).

The job runs to the end with every iteration EXACT and gradient descent's parameters, although one worker
task is killed mid-job (`docker kill`: SIGKILL, exit 137): Swarm's restart policy starts a new task in the
same slot, whose hostname `worker-<slot>` is the worker id the master knows, so it rejoins its slot; the
master's metrics port, published in host mode, answers on this node meanwhile. Then a
worker task started after the job has ended (the service scaled up by one) gives up joining after
FLEXGC_JOIN_TIMEOUT_S and is restarted only max_attempts times: the stack completes. Services, network and
volume are removed in `finally`.

It skips only when the engine has no swarm mode to give (`docker swarm init` fails, or the node is in a
state this test cannot use), with the reason.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flexgc.common.config import master_config
from tests.helpers import centralized_params, read_records, wait_for

from .conftest import ROOT, docker, wait_showing
from .test_containers import JOB, _worker_ids

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

STACK = ROOT / "deploy" / "swarm" / "stack.yml"
N = 4
ITERATIONS = 100
# the workers' FLEXGC_JOIN_TIMEOUT_S here: long enough for the master to start on a loaded machine (the tasks
# start together), short enough that the late worker's four attempts after the job take about a minute
JOIN_TIMEOUT_S = 15


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def swarm(flexgc_image: str) -> Iterator[None]:
    """A swarm this engine is a manager of: its own, or one made here and left again at the end."""
    state = docker("info", "--format", "{{.Swarm.LocalNodeState}}/{{.Swarm.ControlAvailable}}").stdout.strip()
    # `swarm init` makes the bridge docker_gwbridge and `swarm leave` keeps it: removed too when made here
    gwbridge = docker("network", "ls", "--quiet", "--filter", "name=^docker_gwbridge$").stdout.strip()
    made = False
    if state.startswith("inactive"):
        init = docker("swarm", "init", "--advertise-addr", "127.0.0.1", check=False)
        if init.returncode != 0:
            pytest.skip(f"this Docker engine has no swarm mode to give: docker swarm init failed: "
                        f"{init.stderr.strip()[:300]}")
        made = True
    elif state != "active/true":
        pytest.skip(f"this engine is in swarm state {state!r} (LocalNodeState/ControlAvailable); the test needs "
                    "a manager, or no swarm at all (it then makes a one-node one)")
    try:
        yield
    finally:
        if made:
            docker("swarm", "leave", "--force", timeout_s=120, check=False)
            if not gwbridge:
                docker("network", "rm", "docker_gwbridge", check=False)


class Stack:
    """One `docker stack deploy` of deploy/swarm/stack.yml under a unique name."""

    def __init__(self, image: str, **variables: str) -> None:
        self.name = f"fgcs{os.getpid()}x{secrets.token_hex(3)}"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("FLEXGC_")}
        self.env = {**clean, "FLEXGC_IMAGE": image, **variables}
        self.deployed = False

    def deploy(self) -> None:
        self.deployed = True
        docker("stack", "deploy", "--resolve-image", "never", "--compose-file", str(STACK), self.name,
                env=self.env, timeout_s=120)

    def tasks(self, service: str) -> list[dict[str, Any]]:
        """Every task of the service (`docker inspect`: Slot, DesiredState, Status.State, ContainerStatus)."""
        ids = docker("service", "ps", "--quiet", "--no-trunc", f"{self.name}_{service}").stdout.split()
        if not ids:
            return []
        return list(json.loads(docker("inspect", *ids).stdout))

    def slot_tasks(self, service: str, slot: int) -> list[dict[str, Any]]:
        """The tasks of one slot, oldest first."""
        return sorted((t for t in self.tasks(service) if t["Slot"] == slot), key=lambda t: t["CreatedAt"])

    def logs(self, service: str) -> str:
        result = docker("service", "logs", "--raw", f"{self.name}_{service}", check=False, timeout_s=60)
        return result.stdout + result.stderr

    def volume_path(self) -> Path:
        result = docker("volume", "inspect", f"{self.name}_runs", "--format", "{{.Mountpoint}}", check=False)
        return Path(result.stdout.strip()) if result.returncode == 0 else Path("/nonexistent")

    def records(self) -> list[dict[str, Any]]:
        return read_records(self.volume_path() / "demo")

    def wait_for(self, condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
        return wait_showing(condition, timeout_s, what, lambda: self.logs('master'))

    def remove(self) -> None:
        """`docker stack rm`, then wait (bounded) until its services, containers and network are gone, and
        remove its volume."""
        if not self.deployed:
            return
        docker("stack", "rm", self.name, check=False, timeout_s=120)
        label = f"label=com.docker.stack.namespace={self.name}"

        def gone() -> bool:
            return not any(docker(*kind, "--quiet", "--filter", label, check=False).stdout.strip()
                           for kind in (("service", "ls"), ("ps", "--all"), ("network", "ls")))

        try:
            wait_for(gone, 120, f"stack {self.name} removed", interval_s=0.5)
        finally:
            docker("volume", "rm", "--force", f"{self.name}_runs", check=False)


@pytest.fixture
def stack(swarm: None, flexgc_image: str) -> Iterator[Callable[..., Stack]]:
    made: list[Stack] = []

    def make(**variables: str) -> Stack:
        made.append(Stack(flexgc_image, **variables))
        return made[-1]

    try:
        yield make
    finally:
        for one in made:
            one.remove()


def _state(task: dict[str, Any]) -> str:
    return str(task["Status"]["State"])


def _exit_code(task: dict[str, Any]) -> int | None:
    code = (task["Status"].get("ContainerStatus") or {}).get("ExitCode")
    return None if code is None else int(code)


def test_stack_deploy_runs_the_job_and_a_killed_worker_task_rejoins_its_slot(stack: Callable[..., Stack]) -> None:
    # Prepare
    metrics_port = _free_port()
    job = stack(FLEXGC_WORKERS=str(N), FLEXGC_ITERATIONS=str(ITERATIONS), FLEXGC_SAMPLES=JOB["FLEXGC_SAMPLES"],
                FLEXGC_DELAY=JOB["FLEXGC_DELAY"], FLEXGC_GRPC_HOST_PORT=str(_free_port()),
                FLEXGC_METRICS_HOST_PORT=str(metrics_port), FLEXGC_WORKER_JOIN_TIMEOUT_S=str(JOIN_TIMEOUT_S))

    # Execute: deploy, kill the container of worker slot 2 once 5 iterations are done, wait for the end
    t0 = time.monotonic()
    job.deploy()
    job.wait_for(lambda: job.records(), 120, "the first decoded iteration")
    first_s = time.monotonic() - t0
    job.wait_for(lambda: len(job.records()) >= 5, 90, "5 iterations")
    # (a worker that started long before the master may have given up once and be back: wait for slot 2's)
    (victim,) = job.wait_for(lambda: "worker-2" in str(_worker_ids(job.logs("master")))
                             and [t for t in job.slot_tasks("worker", 2) if _state(t) == "running"], 60,
                             "worker-2 joined and its task running")
    # the published metrics port (host mode) answers on this node
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    docker("kill", victim["Status"]["ContainerStatus"]["ContainerID"])
    killed_at = len(job.records())
    (master,) = job.wait_for(lambda: [t for t in job.tasks("master") if _state(t) in ("complete", "failed")],
                             180, "the master's task ended")
    done_s = time.monotonic() - t0
    workers_done = job.wait_for(
        lambda: all(_state(job.slot_tasks("worker", s)[-1]) == "complete" for s in range(1, N + 1)), 60,
        "every worker slot's last task complete")
    records = job.records()
    granted = _worker_ids(job.logs("master"))
    print(f"swarm: deploy to the first decoded iteration {first_s:.1f} s, to the master's exit {done_s:.1f} s "
          f"({ITERATIONS} iterations)")

    # Assert: the master's task ended with exit 0, every worker slot's last task too
    assert "flexgc_iteration_latency_seconds_bucket" in metrics
    assert _state(master) == "complete" and _exit_code(master) == 0, job.logs("master")[-4000:]
    assert workers_done
    # the killed task failed (137) and Swarm started a new one in its slot, which rejoined the same slot
    slot2 = {t["ID"]: t for t in job.slot_tasks("worker", 2)}  # oldest first
    last = list(slot2.values())[-1]
    assert _exit_code(slot2[victim["ID"]]) == 137 and last["ID"] != victim["ID"] and _exit_code(last) == 0, slot2
    assert sorted(granted) == list(range(N)) and all(len(set(ids)) == 1 for ids in granted.values()), granted
    assert {ids[0] for ids in granted.values()} == {f"worker-{s}" for s in range(1, N + 1)}
    (rejoined,) = [slot for slot, ids in granted.items() if ids[0] == "worker-2"]
    assert len(granted[rejoined]) >= 2, granted
    assert any(r["workers"][rejoined]["first_byte_ms"] is not None for r in records
               if r["iteration"] > killed_at + 3)
    # the job, exactly: every iteration EXACT, gradient descent's parameters
    assert sorted(r["iteration"] for r in records) == list(range(ITERATIONS))
    assert all(r["outcome"] == "EXACT" for r in records)
    cfg = master_config(workers=N, code="nested:levels=0,1,2,3", iterations=ITERATIONS, model="logistic",
                        samples=int(JOB["FLEXGC_SAMPLES"]), features=100, dtype="float64")
    reference = centralized_params(cfg)
    params = np.load(job.volume_path() / "demo" / "params.npy")
    assert np.linalg.norm(params - reference) <= 1e-9 * np.linalg.norm(reference)

    # Execute: a worker task started after the job (the service scaled up by one)
    docker("service", "scale", "--detach", f"{job.name}_worker={N + 1}")
    attempts = 1 + 3  # the first task and the stack file's max_attempts restarts
    late = job.wait_for(lambda: (ts := job.slot_tasks("worker", N + 1)) and len(ts) == attempts
                        and all(_state(t) == "failed" for t in ts) and ts, attempts * (JOIN_TIMEOUT_S + 20),
                        "the late worker's tasks all failed")

    # Assert: each gave up joining (exit 1) and Swarm stopped restarting it: no task of the stack runs
    assert [_exit_code(t) for t in late] == [1] * attempts
    assert "giving up: no join" in job.logs("worker")
    assert not [t for t in job.tasks("worker") + job.tasks("master") if _state(t) not in ("complete", "failed")]
