"""`docker compose` passes every `FLEXGC_<OPTION>` to the role that reads it (README: "every
`FLEXGC_<OPTION>` comes from the shell or a `.env`"), except the few the compose file fixes for a reason."""

from __future__ import annotations

import json

import pytest

from flexgc.common.config import MASTER_OPTIONS, WORKER_OPTIONS
from tests.deploy.test_static import ROOT_COMPOSE, _compose_command, _explain, _ok, _run

# fixed by the compose file: the port mapping and the workers' FLEXGC_MASTER rely on the master's address; a
# replica's id is its hostname; a worker's join timeout, linger and TLS files share the master's names with
# another meaning (an override file sets them for the worker service)
FIXED = {"master": {"FLEXGC_HOST", "FLEXGC_PORT", "FLEXGC_OUT", "FLEXGC_METRICS_PORT", "FLEXGC_WORKERS"},
         "worker": {"FLEXGC_MASTER", "FLEXGC_WORKER_ID", "FLEXGC_SLOT", "FLEXGC_JOIN_TIMEOUT_S", "FLEXGC_LINGER",
                    "FLEXGC_TLS_CERT", "FLEXGC_TLS_KEY", "FLEXGC_TLS_CA"}}


@pytest.mark.parametrize("role", ["master", "worker"])
def test_every_option_set_in_the_shell_reaches_its_role(role: str) -> None:
    # Prepare: every option of the role set in the shell, each to a value of its own
    options = MASTER_OPTIONS if role == "master" else WORKER_OPTIONS
    shell = {o.env: f"value-of-{o.env.lower()}" for o in options if o.env not in FIXED[role]}

    # Execute
    result = _run(*_compose_command(), "-f", str(ROOT_COMPOSE), "config", "--format", "json", env=shell)

    # Assert: each arrives in the service's environment with its value
    assert _ok(result), _explain(result)
    environment = json.loads(result.stdout)["services"][role]["environment"]
    missing = sorted(name for name, value in shell.items() if environment.get(name) != value)
    assert missing == [], f"{role}: set in the shell, never reach the container: {', '.join(missing)}"


def test_the_worker_never_pulls_the_image_the_master_service_builds() -> None:
    # `up --build` asked a registry for the local tag while the build ran: an error on an offline machine
    result = _run(*_compose_command(), "-f", str(ROOT_COMPOSE), "config", "--format", "json", env={})
    assert _ok(result), _explain(result)
    services = json.loads(result.stdout)["services"]
    assert services["worker"]["pull_policy"] == "never" and services["worker"]["image"] == services["master"]["image"]
