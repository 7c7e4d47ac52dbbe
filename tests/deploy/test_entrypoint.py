"""deploy/entrypoint.sh and deploy/healthcheck.sh, run here as the image runs them, around a stub `flexgc`.

The stub reports who it runs as (uid, capabilities, no_new_privs), so the tests check the privilege
drop for real; tc shaping runs in a network namespace the test makes and removes, and the healthcheck
runs in its own PID namespace so that it sees only the processes of the test. Needs root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ENTRYPOINT, HEALTHCHECK = str(DEPLOY / "entrypoint.sh"), str(DEPLOY / "healthcheck.sh")

# `flexgc health ...` prints its arguments and exits STUB_HEALTH_RC; any other role prints who runs it,
# then runs STUB_THEN (the healthcheck) while this process, `flexgc ROLE ...`, is still alive.
_STUB = """#!/bin/sh
if [ "$1" = health ]; then echo "stub: $*"; exit "${STUB_HEALTH_RC:-0}"; fi
caps=$(grep -E '^(CapEff|NoNewPrivs):' /proc/self/status | tr -d ':' | tr -s '\\t\\n' '= ')
echo "stub: role=$1 uid=$(id -u) gid=$(id -g) groups=$(id -G) $caps"
if [ -n "${STUB_THEN:-}" ]; then "$STUB_THEN"; exit $?; fi
"""

needs_root = pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0,
                                reason="needs root (Linux) to switch users and namespaces, as CI runs")


@pytest.fixture
def stub_path() -> Iterator[str]:
    """PATH with a stub `flexgc` first, in a world-readable directory (pytest's tmp_path is private to
    root, and the stub runs as uid 10001 too)."""
    with tempfile.TemporaryDirectory(prefix="fgc-stub-") as directory:
        stub = Path(directory) / "flexgc"
        stub.write_text(_STUB)
        stub.chmod(0o755)
        Path(directory).chmod(0o755)
        yield f"{directory}:{os.environ['PATH']}"


def _run(*args: str, env: dict[str, str], check: bool = False) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLEXGC_")}
    return subprocess.run(args, env={**clean, **env}, capture_output=True, text=True, timeout=30, check=check)


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace with a veth pair and a default route through veth fgc0, like a container's eth0."""
    if shutil.which("ip") is None or shutil.which("tc") is None:
        pytest.skip("needs iproute2 (ip, tc): apt-get install iproute2")
    name = f"fgc-eptest-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        for cmd in (["link", "add", "fgc0", "type", "veth", "peer", "name", "fgc1"],
                    ["addr", "add", "10.203.2.1/30", "dev", "fgc0"], ["link", "set", "fgc0", "up"],
                    ["link", "set", "fgc1", "up"], ["route", "add", "default", "via", "10.203.2.2"]):
            subprocess.run(["ip", "-n", name, *cmd], check=True, timeout=10, capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


@needs_root
def test_root_start_drops_to_uid_10001_without_capabilities(stub_path: str) -> None:
    # Execute
    result = _run(ENTRYPOINT, "worker", "--master", "m:50051", env={"PATH": stub_path})

    # Assert
    assert result.returncode == 0, result.stderr
    assert "role=worker uid=10001 gid=10001 groups=10001" in result.stdout
    assert "CapEff=0000000000000000" in result.stdout and "NoNewPrivs=1" in result.stdout


@needs_root
def test_root_start_applies_tc_from_the_environment_then_drops(stub_path: str, netns: str) -> None:
    # Execute: FLEXGC_TC_RATE alone (tbf) works on every kernel; the interface is the default route's
    result = _run("ip", "netns", "exec", netns, ENTRYPOINT, "worker",
                  env={"PATH": stub_path, "FLEXGC_TC_RATE": "20mbit", "FLEXGC_TC_DELAY": ""})
    qdisc = _run("ip", "netns", "exec", netns, "tc", "qdisc", "show", "dev", "fgc0", env={}, check=True).stdout

    # Assert
    assert result.returncode == 0, result.stderr
    assert "apply.sh: fgc0 shaped" in result.stdout and "role=worker uid=10001" in result.stdout
    assert "tbf 1: root" in qdisc and "rate 20Mbit" in qdisc


@needs_root
def test_tc_request_without_root_fails_before_flexgc_starts(stub_path: str) -> None:
    # Execute: the image's default user asked for shaping
    result = _run("setpriv", "--reuid=10001", "--regid=10001", "--clear-groups", ENTRYPOINT, "worker",
                  env={"PATH": stub_path, "FLEXGC_TC_DELAY": "50ms"})

    # Assert
    assert result.returncode == 4
    assert "runs as uid 10001; tc needs root with NET_ADMIN" in result.stderr and "role=" not in result.stdout


@needs_root
def test_non_root_start_runs_flexgc_directly(stub_path: str) -> None:
    # Execute
    result = _run("setpriv", "--reuid=10001", "--regid=10001", "--clear-groups", ENTRYPOINT, "master",
                  env={"PATH": stub_path})

    # Assert
    assert result.returncode == 0 and "role=master uid=10001" in result.stdout, result.stderr


def _healthcheck_as(stub_path: str, *flexgc_args: str, env: dict[str, str] | None = None
                    ) -> subprocess.CompletedProcess[str]:
    """Runs `flexgc ARGS` (the stub, which runs the healthcheck) alone in a new PID namespace."""
    return _run("unshare", "--pid", "--fork", "--mount-proc", "flexgc", *flexgc_args,
                env={"PATH": stub_path, "STUB_THEN": HEALTHCHECK, **(env or {})})


@needs_root
@pytest.mark.parametrize(("args", "env", "target"), [
    (("master",), {}, "127.0.0.1:50051"),
    (("--log-level", "DEBUG", "master", "--port", "5999"), {}, "127.0.0.1:5999"),
    (("master", "--port=6001", "--workers", "4"), {}, "127.0.0.1:6001"),
    (("master",), {"FLEXGC_PORT": "7000"}, "127.0.0.1:7000"),
], ids=["default-port", "port-option", "port-equals", "port-from-env"])
def test_healthcheck_asks_the_master_on_its_port(stub_path: str, args: tuple[str, ...], env: dict[str, str],
                                                  target: str) -> None:
    result = _healthcheck_as(stub_path, *args, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"stub: health --target {target} --timeout-s 2" in result.stdout


@needs_root
def test_healthcheck_reports_a_master_that_is_not_serving(stub_path: str) -> None:
    result = _healthcheck_as(stub_path, "master", env={"STUB_HEALTH_RC": "1"})
    assert result.returncode == 1, result.stdout + result.stderr


@needs_root
def test_healthcheck_counts_a_running_worker_as_healthy(stub_path: str) -> None:
    result = _healthcheck_as(stub_path, "worker", "--master", "master:50051")
    assert result.returncode == 0 and "stub: health" not in result.stdout, result.stdout + result.stderr


@needs_root
def test_healthcheck_fails_without_a_flexgc_process(stub_path: str) -> None:
    result = _run("unshare", "--pid", "--fork", "--mount-proc", HEALTHCHECK, env={"PATH": stub_path})
    assert result.returncode == 1 and "no 'flexgc master' or 'flexgc worker' process" in result.stderr
