"""flexgc.harness.delayproxy on loopback: a round trip through it takes up + down delay plus a small overhead,
the delay pipelines (throughput is not divided by it), its buffer is bounded, and the CLI works.

Timing checks use medians of a few dozen round trips and generous bounds (a 2-core VM, other tests).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from flexgc.harness.delayproxy import DelayProxy, ProxyConfig

ROUND_TRIPS = 25


def _upper_ms(delays_ms: float) -> float:
    """Measured overhead on an idle 2-core VM: 0.4-0.8 ms. The bound leaves room for a loaded machine
    (with a CPU hog beside the suite the median overhead reached ~6 ms)."""
    return 1.25 * delays_ms + 10.0


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except ConnectionError:
        pass
    finally:
        writer.close()


@asynccontextmanager
async def _echo_server() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def _median_rtt_ms(port: int, n: int = ROUND_TRIPS) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        rtts = []
        for _ in range(n):
            t0 = time.perf_counter()
            writer.write(b"x")
            await writer.drain()
            await asyncio.wait_for(reader.readexactly(1), 5)
            rtts.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(rtts)
    finally:
        writer.close()


@pytest.mark.parametrize(("up_ms", "down_ms"), [(5, 5), (20, 20), (30, 0)])
def test_round_trip_is_up_plus_down_delay(up_ms: float, down_ms: float) -> None:
    async def main() -> tuple[float, float]:
        async with _echo_server() as port:
            cfg = ProxyConfig("127.0.0.1", port, up_ms / 1e3, down_ms / 1e3)
            async with DelayProxy(cfg) as proxy:
                return await _median_rtt_ms(port), await _median_rtt_ms(proxy.port)

    # Execute
    direct_ms, proxied_ms = asyncio.run(main())

    # Assert: never less than the delays; at most a few ms more
    assert direct_ms < 10.0, direct_ms  # loopback itself: ~0.1 ms idle; a bound for a busy CI runner
    assert 0.98 * (up_ms + down_ms) <= proxied_ms < _upper_ms(up_ms + down_ms), (proxied_ms, direct_ms)


def test_delay_pipelines_bulk_transfers() -> None:
    # Prepare: 8 MiB echoed through 20 ms each way; per-chunk serialization would take 128 x 40 ms
    n_bytes, delay_s = 8 << 20, 0.020

    async def main() -> tuple[float, int]:
        async with _echo_server() as port, DelayProxy(ProxyConfig("127.0.0.1", port, delay_s, delay_s)) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            t0 = time.perf_counter()

            async def send() -> None:
                writer.write(bytes(n_bytes))
                await writer.drain()
                writer.write_eof()

            sender = asyncio.ensure_future(send())
            received = len(await asyncio.wait_for(reader.read(), 20))  # to EOF: the half-close came through
            await sender
            writer.close()
            return time.perf_counter() - t0, received

    # Execute
    elapsed_s, received = asyncio.run(main())

    # Assert
    assert received == n_bytes
    assert 2 * delay_s <= elapsed_s < 2.5, elapsed_s  # ~0.1 s idle; chunk-by-chunk delaying would take 5 s


def test_buffer_is_bounded_when_the_target_does_not_read() -> None:
    # Prepare: a target that accepts and never reads; the client writes until it blocks (bounded in time)
    limit = 256 << 10

    async def main() -> int:
        stalled: list[asyncio.StreamWriter] = []

        async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            stalled.append(writer)

        server = await asyncio.start_server(sink, "127.0.0.1", 0)
        port = int(server.sockets[0].getsockname()[1])
        cfg = ProxyConfig("127.0.0.1", port, 0.001, 0.001, read_bytes=64 << 10, max_buffer_bytes=limit)
        async with DelayProxy(cfg) as proxy:
            _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.transport.set_write_buffer_limits(high=1 << 16)
            sent, block = 0, bytes(1 << 20)
            deadline = time.monotonic() + 3.0
            while sent < (256 << 20) and time.monotonic() < deadline:
                writer.write(block)
                try:
                    await asyncio.wait_for(writer.drain(), 0.5)
                except TimeoutError:
                    break  # backpressure reached the client
                sent += len(block)
            writer.transport.abort()
        for w in stalled:
            w.transport.abort()
        server.close()
        return sent

    # Execute
    sent = asyncio.run(main())

    # Assert: what got in is the kernel's socket buffers plus the proxy's bounded queue, not everything
    assert sent < 64 << 20, sent


def test_refuses_connections_beyond_the_limit() -> None:
    async def main() -> tuple[bytes, int]:
        async with _echo_server() as port:
            cfg = ProxyConfig("127.0.0.1", port, 0.0, 0.0, max_connections=1)
            async with DelayProxy(cfg) as proxy:
                r1, w1 = await asyncio.open_connection("127.0.0.1", proxy.port)
                w1.write(b"a")
                assert await asyncio.wait_for(r1.readexactly(1), 5) == b"a"  # the first one is established
                r2, w2 = await asyncio.open_connection("127.0.0.1", proxy.port)
                try:
                    second = await asyncio.wait_for(r2.read(), 5)  # closed at once: EOF or reset
                except ConnectionResetError:
                    second = b""
                for w in (w1, w2):
                    w.close()
                return second, proxy.stats.refused

    second, refused = asyncio.run(main())

    assert second == b"" and refused == 1


def test_cli_prints_its_port_and_stops_on_sigterm() -> None:
    # Prepare: an echo server in a child process, and the proxy CLI in front of it
    echo = subprocess.Popen([sys.executable, "-c", (
        "import asyncio, sys\n"
        "async def h(r, w):\n"
        "    while d := await r.read(65536):\n"
        "        w.write(d); await w.drain()\n"
        "    w.close()\n"
        "async def main():\n"
        "    s = await asyncio.start_server(h, '127.0.0.1', 0)\n"
        "    print(s.sockets[0].getsockname()[1], flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n")], stdout=subprocess.PIPE, text=True)
    proxy = None
    try:
        assert echo.stdout is not None
        echo_port = int(echo.stdout.readline())
        proxy = subprocess.Popen([sys.executable, "-m", "flexgc.harness.delayproxy", "--listen", "127.0.0.1:0",
                                  "--target", f"127.0.0.1:{echo_port}", "--delay-ms", "10"], stdout=subprocess.PIPE,
                                 text=True)
        assert proxy.stdout is not None

        # Execute
        event = json.loads(proxy.stdout.readline())
        rtt_ms = asyncio.run(_median_rtt_ms(event["port"], n=10))
        proxy.send_signal(signal.SIGTERM)
        rc = proxy.wait(10)

        # Assert
        assert event["event"] == "listening"
        assert 19.6 <= rtt_ms < _upper_ms(20), rtt_ms
        assert rc == 0
    finally:
        for p in (proxy, echo):
            if p is not None and p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(5)


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="up_delay_s=-1"):
        ProxyConfig("127.0.0.1", 1, -1, 0)
    with pytest.raises(ValueError, match="target_port=0"):
        ProxyConfig("127.0.0.1", 0, 0, 0)
    with pytest.raises(ValueError, match="max_buffer_bytes"):
        ProxyConfig("127.0.0.1", 1, 0, 0, read_bytes=10, max_buffer_bytes=5)
