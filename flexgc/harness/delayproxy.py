"""A small userspace TCP proxy that adds a fixed one-way delay to each direction of every connection.

Where the kernel has no ``sch_netem`` (the development machines and CI), ``tc`` cannot add latency, so
the namespace harness (`flexgc.harness.cluster`) puts this proxy in front of the master to give a worker's link a
round-trip time: a request through the proxy reaches the target ``up_delay_s`` after the client sent it,
and the answer reaches the client ``down_delay_s`` after the target sent it, so a round trip takes
``up_delay_s + down_delay_s`` plus the proxy's own overhead (about 1 ms on loopback; see
tests/harness/test_delayproxy.py and docs/netns.md).

Each chunk read from one side is stamped with its arrival time and written to the other side once its
delay has passed, so the delay pipelines: throughput is not divided by the delay, as long as the
bandwidth-delay product fits the per-direction buffer (``max_buffer_bytes``). A full buffer stops the
reading side (TCP backpressure), so memory stays bounded whatever the peers do. Connections beyond
``max_connections`` are refused by closing them at once. Half-closes are forwarded (after the delay).

    python -m flexgc.harness.delayproxy --listen 0.0.0.0:50052 --target 127.0.0.1:50051 --delay-ms 20

It prints one JSON line ``{"event": "listening", "port": ...}`` once it accepts connections and runs
until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass

_log = logging.getLogger(__name__)

@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """Where to listen, where to forward, and the one-way delay of each direction.

    up_delay_s: client -> target; down_delay_s: target -> client (seconds, >= 0).
    read_bytes: largest chunk read at once; max_buffer_bytes: most bytes held per direction.
    """

    target_host: str
    target_port: int
    up_delay_s: float
    down_delay_s: float
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    read_bytes: int = 64 << 10
    max_buffer_bytes: int = 16 << 20
    max_connections: int = 256
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not 0 <= self.up_delay_s <= 3600 or not 0 <= self.down_delay_s <= 3600:
            raise ValueError(f"up_delay_s={self.up_delay_s}, down_delay_s={self.down_delay_s}; "
                             "need 0 <= delay <= 3600")
        if not 0 < self.target_port < 65536 or not 0 <= self.listen_port < 65536:
            raise ValueError(f"target_port={self.target_port}, listen_port={self.listen_port}; "
                             "need 1..65535 (listen: 0..65535, 0 = any free port)")
        if self.read_bytes < 1 or self.max_buffer_bytes < self.read_bytes:
            raise ValueError(f"read_bytes={self.read_bytes}, max_buffer_bytes={self.max_buffer_bytes}; "
                             "need 1 <= read_bytes <= max_buffer_bytes")
        if self.max_connections < 1:
            raise ValueError(f"max_connections={self.max_connections}; need >= 1")


@dataclass(slots=True)
class ProxyStats:
    accepted: int = 0
    refused: int = 0
    failed_connects: int = 0
    active: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


class DelayProxy:
    """`await start()` returns the bound port; `await close()` stops listening and drops every connection."""

    def __init__(self, cfg: ProxyConfig) -> None:
        self.cfg = cfg
        self.stats = ProxyStats()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, self.cfg.listen_host, self.cfg.listen_port,
                                                  limit=self.cfg.read_bytes)
        port = int(self._server.sockets[0].getsockname()[1])
        _log.info("listening host=%s port=%d target=%s:%d up_delay_ms=%.3f down_delay_ms=%.3f",
                  self.cfg.listen_host, port, self.cfg.target_host, self.cfg.target_port,
                  self.cfg.up_delay_s * 1e3, self.cfg.down_delay_s * 1e3)
        return port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def __aenter__(self) -> DelayProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("proxy not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.cfg.max_connections:
            self.stats.refused += 1
            _log.warning("refused peer=%s reason=max_connections=%d", writer.get_extra_info("peername"),
                         self.cfg.max_connections)
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self.stats.accepted += 1
        self.stats.active += 1
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            # close() cancels us; end normally, since asyncio's stream callback calls exception() on this task
            # and would log a CancelledError for every open connection (Python 3.11)
            pass
        finally:
            self.stats.active -= 1
            self._connections.discard(task)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        cfg = self.cfg
        peer = client_w.get_extra_info("peername")
        try:
            target_r, target_w = await asyncio.wait_for(
                asyncio.open_connection(cfg.target_host, cfg.target_port, limit=cfg.read_bytes),
                cfg.connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            self.stats.failed_connects += 1
            _log.warning("connect failed peer=%s target=%s:%d error=%s", peer, cfg.target_host, cfg.target_port,
                         exc)
            client_w.transport.abort()
            return
        _log.debug("connected peer=%s", peer)
        up = asyncio.ensure_future(self._direction(client_r, target_w, cfg.up_delay_s, "up"))
        down = asyncio.ensure_future(self._direction(target_r, client_w, cfg.down_delay_s, "down"))
        try:
            error = await _first_error({up, down})
            if error is not None:
                _log.debug("connection ended peer=%s error=%r", peer, error)
        finally:
            await _cancel(up, down)
            for w in (client_w, target_w):
                w.transport.abort()
            _log.debug("closed peer=%s", peer)

    async def _direction(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float,
                         name: str) -> None:
        """Read chunks, hold each one `delay_s` after its arrival, then write it; forward EOF the same way."""
        loop = asyncio.get_running_loop()
        slots = max(1, self.cfg.max_buffer_bytes // self.cfg.read_bytes)
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=slots)  # bounded: backpressure

        async def pump_in() -> None:
            while True:
                data = await reader.read(self.cfg.read_bytes)
                await queue.put((loop.time() + delay_s, data))
                if not data:
                    return

        async def pump_out() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:  # the sender half-closed: forward it
                    if writer.can_write_eof():
                        writer.write_eof()
                    await writer.drain()
                    return
                writer.write(data)
                await writer.drain()
                if name == "up":
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)

        reading, writing = asyncio.ensure_future(pump_in()), asyncio.ensure_future(pump_out())
        try:
            error = await _first_error({reading, writing})
            if error is not None:
                raise error
        finally:
            await _cancel(reading, writing)


async def _first_error(tasks: set[asyncio.Future[None]]) -> BaseException | None:
    """Wait until all tasks end or one fails; return the first failure (None when all ended normally)."""
    pending = set(tasks)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                return task.exception()
    return None


async def _cancel(*tasks: asyncio.Future[None]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def _host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{what}={text!r}; expected HOST:PORT")
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flexgc.harness.delayproxy",
                                description="TCP proxy adding a one-way delay to each direction (round trip "
                                            "= up + down delay + ~1 ms). Prints {\"event\": \"listening\", "
                                            "\"port\": P} once ready; runs until SIGTERM/SIGINT.")
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to accept on (port 0: any free port)")
    p.add_argument("--target", required=True, help="HOST:PORT to forward to (e.g. the master)")
    p.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay of both directions")
    p.add_argument("--up-delay-ms", type=float, default=None, help="client -> target delay (default --delay-ms)")
    p.add_argument("--down-delay-ms", type=float, default=None, help="target -> client delay (default --delay-ms)")
    p.add_argument("--max-buffer-bytes", type=int, default=16 << 20, help="bytes held per direction (bounded)")
    p.add_argument("--max-connections", type=int, default=256)
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


async def _main(cfg: ProxyConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with DelayProxy(cfg) as proxy:
        print(json.dumps({"event": "listening", "port": proxy.port}), flush=True)
        await stop.wait()
        _log.info("stopping accepted=%d bytes_up=%d bytes_down=%d", proxy.stats.accepted, proxy.stats.bytes_up,
                  proxy.stats.bytes_down)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        listen_host, listen_port = _host_port(args.listen, "--listen")
        target_host, target_port = _host_port(args.target, "--target")
        up = args.delay_ms if args.up_delay_ms is None else args.up_delay_ms
        down = args.delay_ms if args.down_delay_ms is None else args.down_delay_ms
        cfg = ProxyConfig(target_host, target_port, up / 1e3, down / 1e3, listen_host, listen_port,
                          max_buffer_bytes=args.max_buffer_bytes, max_connections=args.max_connections)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        parser.error(str(exc))
    try:
        asyncio.run(_main(cfg))
    except OSError as exc:
        print(f"delayproxy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
