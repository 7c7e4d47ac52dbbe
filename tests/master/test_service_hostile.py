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
from flexgc.master.service import SERVICE_NAME
from flexgc.v1 import coordinator_pb2 as pb
from tests.master.test_service_fuzz import TOKEN, D, Master, Stream, rejected, result, status_of, workerless_master

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
    # Prepare: bytes that are no JoinRequest at all (0xff is no valid field tag), sent as a Join: parsing them
    # fails, so a refusal that parsed first could not answer UNAUTHENTICATED. The control: with the token
    # they are parsed, and refused for that
    raw = master.channel.unary_unary(f"/{SERVICE_NAME}/Join", request_serializer=None, response_deserializer=None)
    garbage = b"\xff" * BIG
    assert status_of(lambda: raw(b"\xff" * 64, timeout=30, metadata=wire.token_metadata(TOKEN)))[0] not in (
        grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED)
    pid = master.cluster.master.pid if master.cluster.master is not None else None
    assert pid is not None
    # warm up gRPC's receive buffers and the allocator's arenas (freed memory stays mapped under dev.sh's
    # malloc settings, so the first calls raise RSS to a plateau whatever the handler does)
    for _ in range(10):
        status_of(lambda: raw(garbage, timeout=30, metadata=wire.token_metadata("guess")))
    rss_before = rss_mb(pid)

    # Execute
    codes = [status_of(lambda: raw(garbage, timeout=30, metadata=wire.token_metadata("guess")))[0]
             for _ in range(40)]

    # Assert: never parsed (else not UNAUTHENTICATED), and nothing of them kept: holding even one in
    # seven of the 40 messages would add 90 MB
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 40
    assert rss_mb(pid) - rss_before < 90, f"RSS {rss_before:.0f} -> {rss_mb(pid):.0f} MB"
    master.assert_up()
