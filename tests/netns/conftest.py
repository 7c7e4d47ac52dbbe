"""Fixtures for the namespace cluster tests: a factory of running `NetnsCluster`s, removed in `finally`.

The tests skip only when the harness cannot work here at all (not Linux, not root, no iproute2, or the
kernel refuses namespaces, veth pairs, bridges or tbf), with `probe()`'s reason in the skip message.
CI runs as root, so they run there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flexgc import netns

_log = logging.getLogger(__name__)

TEST_PREFIX = "fgct"  # test runs: `python -m flexgc.netns down --prefix fgct` removes what a killed run left


@pytest.fixture(scope="session")
def netns_capabilities() -> netns.Capabilities:
    caps = netns.probe()
    if caps.reason is not None:
        pytest.skip(f"namespace cluster unavailable: {caps.reason}")
    # runs of earlier sessions whose pytest was killed (their harness pid is gone); live ones are kept
    for tag in netns.down(TEST_PREFIX):
        _log.warning("removed leftover namespace run tag=%s", tag)
    return caps


@pytest.fixture
def netns_cluster(netns_capabilities: netns.Capabilities, tmp_path: Path
                  ) -> Iterator[Callable[..., netns.NetnsCluster]]:
    """`make(variables=..., env=..., start=True)`: a cluster built (and by default started) from
    deploy/docker-compose.yml; every cluster made is stopped and removed when the test ends."""
    made: list[netns.NetnsCluster] = []

    def make(*, start: bool = True, **kwargs: Any) -> netns.NetnsCluster:
        cluster = netns.NetnsCluster(run_dir=tmp_path / f"run{len(made)}", prefix=TEST_PREFIX, **kwargs)
        made.append(cluster)
        cluster.create()
        if start:
            cluster.start(timeout_s=60)
        return cluster

    with netns.sigterm_as_interrupt():  # a CI timeout's SIGTERM still removes the namespaces
        try:
            yield make
        finally:
            for cluster in reversed(made):
                cluster.close()
            left = [ns for c in made for ns in c.topology.namespaces if ns in netns.list_namespaces()]
            assert not left, f"namespaces left behind: {left}"
