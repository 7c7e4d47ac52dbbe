"""flexgc.harness.tc: the namespace harness shapes links with the deploy/tc scripts the entrypoint runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flexgc.harness import tc
from flexgc.harness.errors import HarnessError, NetemUnavailableError

TC_DIR = Path(__file__).resolve().parents[2] / "deploy" / "tc"


def test_shaping_reads_the_entrypoint_variables() -> None:
    env = {"FLEXGC_TC_RATE": "20mbit", "FLEXGC_TC_DELAY": "", "FLEXGC_TC_BURST": "64kb", "FLEXGC_TC_LOSS": "1%",
           "FLEXGC_TC_QUEUE_LATENCY": "5ms"}  # not an entrypoint variable: ignored
    shaping = tc.Shaping.from_env(env)
    assert shaping == tc.Shaping(rate="20mbit", burst="64kb", loss="1%")
    assert shaping.args() == ["--rate", "20mbit", "--burst", "64kb", "--loss", "1%"]
    assert tc.Shaping.from_env({"FLEXGC_TC_RATE": ""}) is None


def test_find_tc_dir_names_where_it_looked(tmp_path: Path) -> None:
    assert tc.find_tc_dir([tmp_path, TC_DIR]) == TC_DIR
    with pytest.raises(HarnessError, match=rf"not in {tmp_path}, /opt/flexgc/tc.*--tc-dir"):
        tc.find_tc_dir([tmp_path])


@pytest.fixture
def namespace() -> Iterator[str]:
    """A namespace with a veth pair (v0, v1), removed in finally."""
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None:
        pytest.skip("needs root (Linux) and iproute2 to make a network namespace, as CI runs")
    name = f"fgc-tcmod-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        for cmd in (["link", "add", "v0", "type", "veth", "peer", "name", "v1"], ["link", "set", "v0", "up"]):
            subprocess.run(["ip", "-n", name, *cmd], check=True, timeout=10, capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


def _qdiscs(ns: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev", "v0"], capture_output=True,
                          text=True, check=True, timeout=10).stdout


@pytest.mark.netns
def test_apply_and_clear_run_the_scripts(namespace: str) -> None:
    # Execute
    report = tc.apply(TC_DIR, namespace, "v0", tc.Shaping(rate="20mbit"))
    shaped = _qdiscs(namespace)
    tc.clear(TC_DIR, namespace, "v0")

    # Assert: apply.sh's tbf, with its default bucket (10 ms of the rate, at least 32 KiB)
    assert "v0 shaped" in report and "tbf 1: root" in shaped and "rate 20Mbit" in shaped
    assert "tbf" not in _qdiscs(namespace)


@pytest.mark.netns
def test_script_errors_become_harness_errors(namespace: str) -> None:
    with pytest.raises(HarnessError, match=r"exited 2: .*--rate 'fast' is not valid"):
        tc.apply(TC_DIR, namespace, "v0", tc.Shaping(rate="fast"))
    try:
        tc.apply(TC_DIR, namespace, "v0", tc.Shaping(delay="20ms"))
    except NetemUnavailableError as exc:  # a kernel without sch_netem (these VMs): exit code 3
        assert "no sch_netem" in str(exc)
    else:
        assert "netem" in _qdiscs(namespace)
