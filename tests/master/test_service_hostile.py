"""A hostile client against a real master process: what an unauthenticated caller can make it hold.

The token is checked from the call's metadata before any message is read (the servicer's interceptor):
unauthenticated Work streams never have a message parsed, so their payload never reaches Python, and
nothing of a refused call stays referenced afterwards.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from flexgc.common import wire
from flexgc.v1 import coordinator_pb2 as pb
from tests.master.test_service_fuzz import D, Master, Stream, rejected, result, status_of, workerless_master

BIG = 15 << 20  # below gRPC's 16 MiB server receive limit: it reaches the master


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@pytest.fixture
def master(tmp_path: Path) -> Iterator[Master]:
    yield from workerless_master(tmp_path)


def _unauthenticated_streams(m: Master, count: int) -> list[grpc.StatusCode]:
    codes = []
    big = result(pb.ResultChunk(iteration=0, slot=0, level=0, dtype="<f8", total_elements=D, offset=0,
                                data=b"\x00" * BIG, last=True))
    for _ in range(count):
        stream = Stream(m.stub, token="not-the-token")
        try:
            stream.send(big)
            codes.append(stream.status()[0])
        finally:
            stream.close()
    return codes


@pytest.mark.slow
def test_200_unauthenticated_15_mib_messages_leave_the_masters_memory_where_it_was(master: Master) -> None:
    # Prepare: warm up gRPC's buffers and the allocator with a few refused streams, then take the baseline
    assert master.cluster.master is not None and master.cluster.master.pid is not None
    pid = master.cluster.master.pid
    assert set(_unauthenticated_streams(master, 8)) == {grpc.StatusCode.UNAUTHENTICATED}
    rss_before, refused_before = rss_mb(pid), rejected(master.metrics_port, "AuthError")

    # Execute: 200 streams, 8 at a time, each sending one 15 MiB ResultChunk without the token
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = [c for batch in pool.map(lambda _: _unauthenticated_streams(master, 25), range(8)) for c in batch]
    rss_after = rss_mb(pid)

    # Assert: every one refused and counted; no garbage collection was asked for, and none was needed
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 200
    assert rejected(master.metrics_port, "AuthError") == refused_before + 200
    assert rss_after - rss_before < 50, f"RSS {rss_before:.0f} -> {rss_after:.0f} MB"
    master.assert_up()


@pytest.mark.slow
def test_unauthenticated_large_joins_are_refused_unparsed(master: Master) -> None:
    # Prepare
    pid = master.cluster.master.pid if master.cluster.master is not None else None
    assert pid is not None
    huge = pb.JoinRequest(worker_id="x" * BIG, preferred_slot=-1)
    status_of(lambda: master.stub.Join(huge, timeout=30, metadata=wire.token_metadata("guess")))
    rss_before = rss_mb(pid)

    # Execute
    codes = [status_of(lambda: master.stub.Join(huge, timeout=30, metadata=wire.token_metadata("guess")))[0]
             for _ in range(20)]

    # Assert
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 20
    assert rss_mb(pid) - rss_before < 50
    master.assert_up()
