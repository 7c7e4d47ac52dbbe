"""Fixtures for the container tests: the flexgc image built once per session, and `compose_project`, a
factory of Compose projects with unique names whose containers, networks and volumes are removed in
`finally`.

The tests skip only when no engine is there at all (no docker CLI, no daemon answering, no Compose v2, or
.ci/setup-docker.sh said why: FLEXGC_DOCKER_UNAVAILABLE), with the reason in the skip message. In CI,
.ci/setup-docker.sh starts dockerd and makes an offline base image (FLEXGC_DOCKER_BASE_IMAGE): the image is
then built from it and deploy/wheelhouse/ with no network at all.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
SLOW_LINK = ROOT / "deploy" / "compose.slow-link.yml"
PREFIX = "fgcd"  # project names: fgcd<pid>x<hex>; `docker compose ls` shows any left behind
# A shell snippet run inside a container: the pid of its `flexgc ROLE` process (the bracket keeps the
# pattern from matching this shell's own command line)
# the loop's status is its last grep's: `true` at the end, or a match followed by a non-match fails the exec
FIND_PID = ('for d in /proc/[0-9]*; do tr "\\0" " " <"$d/cmdline" 2>/dev/null | grep -q "bin/flexg[c] {role}" '
            '&& echo "${{d#/proc/}}"; done; true')


@cache
def unavailable() -> str | None:
    """Why no container engine can run the tests here (None: one can)."""
    if reason := os.environ.get("FLEXGC_DOCKER_UNAVAILABLE"):
        return reason
    if shutil.which("docker") is None:
        return "no docker CLI (apt-get install docker.io; .ci/setup-docker.sh does it in CI)"
    info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                          timeout=30)
    if info.returncode != 0:
        return (f"no Docker daemon answers at {os.environ.get('DOCKER_HOST', 'the default socket')} "
                f"({info.stderr.strip()[:200]}); start dockerd, or run .ci/run, which starts one")
    version = subprocess.run(["docker", "compose", "version", "--short"], capture_output=True, text=True,
                             timeout=30)
    if version.returncode != 0 or not version.stdout.strip().lstrip("v").startswith("2"):
        return "no Docker Compose v2 plugin (docker compose version failed); .ci/setup-docker.sh installs it"
    return None


def build_env() -> dict[str, str]:
    """Variables of the image build: offline from CI's local base image and deploy/wheelhouse/, or (for a
    developer with Docker Hub and PyPI) the Dockerfile's defaults."""
    base = os.environ.get("FLEXGC_DOCKER_BASE_IMAGE")
    if not base:
        return {}
    return {"FLEXGC_PYTHON_IMAGE": base, "FLEXGC_PIP_OFFLINE": "1", "FLEXGC_BUILD_NETWORK": "none"}


def docker(*args: str, timeout_s: float = 60, check: bool = True,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`docker ARGS`, its output captured; AssertionError with its stderr when it fails and `check`."""
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout_s, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {result.returncode}: {result.stderr[-2000:]}")
    return result


def wait_showing(condition: Callable[[], Any], timeout_s: float, what: str, logs: Callable[[], str]) -> Any:
    """tests.helpers.wait_for, polling every 0.2 s; on a timeout the message ends with the tail of `logs()`."""
    from tests.helpers import wait_for

    try:
        return wait_for(condition, timeout_s, what, interval_s=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{logs()[-4000:]}") from None


class Project:
    """One Compose project (`docker compose -p NAME -f FILE...`), with the environment it is run with."""

    def __init__(self, name: str, files: Sequence[Path], variables: dict[str, str], env_file: Path) -> None:
        self.name = name
        self.files = list(files)
        # the caller's FLEXGC_* settings must not change the job; ports on any free host port
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("FLEXGC_", "COMPOSE_"))}
        self.env = {**clean, "FLEXGC_IMAGE": image_tag(), "FLEXGC_GRPC_HOST_PORT": "", "FLEXGC_METRICS_HOST_PORT": "",
                    **variables}
        self.env_file = env_file

    def argv(self, *args: str) -> list[str]:
        files = [a for f in self.files for a in ("-f", str(f))]
        return ["docker", "compose", "-p", self.name, *files, "--env-file", str(self.env_file), *args]

    def run(self, *args: str, timeout_s: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.argv(*args), env=self.env, capture_output=True, text=True, timeout=timeout_s,
                                cwd=ROOT)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout[-3000:]}\n"
                                 f"{result.stderr[-3000:]}")
        return result

    def exec(self, service: str, script: str, index: int = 1, user: str | None = None) -> str:
        """Run a shell script in a running container of `service` (replica `index`); its stdout."""
        args = ["exec", "-T", "--index", str(index), *(["--user", user] if user else []), service, "sh", "-c", script]
        return self.run(*args, timeout_s=30).stdout

    def pid(self, service: str, role: str, index: int = 1) -> int:
        (pid,) = self.exec(service, FIND_PID.format(role=role), index).split()
        return int(pid)

    def containers(self) -> list[dict[str, Any]]:
        out = self.run("ps", "-a", "--format", "json").stdout.strip()
        rows = json.loads(out) if out.startswith("[") else [json.loads(line) for line in out.splitlines() if line]
        return list(rows)

    def inspect(self, container: str) -> dict[str, Any]:
        result = subprocess.run(["docker", "inspect", container], capture_output=True, text=True, timeout=30,
                                check=True)
        (info,) = json.loads(result.stdout)
        return dict(info)

    def wait_exit(self, service: str, timeout_s: float) -> int:
        """The exit code of the service's (only) container once it has exited and is not being restarted."""
        (container,) = [c["ID"] for c in self.containers() if c["Service"] == service]

        def exited() -> dict[str, Any] | None:
            state = dict(self.inspect(container)["State"])
            return state if state["Status"] == "exited" else None

        return int(self.wait_for(exited, timeout_s, f"{service} exited")["ExitCode"])

    def logs(self) -> str:
        return self.run("logs", "--no-color", timeout_s=60, check=False).stdout

    def runs_dir(self) -> Path:
        """The named volume `runs` on this host (the tests run as root, like CI)."""
        result = subprocess.run(["docker", "volume", "inspect", f"{self.name}_runs", "--format", "{{.Mountpoint}}"],
                                capture_output=True, text=True, timeout=30, check=True)
        return Path(result.stdout.strip())

    def _log(self, run: str) -> list[dict[str, Any]]:
        """Every whole line of the master's run.jsonl so far (a torn last line is skipped)."""
        try:
            lines = (self.runs_dir() / run / "run.jsonl").read_text().splitlines()
        except (FileNotFoundError, subprocess.CalledProcessError):
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def records(self, run: str = "demo") -> list[dict[str, Any]]:
        """The iteration records of the master's run.jsonl so far (not a plan switch or a resume marker)."""
        return [r for r in self._log(run) if "iteration" in r and "event" not in r]

    def events(self, kind: str, run: str = "demo") -> list[dict[str, Any]]:
        """The run log's `kind` events so far (e.g. "plan": an adaptive plan switch)."""
        return [r for r in self._log(run) if r.get("event") == kind]

    def wait_for(self, condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout_s} s\n{self.logs()[-4000:]}")
            time.sleep(0.2)

    def down(self) -> None:
        self.run("down", "--volumes", "--remove-orphans", "--timeout", "5", timeout_s=120, check=False)


@cache
def image_tag() -> str:
    return f"flexgc:test-{os.getpid()}"


@pytest.fixture(scope="session")
def flexgc_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The image, built once per session with `docker compose build` (BuildKit through Compose; the
    docker CLI first on PATH may have no buildx), removed at the end."""
    if reason := unavailable():
        pytest.skip(f"docker unavailable: {reason}")
    env_file = tmp_path_factory.mktemp("docker") / "empty.env"
    env_file.write_text("")
    project = Project(f"{PREFIX}{os.getpid()}build", [COMPOSE], build_env(), env_file)
    t0 = time.monotonic()
    project.run("build", "master", timeout_s=900)
    print(f"image {image_tag()} built in {time.monotonic() - t0:.1f} s")
    try:
        yield image_tag()
    finally:
        subprocess.run(["docker", "image", "rm", "-f", image_tag()], capture_output=True, timeout=60)


@pytest.fixture
def compose_project(flexgc_image: str, tmp_path: Path) -> Iterator[Callable[..., Project]]:
    """`make(files=..., **variables)`: a project with a unique name; every one made is taken down (containers,
    networks, volumes) when the test ends, also when it fails."""
    made: list[Project] = []
    env_file = tmp_path / "empty.env"  # a developer's .env beside compose.yaml must not change the job
    env_file.write_text("")

    def make(files: Sequence[Path] = (COMPOSE,), **variables: str) -> Project:
        project = Project(f"{PREFIX}{os.getpid()}x{secrets.token_hex(3)}", files, variables, env_file)
        made.append(project)
        return project

    try:
        yield make
    finally:
        for project in made:
            project.down()
