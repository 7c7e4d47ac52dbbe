"""flexgc.netns without namespaces: compose interpolation and loading, the contract with
deploy/docker-compose.yml, rate and size parsing, and the command line's usage. Needs no root."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flexgc import netns


@pytest.mark.parametrize(("text", "variables", "expected"), [
    ("${A:-x}", {}, "x"),
    ("${A:-x}", {"A": ""}, "x"),
    ("${A-x}", {"A": ""}, ""),
    ("${A-x}", {"A": "v"}, "v"),
    ("${A:+alt}", {"A": "v"}, "alt"),
    ("${A:+alt}", {}, ""),
    ("${A:-${B:-y}}", {}, "y"),
    ("${A:-${B:-y}}", {"B": "b"}, "b"),
    ("a$$b $A ${A}", {"A": "1"}, "a$b 1 1"),
    ("nested:levels=0,1,2", {}, "nested:levels=0,1,2"),
])
def test_interpolate_follows_compose(text: str, variables: dict[str, str], expected: str) -> None:
    assert netns.interpolate(text, variables) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("${A:?set A}", "required variable A is not set: set A"),
    ("${A", "unterminated"),
    ("${}", "invalid interpolation"),
    ("a $1", "invalid '$'"),
])
def test_interpolate_errors_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(netns.ComposeError, match=message.replace("$", r"\$")):
        netns.interpolate(text, {}, "where")


def test_load_compose_merges_overrides_and_passes_unset_variables_through(tmp_path: Path) -> None:
    # Prepare
    base = tmp_path / "base.yml"
    base.write_text(
        "x-env: &env\n  FLEXGC_MASTER: master:50051\n  FLEXGC_TOKEN:\n"
        "services:\n"
        "  master:\n    command: flexgc master --port ${PORT:-50051}\n"
        "    environment:\n      FLEXGC_WORKERS: ${N:-2}\n      FLEXGC_VERIFY: true\n"
        "  w:\n    command: [worker]\n    environment:\n      <<: *env\n      FLEXGC_SLOT: '0'\n"
        "  side:\n    command: [sleep, '1']\n"
        "    environment: [A=1, FLEXGC_TOKEN]\n")
    override = tmp_path / "override.yml"
    override.write_text("services:\n  w:\n    environment:\n      FLEXGC_TC_RATE: ${RATE:-5mbit}\n")

    # Execute
    plain = netns.load_compose([base, override], {"N": "4"})
    with_token = netns.load_compose([base], {"FLEXGC_TOKEN": "s3cret"})

    # Assert
    assert plain["master"].command == ("master", "--port", "50051") and plain["master"].role == "master"
    assert dict(plain["master"].environment) == {"FLEXGC_WORKERS": "4", "FLEXGC_VERIFY": "true"}
    assert dict(plain["w"].environment) == {"FLEXGC_MASTER": "master:50051", "FLEXGC_SLOT": "0",
                                            "FLEXGC_TC_RATE": "5mbit"}
    assert plain["side"].role == "other" and dict(plain["side"].environment) == {"A": "1"}
    assert with_token["w"].environment["FLEXGC_TOKEN"] == "s3cret"
    assert with_token["side"].environment["FLEXGC_TOKEN"] == "s3cret"


def test_load_compose_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("services: [1, 2]\n")
    with pytest.raises(netns.ComposeError, match=r"bad\.yml: no `services:` mapping"):
        netns.load_compose(bad, {})
    with pytest.raises(netns.ComposeError, match="cannot read"):
        netns.load_compose(tmp_path / "missing.yml", {})


def test_deploy_compose_file_fits_the_harness() -> None:
    # the contract: one master service, workers with distinct slots that dial the master by service name
    services = netns.load_compose(netns.DEFAULT_COMPOSE, {})
    masters = [s for s in services.values() if s.role == "master"]
    workers = [s for s in services.values() if s.role == "worker"]
    assert len(masters) == 1 and workers, services
    slots = [w.environment.get("FLEXGC_SLOT") for w in workers]
    assert len(set(slots)) == len(workers), slots
    for w in workers:
        host = w.environment.get("FLEXGC_MASTER", "").rpartition(":")[0]
        assert host == masters[0].name, (w.name, w.environment)
    assert masters[0].environment.get("FLEXGC_WORKERS") == str(len(workers))


@pytest.mark.parametrize(("rate", "bits"), [
    ("20mbit", 20_000_000), ("1gbit", 10**9), ("500kbit", 500_000), ("10mbps", 80_000_000),
    ("1mibit", 1 << 20), (5e6, 5_000_000), ("64000bit", 64_000), ("2000", 2000),
])
def test_parse_rate_uses_tc_units(rate: str | float, bits: int) -> None:
    assert netns.parse_rate(rate) == bits


@pytest.mark.parametrize("rate", ["fast", "20m", "0mbit", "-5mbit"])
def test_parse_rate_rejects_nonsense(rate: str) -> None:
    with pytest.raises(ValueError, match="rate="):
        netns.parse_rate(rate)


@pytest.mark.parametrize(("size", "n_bytes"), [("65536", 65536), ("64kb", 65536), ("32k", 32768),
                                               ("1mb", 1 << 20), ("512kbit", 65536), (1000, 1000)])
def test_parse_size(size: str | int, n_bytes: int) -> None:
    assert netns.parse_size(size) == n_bytes


def test_cluster_refuses_unknown_services_and_bad_prefixes() -> None:
    with pytest.raises(netns.ComposeError, match="not in the compose file"):
        netns.NetnsCluster(services=["master", "nope"], variables={})
    with pytest.raises(netns.ComposeError, match="exactly one master"):
        netns.NetnsCluster(services=["worker-0"], variables={})
    with pytest.raises(ValueError, match="prefix="):
        netns.NetnsCluster(prefix="Bad-Prefix", variables={})


def test_cli_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        netns.main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    for command in ("up", "down", "list", "run", "shape", "partition", "heal", "probe"):
        assert re.search(rf"\n +{command} ", out), (command, out)
    assert netns.main([]) == 2
