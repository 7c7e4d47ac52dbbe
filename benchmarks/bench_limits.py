"""Limits of this machine (issue 6, item 4), each a ratio of two figures measured in the same run.

    .venv/bin/python benchmarks/bench_limits.py [--repeats 5] [--mib 64] [--malloc both|on|off] [--json F]

(a) Payload throughput of flexgc's result stream against raw loopback TCP between two Python
    processes (goal >= 60%). The gRPC side is a real master (`flexgc.harness.local` master process: server,
    servicer, Coordinator, run log) and a worker process that runs the real worker `Session` (its send
    path: `wire.result_chunks` in the compute thread, `call_soon_threadsafe`, the outbox, `call.write`)
    with the partial-gradient compute replaced by a precomputed vector (`--worker real` uses the real
    worker and its compute: same stream, slower iterations). The rate is the master's own accounting:
    bytes of chunks 2..N over `result_arrival_ms - first_byte_ms` (the first chunk starts the clock).
    The TCP side is `sendall` of the same number of bytes into `recv_into` a preallocated buffer,
    clocked from the request to the last byte (nothing can be buffered before it). A third figure,
    a bare gRPC client stream of 1 MiB `bytes` messages through flexgc's transport settings (no
    protobuf, no validation), shows what gRPC itself costs.
(b) The master's decode (`coordinator.combine_rows`: one `np.dot(weights, buffer[:m])` in the wire
    dtype) against one plain memory copy of the same bytes (`np.copyto`), one BLAS thread like the
    master (goal <= 0.5x). The buffer is laid out as the Coordinator's (n_messages, d + 1) and
    refilled before every timing, as fresh results would be. One read pass over the same bytes
    (`np.dot(flat, flat)`) is timed too: no decode can be cheaper.

Every measurement runs in spawned child processes, so `--malloc both` times each figure with and
without the malloc settings of docs/design.md §7 (`MALLOC_MMAP_THRESHOLD_` etc.; dev.sh sets them). A repeat
is one fresh master/worker pair (or TCP pair) moving the vector `--transfers` times; the first
transfer of each repeat is a warm-up and dropped; the repeat's figure is the median of the rest. We
print the median over repeats and its range, and the ratio computed per repeat. Only loopback
traffic; every wait has a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import math
import multiprocessing as mp
import os
import platform
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "268435456", "MALLOC_TRIM_THRESHOLD_": "1073741824",
              "MALLOC_TOP_PAD_": "268435456"}
_CTX = mp.get_context("spawn")
_TIMEOUT_S = 120.0


# ---------------------------------------------------------------------------------------------
# machine and environment


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": len(os.sched_getaffinity(0)), "cpu_model": model, "python": platform.python_version(),
            "loadavg_1m": os.getloadavg()[0]}


def set_malloc_env(on: bool) -> None:
    """Children inherit os.environ at spawn; glibc reads these variables at process start."""
    for key, value in MALLOC_ENV.items():
        if on:
            os.environ[key] = value
        else:
            os.environ.pop(key, None)


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _join(procs: list[Any]) -> None:
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.terminate()
            p.join(5)
        if p.is_alive():
            p.kill()
            p.join(5)


# ---------------------------------------------------------------------------------------------
# (a) raw loopback TCP between two Python processes


def _tcp_sender(port: int, total_bytes: int, transfers: int) -> None:
    payload = np.random.default_rng(0).standard_normal(total_bytes // 8).tobytes()
    with socket.create_connection(("127.0.0.1", port), timeout=_TIMEOUT_S) as s:
        for _ in range(transfers):
            if s.recv(1) != b"g":  # the receiver asks for each transfer
                return
            s.sendall(payload)


def _tcp_receiver(total_bytes: int, transfers: int, results: Any) -> None:
    rates = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(_TIMEOUT_S)
        sender = _CTX.Process(target=_tcp_sender, args=(listener.getsockname()[1], total_bytes, transfers))
        sender.start()
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(_TIMEOUT_S)
                row = np.empty(total_bytes, dtype=np.uint8)  # like the master's row: preallocated
                view = memoryview(row.data)
                for _ in range(transfers):
                    t0 = time.perf_counter()  # from the request: nothing is buffered before it
                    conn.sendall(b"g")
                    got = 0
                    while got < total_bytes:
                        k = conn.recv_into(view[got:], total_bytes - got)
                        if k == 0:
                            raise ConnectionError("sender closed early")
                        got += k
                    rates.append(total_bytes / (time.perf_counter() - t0))
        finally:
            _join([sender])
    results.put(rates)


def tcp_rates(total_bytes: int, transfers: int) -> list[float]:
    """Bytes per second of `transfers` transfers of `total_bytes` between two processes on loopback."""
    q = _CTX.Queue()
    p = _CTX.Process(target=_tcp_receiver, args=(total_bytes, transfers, q))
    p.start()
    try:
        return q.get(timeout=_TIMEOUT_S)
    finally:
        _join([p])


# ---------------------------------------------------------------------------------------------
# (a) flexgc's result stream: real master, real worker Session, compute replaced by a ready vector


def _stub_worker_main(target: str, d: int, dtype: str) -> None:
    asyncio.run(_stub_worker(target, d, dtype))


async def _stub_worker(target: str, d: int, dtype: str) -> None:
    from threadpoolctl import threadpool_limits

    from flexgc import __version__
    from flexgc.common import transport, wire
    from flexgc.common.config import worker_config
    from flexgc.v1 import coordinator_pb2_grpc as pb_grpc
    from flexgc.worker.client import Session
    from flexgc.worker.compute import PartitionCompute, TaskRun

    class ReadyVector(PartitionCompute):
        """Emits every level's coded vector at once: `astype` of a float64 vector, as the real compute."""

        def __init__(self, slot_code: wire.SlotCode) -> None:  # no data, no partials
            self.slot_code = slot_code
            self.vector_len = d
            self.wire_dtype = np.dtype(dtype)
            self.source = np.random.default_rng(1).standard_normal(d)

        def run(self, task: TaskRun, emit: Any) -> None:
            for level in range(task.max_levels):
                if task.cancel.is_set():
                    return
                task.times.compute_ms.append(0.0)
                task.times.delay_ms.append(0.0)
                task.partitions_done = self.slot_code.level_prefix[level]
                emit(level, self.source.astype(self.wire_dtype))
            task.finished = True

    threadpool_limits(1)
    cfg = worker_config(master=target, slot=0, worker_id="bench-limits")
    channel = transport.aio_channel(target, transport.TlsConfig())
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
    try:
        stub = pb_grpc.CoordinatorStub(channel)
        ask = wire.JoinAsk(cfg.identity, 0, __version__)
        grant, job = wire.joined(await stub.Join(wire.join_request(ask), timeout=_TIMEOUT_S))
        compute = ReadyVector(grant.slot_code)
        await asyncio.wait_for(Session(cfg, grant, job, stub, compute, executor).run(), 20 * _TIMEOUT_S)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        await channel.close()


def stream_rates(d: int, transfers: int, worker: str, chunk_bytes: int) -> list[float]:
    """Result-stream payload rate (bytes/s) of `transfers` iterations, from the master's run log."""
    from flexgc.common.config import master_config
    from flexgc.harness.local import LocalCluster
    from flexgc.master.accounting import read_run_log

    with tempfile.TemporaryDirectory(prefix="flexgc-limits-") as tmp:
        cfg = master_config(host="127.0.0.1", port=0, workers=1, code="uncoded", iterations=transfers,
                            model="least-squares", samples=1, features=d - 1, dtype="float32", out=tmp,
                            checkpoint_every=0, delay="none", chunk_bytes=chunk_bytes, join_timeout_s=_TIMEOUT_S)
        with LocalCluster(cfg) as cluster:
            cluster.start_master(timeout_s=_TIMEOUT_S)
            if worker == "real":
                cluster.start_workers()
            else:
                stub = _CTX.Process(target=_stub_worker_main, args=(cluster.target, d, "float32"))
                stub.start()
                cluster.workers[0] = stub  # stopped with the cluster
            rc = cluster.wait_master(transfers * _TIMEOUT_S)
            if rc != 0:
                raise RuntimeError(f"master exit code {rc}")
        rates = []
        for rec in read_run_log(Path(tmp) / "run.jsonl"):
            w = rec["workers"][0]
            chunks = math.ceil(w["bytes_up"] / chunk_bytes)
            window_s = (w["result_arrival_ms"][0] - w["first_byte_ms"]) / 1e3
            rates.append(w["bytes_up"] * (chunks - 1) / chunks / window_s)
        return rates


# ---------------------------------------------------------------------------------------------
# (a) reference: the same gRPC transport carrying bare bytes (no protobuf, no flexgc)

_BYTES_METHOD = "/bench.Bytes/Up"


async def _bytes_server(total_bytes: int, transfers: int, chunk_bytes: int, results: Any) -> None:
    import grpc

    from flexgc.common import transport

    rates: list[float] = []
    done = asyncio.Event()

    async def up(request_iterator: Any, context: Any) -> bytes:
        got, first, t0 = 0, 0, 0.0
        async for data in request_iterator:
            if got == 0:
                t0, first = time.perf_counter(), len(data)
            got += len(data)
            if got >= total_bytes:  # clocked like the result stream: chunks 2..N from the first one
                rates.append((got - first) / (time.perf_counter() - t0))
                got = 0
                if len(rates) == transfers:
                    done.set()
        return b""

    server = transport.aio_server()
    handler = grpc.method_handlers_generic_handler(
        "bench.Bytes", {"Up": grpc.stream_unary_rpc_method_handler(up)})  # bytes in, bytes out: no (de)serializer
    server.add_generic_rpc_handlers((handler,))
    port = transport.bind(server, "127.0.0.1:0", transport.TlsConfig())
    await server.start()
    results.put(port)
    try:
        await asyncio.wait_for(done.wait(), transfers * _TIMEOUT_S)
    finally:
        await server.stop(1.0)
    results.put(rates)


def _bytes_server_main(total_bytes: int, transfers: int, chunk_bytes: int, results: Any) -> None:
    asyncio.run(_bytes_server(total_bytes, transfers, chunk_bytes, results))


async def _bytes_client(port: int, total_bytes: int, transfers: int, chunk_bytes: int) -> None:
    from flexgc.common import transport

    payload = np.random.default_rng(0).standard_normal(total_bytes // 8)
    channel = transport.aio_channel(f"127.0.0.1:{port}", transport.TlsConfig())
    try:
        call = channel.stream_unary(_BYTES_METHOD)()
        for _ in range(transfers):
            for start in range(0, total_bytes // 8, chunk_bytes // 8):
                await call.write(payload[start:start + chunk_bytes // 8].tobytes())  # one tobytes per chunk
        await call.done_writing()
        await asyncio.wait_for(call, _TIMEOUT_S)
    finally:
        await channel.close()


def _bytes_client_main(port: int, total_bytes: int, transfers: int, chunk_bytes: int) -> None:
    asyncio.run(_bytes_client(port, total_bytes, transfers, chunk_bytes))


def grpc_bytes_rates(total_bytes: int, transfers: int, chunk_bytes: int) -> list[float]:
    """Bytes per second of a client stream of `chunk_bytes` messages through flexgc's transport settings."""
    q = _CTX.Queue()
    server = _CTX.Process(target=_bytes_server_main, args=(total_bytes, transfers, chunk_bytes, q))
    server.start()
    procs = [server]
    try:
        port = q.get(timeout=_TIMEOUT_S)
        client = _CTX.Process(target=_bytes_client_main, args=(port, total_bytes, transfers, chunk_bytes))
        client.start()
        procs.append(client)
        return q.get(timeout=transfers * _TIMEOUT_S)
    finally:
        _join(procs)


# ---------------------------------------------------------------------------------------------
# (b) decode against one copy


def _time_decode(m: int, d: int, dtype: str, repeats: int, rng: np.random.Generator) -> dict[str, Any]:
    from flexgc.master.buffer import combine_rows

    buf = np.zeros((m + 4, d), dtype=dtype)           # the Coordinator's buffer has spare rows
    rows = buf[:m]
    flat = rows.reshape(-1)
    fresh = rng.standard_normal((m, d)).astype(dtype)
    dst = np.empty((m, d), dtype=dtype)
    weights = rng.standard_normal(m)
    weights[::3] = 0.0                                # rows the decoding does not use
    seconds: dict[str, list[float]] = {"decode": [], "copy": [], "read": []}
    for _ in range(repeats):
        for name in seconds:
            rows[:] = fresh                           # the rows were just written by accept_chunk
            t0 = time.perf_counter()
            if name == "decode":
                combine_rows(weights, rows)
            elif name == "copy":
                np.copyto(dst, rows)
            else:
                np.dot(flat, flat)                    # reads every byte once: the floor of any decode
            seconds[name].append(time.perf_counter() - t0)
    return {"m": m, "d": d, "dtype": dtype, "bytes": m * d * np.dtype(dtype).itemsize,
            **{f"{k}_ms": summary([x * 1e3 for x in v]) for k, v in seconds.items()},
            "ratio": summary([a / b for a, b in zip(seconds["decode"], seconds["copy"])]),
            "read_ratio": summary([a / b for a, b in zip(seconds["read"], seconds["copy"])])}


def _decode_main(cases: list[tuple[int, int, str]], repeats: int, results: Any) -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # the master runs with one BLAS thread
    rng = np.random.default_rng(2)
    results.put([_time_decode(m, d, dtype, repeats, rng) for m, d, dtype in cases])


def decode_vs_copy(cases: list[tuple[int, int, str]], repeats: int) -> list[dict[str, Any]]:
    q = _CTX.Queue()
    p = _CTX.Process(target=_decode_main, args=(cases, repeats, q))
    p.start()
    try:
        return q.get(timeout=20 * _TIMEOUT_S)
    finally:
        _join([p])


# ---------------------------------------------------------------------------------------------


def throughput(args: argparse.Namespace, d: int) -> dict[str, Any]:
    tcp, raw_grpc, stream, ratio, raw_ratio = [], [], [], [], []
    for repeat in range(args.repeats):
        t = statistics.median(tcp_rates(d * 4, args.transfers)[1:])
        b = statistics.median(grpc_bytes_rates(d * 4, args.transfers, args.chunk_bytes)[1:])
        g = statistics.median(stream_rates(d, args.transfers, args.worker, args.chunk_bytes)[1:])
        tcp.append(t / 1e9)
        raw_grpc.append(b / 1e9)
        stream.append(g / 1e9)
        ratio.append(g / t)
        raw_ratio.append(b / t)
        print(f"  repeat {repeat}: tcp {t / 1e9:.2f} GB/s  grpc bytes {b / 1e9:.2f} GB/s  flexgc stream "
              f"{g / 1e9:.2f} GB/s  ratio {g / t:.2f}", flush=True)
    return {"tcp_GBps": summary(tcp), "grpc_bytes_GBps": summary(raw_grpc), "stream_GBps": summary(stream),
            "ratio": summary(ratio), "grpc_bytes_ratio": summary(raw_ratio)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--transfers", type=int, default=6, help="vectors per repeat (the first is dropped)")
    parser.add_argument("--mib", type=int, default=64, help="result vector size in MiB (float32)")
    parser.add_argument("--chunk-bytes", type=int, default=1 << 20)
    parser.add_argument("--worker", choices=("stub", "real"), default="stub")
    parser.add_argument("--malloc", choices=("both", "on", "off"), default="on",
                        help="run the children with the malloc settings of docs/design.md §7, without, or both")
    parser.add_argument("--decode-repeats", type=int, default=15)
    parser.add_argument("--skip", choices=("none", "throughput", "decode"), default="none")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.repeats < 1 or args.transfers < 2:
        parser.error("need --repeats >= 1 and --transfers >= 2")
    d = args.mib << 18
    decode_cases = [(m, dd, "float32") for dd in (10**6 + 1, 1 << 24) for m in (4, 10, 40)]
    report: dict[str, Any] = {"machine": machine(), "args": vars(args), "runs": {}}
    print(f"machine: {report['machine']}")
    modes = {"both": (True, False), "on": (True,), "off": (False,)}[args.malloc]
    for on in modes:
        set_malloc_env(on)
        label = "malloc_env" if on else "default_malloc"
        run: dict[str, Any] = {}
        if args.skip != "throughput":
            print(f"[{label}] (a) result stream vs raw TCP, {args.mib} MiB float32, worker={args.worker}")
            run["throughput"] = throughput(args, d)
            a = run["throughput"]
            print(f"[{label}] (a) tcp {a['tcp_GBps']['median']:.2f} GB/s, grpc bytes "
                  f"{a['grpc_bytes_GBps']['median']:.2f} GB/s (ratio {a['grpc_bytes_ratio']['median']:.2f}), "
                  f"flexgc stream "
                  f"{a['stream_GBps']['median']:.2f} GB/s, ratio median {a['ratio']['median']:.2f} (range "
                  f"{a['ratio']['min']:.2f}..{a['ratio']['max']:.2f}); goal >= 0.60")
        if args.skip != "decode":
            run["decode"] = decode_vs_copy(decode_cases, args.decode_repeats)
            for c in run["decode"]:
                print(f"[{label}] (b) decode m={c['m']:3d} d={c['d']:9d} {c['dtype']} {c['bytes'] / 2**20:7.1f} MiB: "
                      f"decode {c['decode_ms']['median']:8.3f} ms  copy {c['copy_ms']['median']:8.3f} ms  "
                      f"ratio {c['ratio']['median']:.2f} ({c['ratio']['min']:.2f}..{c['ratio']['max']:.2f}); "
                      f"goal <= 0.50; one read pass {c['read_ratio']['median']:.2f}")
        report["runs"][label] = run
    report["machine"]["loadavg_1m_end"] = os.getloadavg()[0]
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
