"""Fixtures for the harness tests: the repository's compose file, and a factory of running `NetnsCluster`s
removed in `finally`.

The namespace tests skip only when the harness cannot work here at all (not Linux, not root, no iproute2,
or the kernel refuses namespaces, veth pairs, bridges or tbf), with `probe()`'s reason in the skip
message. CI runs as root, so they run there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flexgc.harness import topology
from flexgc.harness.cluster import NetnsCluster
from flexgc.harness.processes import sigterm_as_interrupt

_log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
SLOW_LINK = ROOT / "deploy" / "compose.slow-link.yml"
TEST_PREFIX = "fgct"  # test runs: `flexgc netns down --prefix fgct` removes what a killed run left


@pytest.fixture
def empty_env_file(tmp_path: Path) -> Path:
    """An empty .env, so that a developer's own .env beside compose.yaml cannot change what a test runs."""
    path = tmp_path / "empty.env"
    path.write_text("")
    return path


@pytest.fixture(scope="session")
def netns_capabilities() -> topology.Capabilities:
    caps = topology.probe()
    if caps.reason is not None:
        pytest.skip(f"namespace cluster unavailable: {caps.reason}")
    # runs of earlier sessions whose pytest was killed (their harness pid is gone); live ones are kept
    for tag in topology.down(TEST_PREFIX):
        _log.warning("removed leftover namespace run tag=%s", tag)
    return caps


@pytest.fixture
def netns_cluster(netns_capabilities: topology.Capabilities, tmp_path: Path, empty_env_file: Path
                  ) -> Iterator[Callable[..., NetnsCluster]]:
    """`make(variables=..., env=..., start=True)`: a cluster built (and by default started) from the
    repository's compose.yaml; every cluster made is stopped and removed when the test ends."""
    made: list[NetnsCluster] = []

    def make(*, start: bool = True, files: list[Path] | None = None, **kwargs: Any) -> NetnsCluster:
        kwargs.setdefault("variables", {})
        cluster = NetnsCluster(files or [COMPOSE], run_dir=tmp_path / f"run{len(made)}", prefix=TEST_PREFIX,
                               env_file=empty_env_file, **kwargs)
        made.append(cluster)
        cluster.create()
        if start:
            cluster.start(timeout_s=60)
        return cluster

    with sigterm_as_interrupt():  # a CI timeout's SIGTERM still removes the namespaces
        try:
            yield make
        finally:
            for cluster in reversed(made):
                cluster.close()
            left = [ns for c in made for ns in c.topology.namespaces if ns in topology.list_namespaces()]
            assert not left, f"namespaces left behind: {left}"
