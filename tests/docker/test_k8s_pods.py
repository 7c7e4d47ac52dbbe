"""The Indexed Job of deploy/k8s/overlays/job, run as Kubernetes would run its pods, in Docker.

No Kubernetes can run on these machines, so this runs what the manifests run: the overlay is rendered with
kustomize, and each pod of the Job becomes one container with what the kubelet would give it, read from the
rendered manifest: the container's command and args (entrypoint and command of `docker run`), its env, and
JOB_COMPLETION_INDEX (the Job controller's); the pod's hostname `<job>-<index>` and its DNS name
`<hostname>.<subdomain>` of the headless Service (a user-defined network with that alias); uid, gid and
fsGroup from the securityContext, a read-only root filesystem, the capabilities dropped, no privilege
escalation, the memory and CPU limits; the ConfigMap as read-only files, emptyDir as tmpfs, the PVC as a
named volume. What the Job controller decides is played by the test: every index started at once
(parallelism), a failed pod replaced by a new one under the same index (same hostname), the Job complete
when index 0 exits 0 (successPolicy), failed at once on the exit codes of its podFailurePolicy.

1. The job completes exactly: every iteration EXACT, the final parameters those of gradient descent, and a
   worker pod killed mid-job (SIGKILL, exit 137: retried, not in podFailurePolicy) and recreated under its
   index gets its slot back.
2. The master's exit codes are the ones podFailurePolicy fails the Job on: 2 for a configuration error, 74
   for a run volume that fills up.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flexgc.common.config import master_config
from tests.deploy.test_static import DEPLOY, _render, _yaml_documents
from tests.helpers import centralized_params, read_records

from .conftest import docker, wait_showing
from .test_containers import _worker_ids

pytestmark = [pytest.mark.docker, pytest.mark.timeout(240)]

OVERLAY = DEPLOY / "k8s" / "overlays" / "job"
# a job that takes 10-20 s here, long enough to kill a worker in the middle (as tests/docker/test_containers.py)
JOB = {"iterations": "100", "samples": "4000", "delay": '"shifted-exp:a=1,mu=4,unit_s=0.4"'}


def _set(toml: str, **values: str) -> str:
    """`toml` (one `key = value` per line) with the values of some keys replaced."""
    lines = toml.splitlines()
    for key, value in values.items():
        (i,) = [i for i, line in enumerate(lines) if line.split("=")[0].strip() == key]
        lines[i] = f"{key} = {value}"
    return "\n".join(lines) + "\n"


class IndexedJob:
    """The rendered Job's pods as containers (see the module docstring), on one network, with one run volume."""

    def __init__(self, image: str, tmp_path: Path, master_toml: Callable[[str], str] = lambda t: t) -> None:
        docs = _yaml_documents(_render(OVERLAY))
        (self.job,) = [d for d in docs if d["kind"] == "Job"]
        (service,) = [d for d in docs if d["kind"] == "Service"]
        (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
        self.pod = self.job["spec"]["template"]["spec"]
        (self.container,) = self.pod["containers"]
        assert service["metadata"]["name"] == self.pod["subdomain"]  # the names below exist only then
        # the master's run directory on the run volume (its environment sets it; the volume is at /runs)
        (out,) = [e["value"] for e in self.container["env"] if e["name"] == "FLEXGC_OUT"]
        self.run_dir = Path(out).relative_to("/runs")
        self.image = image
        self.name = f"fgck{os.getpid()}x{secrets.token_hex(3)}"
        self.config_dir = tmp_path / "configmap"
        self.config_dir.mkdir(parents=True)
        for key, text in config["data"].items():
            (self.config_dir / key).write_text(master_toml(text) if key == "master.toml" else text)
            (self.config_dir / key).chmod(0o644)
        self.config_dir.chmod(0o755)
        self.runs_tmpfs_bytes: int | None = None  # a run volume of this size instead of the named volume
        self.started: list[str] = []
        docker("network", "create", self.name)
        docker("volume", "create", self.name)

    @property
    def n(self) -> int:
        return int(self.job["spec"]["completions"]) - 1

    def hostname(self, index: int) -> str:
        return f"{self.job['metadata']['name']}-{index}"

    def container_name(self, index: int) -> str:
        return f"{self.name}-{index}"

    def fail_job_codes(self) -> set[int]:
        rules = self.job["spec"]["podFailurePolicy"]["rules"]
        return {v for r in rules if r["action"] == "FailJob" for v in r["onExitCodes"]["values"]}

    def _volume_args(self) -> list[str]:
        volumes = {v["name"]: v for v in self.pod["volumes"]}
        args: list[str] = []
        for mount in self.container["volumeMounts"]:
            volume, path = volumes[mount["name"]], mount["mountPath"]
            if "configMap" in volume:
                args += ["--volume", f"{self.config_dir}:{path}:ro"]
            elif "emptyDir" in volume:
                args += ["--tmpfs", f"{path}:mode=1777"]
            elif "persistentVolumeClaim" in volume and self.runs_tmpfs_bytes:  # owned by fsGroup, as a PVC is
                group = self.pod["securityContext"]["fsGroup"]
                args += ["--tmpfs", f"{path}:size={self.runs_tmpfs_bytes},uid={group},gid={group}"]
            elif "persistentVolumeClaim" in volume:
                args += ["--volume", f"{self.name}:{path}"]
            else:
                raise AssertionError(f"test out of date: volume {volume} of the Job is not emulated")
        return args

    def _env_args(self, index: int) -> list[str]:
        args = ["--env", f"JOB_COMPLETION_INDEX={index}"]
        for env in self.container.get("env", []):
            if "value" in env:
                args += ["--env", f"{env['name']}={env['value']}"]
            elif env.get("valueFrom", {}).get("secretKeyRef", {}).get("optional"):
                continue  # no such Secret here: Kubernetes leaves the variable unset
            else:
                raise AssertionError(f"test out of date: env {env} of the Job is not emulated")
        return args

    def argv(self, index: int) -> list[str]:
        """`docker run` of the pod with completion index `index`."""
        pod_security, security = self.pod["securityContext"], self.container["securityContext"]
        limits = self.container["resources"]["limits"]
        memory = limits["memory"].replace("Gi", "g").replace("Mi", "m")
        args = ["run", "--detach", "--name", self.container_name(index), "--hostname", self.hostname(index),
                "--network", self.name, "--network-alias", f"{self.hostname(index)}.{self.pod['subdomain']}",
                "--user", f"{pod_security['runAsUser']}:{pod_security['runAsGroup']}",
                "--group-add", str(pod_security["fsGroup"]), "--memory", memory, "--cpus", str(limits["cpu"]),
                *(["--read-only"] if security["readOnlyRootFilesystem"] else []),
                *[arg for cap in security["capabilities"]["drop"] for arg in ("--cap-drop", cap)],
                *(["--security-opt", "no-new-privileges"] if not security["allowPrivilegeEscalation"] else []),
                *self._volume_args(), *self._env_args(index)]
        command = self.container["command"]
        return [*args, "--entrypoint", command[0], self.image, *command[1:], *self.container.get("args", [])]

    def start(self, index: int) -> None:
        docker(*self.argv(index))
        self.started.append(self.container_name(index))

    def state(self, index: int) -> dict[str, Any]:
        (info,) = json.loads(docker("inspect", self.container_name(index)).stdout)
        return dict(info["State"])

    def wait_exit(self, index: int, timeout_s: float) -> int:
        result = docker("wait", self.container_name(index), timeout_s=timeout_s)
        return int(result.stdout.strip())

    def logs(self, index: int) -> str:
        result = docker("logs", self.container_name(index), check=False)
        return result.stdout + result.stderr

    def _run_path(self) -> Path:
        """The master's run directory, on this host (the tests run as root, like CI)."""
        mountpoint = docker("volume", "inspect", self.name, "--format", "{{.Mountpoint}}").stdout.strip()
        return Path(mountpoint) / self.run_dir

    def records(self) -> list[dict[str, Any]]:
        return read_records(self._run_path())

    def params(self) -> np.ndarray:
        return np.load(self._run_path() / "params.npy")

    def wait_for(self, condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
        return wait_showing(condition, timeout_s, what, lambda: self.logs(0))

    def remove(self) -> None:
        for name in self.started:
            docker("rm", "--force", name, timeout_s=60, check=False)
        docker("network", "rm", self.name, check=False)
        docker("volume", "rm", "--force", self.name, check=False)


@pytest.fixture
def indexed_job(flexgc_image: str, tmp_path: Path) -> Iterator[Callable[..., IndexedJob]]:
    made: list[IndexedJob] = []

    def make(**master_values: str) -> IndexedJob:
        job = IndexedJob(flexgc_image, tmp_path / f"job{len(made)}", lambda text: _set(text, **master_values))
        made.append(job)
        return job

    try:
        yield make
    finally:
        for job in made:
            job.remove()


def test_pods_run_the_job_exactly_and_a_recreated_worker_pod_gets_its_slot_back(
        indexed_job: Callable[..., IndexedJob]) -> None:
    # Prepare: every index at once, as parallelism = completions asks
    job = indexed_job(**JOB)
    iterations = int(JOB["iterations"])
    for index in range(job.n + 1):
        job.start(index)
    job.wait_for(lambda: len(job.records()) >= 5, 90, "5 iterations")

    # Execute: worker index 3 fails (SIGKILL: exit 137, which podFailurePolicy leaves to the per-index
    # retries); the Job controller removes it and starts a new pod under the same index and hostname
    victim = 3
    docker("kill", job.container_name(victim))
    killed = job.wait_for(lambda: (s := job.state(victim))["Status"] == "exited" and s, 30, "worker exited")
    docker("rm", job.container_name(victim))
    killed_at = len(job.records())
    job.start(victim)
    master_rc = job.wait_exit(0, timeout_s=180)
    worker_rcs = {index: job.wait_exit(index, timeout_s=60) for index in range(1, job.n + 1)}
    records = job.records()
    granted = _worker_ids(job.logs(0))

    # Assert: index 0 succeeded (what successPolicy needs), the workers ended by themselves
    assert master_rc == 0, job.logs(0)[-4000:]
    assert worker_rcs == dict.fromkeys(range(1, job.n + 1), 0), worker_rcs
    assert killed["ExitCode"] == 137 and 137 not in job.fail_job_codes()
    # every slot held by the pod of index slot + 1 (its hostname is its id); the killed one's twice
    assert sorted(granted) == list(range(job.n))
    assert all(set(ids) == {job.hostname(slot + 1)} for slot, ids in granted.items()), granted
    assert len(granted[victim - 1]) >= 2, granted
    assert any(r["workers"][victim - 1]["first_byte_ms"] is not None for r in records
               if r["iteration"] > killed_at + 3)
    # the job completed exactly
    assert sorted(r["iteration"] for r in records) == list(range(iterations))
    assert all(r["outcome"] == "EXACT" for r in records)
    cfg = master_config(workers=job.n, code="nested:levels=0,1,2,3", iterations=iterations, model="logistic",
                        samples=int(JOB["samples"]), features=100, dtype="float64")
    reference = centralized_params(cfg)
    assert np.linalg.norm(job.params() - reference) <= 1e-9 * np.linalg.norm(reference)


@pytest.mark.parametrize(("fault", "expected"), [("configuration", 2), ("storage", 74)])
def test_master_exit_code_is_one_pod_failure_policy_fails_the_job_on(
        indexed_job: Callable[..., IndexedJob], fault: str, expected: int) -> None:
    # Prepare: a master option with a value it does not allow; or a run volume of 16 KiB, which the
    # run log fills within a few iterations
    if fault == "configuration":
        job = indexed_job(**JOB, on_deadline='"sometimes"')
        indexes = [0]
    else:
        job = indexed_job(**JOB, checkpoint_every="0")
        job.runs_tmpfs_bytes = 16384
        indexes = list(range(job.n + 1))

    # Execute
    for index in indexes:
        job.start(index)
    rc = job.wait_exit(0, timeout_s=120)
    logs = job.logs(0)

    # Assert: the code the CLI documents, and one of those podFailurePolicy fails the Job on at once
    assert rc == expected, logs[-4000:]
    assert rc in job.fail_job_codes()
    message = {"configuration": "configuration error: on_deadline", "storage": "No space left on device"}[fault]
    assert message in logs, logs[-4000:]
