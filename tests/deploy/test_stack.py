"""Static validation of deploy/swarm/stack.yml, the Docker Swarm stack file: the Compose specification's
JSON schema (check-jsonschema), and `docker stack config`, which reads the file with the loader and schema
of `docker stack deploy` itself and interpolates the variables as a deploy would, without a daemon. The
resolved stack is checked for what Swarm needs (deploy/README.md, "Docker Swarm"). It is deployed for real
on a one-node swarm by tests/docker/test_swarm.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .test_static import DEPLOY, _check_compose_schema, _explain, _ok, _run, _unknown_env

STACK = DEPLOY / "swarm" / "stack.yml"


def _stack_config_unavailable() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return "no docker CLI on PATH (apt-get install docker.io)"
    probe = subprocess.run([docker, "stack", "config", "--help"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"{docker} has no `docker stack config` (Docker CLI >= 23); tests/docker/test_swarm.py deploys it"
    return None


def _stack_config(path: Path, variables: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    if reason := _stack_config_unavailable():
        pytest.skip(reason)
    return _run("docker", "stack", "config", "--compose-file", str(path), env=variables)


def _services(**variables: str) -> dict[str, Any]:
    result = _stack_config(STACK, variables)
    assert _ok(result), _explain(result)
    services: dict[str, Any] = yaml.safe_load(result.stdout)["services"]
    return services


def test_stack_file_matches_the_compose_schema() -> None:
    result = _check_compose_schema(STACK)
    assert _ok(result), _explain(result)


def test_stack_file_has_nothing_stack_deploy_refuses() -> None:
    # `docker stack deploy` knows neither `include` nor `depends_on`, and Docker 20.10's needs a version
    raw = yaml.safe_load(STACK.read_text())
    assert "include" not in raw and raw["version"].startswith("3.")
    assert all("depends_on" not in service for service in raw["services"].values())


def test_stack_resolves_to_a_master_by_name_and_workers_with_stable_ids() -> None:
    # Execute
    services = _services()
    master, worker = services["master"], services["worker"]

    # Assert: the master by its service name, without a virtual IP, ports as integers in host mode
    assert master["deploy"]["endpoint_mode"] == "dnsrr" and master["deploy"]["replicas"] == 1
    assert {(p["target"], p["published"], p["mode"]) for p in master["ports"]} == {(50051, 50051, "host"),
                                                                                  (9100, 9100, "host")}
    assert [v["target"] for v in master["volumes"] if v["type"] == "volume"] == ["/runs"]
    assert master["environment"]["FLEXGC_OUT"].startswith("/runs/")
    # n workers, each task's hostname (its slot 1..n, kept when Swarm reschedules it) its worker id
    assert worker["deploy"]["replicas"] == int(master["environment"]["FLEXGC_WORKERS"]) == 4
    assert worker["hostname"] == "worker-{{.Task.Slot}}" and "FLEXGC_WORKER_ID" not in worker["environment"]
    assert worker["environment"]["FLEXGC_MASTER"] == "master:50051"
    # a worker started after the job gives up, and is restarted a bounded number of times: the stack ends
    assert float(worker["environment"]["FLEXGC_JOIN_TIMEOUT_S"]) > 0
    for name, service in services.items():
        policy = service["deploy"]["restart_policy"]
        assert policy["condition"] == "on-failure" and 0 < policy["max_attempts"] <= 5, name
        assert service["init"] is True and service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        role = "master" if name == "master" else "worker"
        assert _unknown_env(role, service["environment"]) == [], f"{name}: not {role} options"


def test_stack_scales_with_one_variable_and_takes_ports_from_the_shell() -> None:
    services = _services(FLEXGC_WORKERS="9", FLEXGC_GRPC_HOST_PORT="15051", FLEXGC_METRICS_HOST_PORT="19100")
    assert services["worker"]["deploy"]["replicas"] == 9 and services["master"]["environment"]["FLEXGC_WORKERS"] == "9"
    assert {p["published"] for p in services["master"]["ports"]} == {15051, 19100}


@pytest.mark.parametrize(("old", "new", "finding"), [
    ("      endpoint_mode: dnsrr  # workers resolve", "      endpoint_mod: dnsrr  # workers resolve", "endpoint_mod"),
    ("        published: ${FLEXGC_GRPC_HOST_PORT:-50051}", "        published: ${FLEXGC_GRPC_HOST_PORT:-grpc}",
     "published"),
], ids=["misspelt-key", "port-not-an-integer"])
def test_stack_config_rejects_a_broken_stack_file(tmp_path: Path, old: str, new: str, finding: str) -> None:
    # Prepare
    text = STACK.read_text()
    if old not in text:
        raise AssertionError(f"test out of date: {old!r} is no longer in {STACK}")
    broken = tmp_path / "stack.yml"
    broken.write_text(text.replace(old, new))

    # Execute
    result = _stack_config(broken)

    # Assert
    assert not _ok(result) and finding in result.stderr, _explain(result)
