"""The master process: gRPC server, health, metrics, the training loop, checkpoints and outputs.

One `asyncio.run(serve(cfg))` per process (STYLE §7). The training loop starts an iteration, awaits
its outcome from the coordinator (decoded, approximated or failed at the deadline), applies the
optimizer, and moves on; the run log is written as iterations close.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from threadpoolctl import threadpool_limits

from flexgc import __version__
from flexgc.common import transport, wire
from flexgc.common.codes import Code, parse_code
from flexgc.common.config import MasterConfig
from flexgc.common.models import DataSpec, full_gradient, load_dataset, synthetic_partition
from flexgc.master.accounting import Metrics, RunLog, summarize
from flexgc.master.coordinator import Coordinator
from flexgc.master.service import CoordinatorService
from flexgc.v1 import coordinator_pb2 as pb

_log = logging.getLogger(__name__)

SERVICE_NAME = "flexgc.v1.Coordinator"


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write a temporary file beside `path`, fsync, rename: a reader sees the old file or the whole new one."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass
class TrainState:
    """What a checkpoint holds: parameters, optimizer state, the next iteration and RNG seeds."""

    params: np.ndarray
    velocity: np.ndarray
    iteration: int = 0
    data_seed: int = 0
    delay_seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        write_atomic(path, lambda fh: np.savez(fh, params=self.params, velocity=self.velocity,
                                               iteration=self.iteration, data_seed=self.data_seed,
                                               delay_seed=self.delay_seed, extra=json.dumps(self.extra)))

    @classmethod
    def load(cls, path: Path) -> TrainState:
        with np.load(path, allow_pickle=False) as f:
            return cls(params=f["params"].copy(), velocity=f["velocity"].copy(),
                       iteration=int(f["iteration"]), data_seed=int(f["data_seed"]),
                       delay_seed=int(f["delay_seed"]), extra=json.loads(str(f["extra"])))


def data_spec_for(cfg: MasterConfig, code: Code) -> tuple[DataSpec, Callable[[int], Any] | None]:
    """The job's DataSpec and, when the master holds the data, a function returning partition j."""
    if cfg.data == "synthetic":
        spec = DataSpec(model=cfg.model, source="synthetic", samples=cfg.samples, features=cfg.features,
                        classes=cfg.classes if cfg.model == "softmax" else 1, seed=cfg.data_seed,
                        partitions=code.k)
        return spec, None
    X, y = load_dataset(cfg.data, cfg.model)
    classes = int(y.max()) + 1 if cfg.model == "softmax" else 1
    spec = DataSpec(model=cfg.model, source="master", samples=X.shape[0], features=X.shape[1],
                    classes=classes, seed=cfg.data_seed, partitions=code.k)

    def partition(j: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = spec.partition_bounds(j)
        return X[a:b], y[a:b]

    return spec, partition


class Trainer:
    def __init__(self, cfg: MasterConfig, code: Code, data: DataSpec, coordinator: Coordinator,
                 metrics: Metrics, runlog: RunLog, partitions: Callable[[int], Any] | None,
                 on_record: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.cfg, self.code, self.data = cfg, code, data
        self.coordinator = coordinator
        self.metrics = metrics
        self.runlog = runlog
        self.on_record = on_record
        self._partitions = partitions
        self._verify_data: list[tuple[np.ndarray, np.ndarray]] | None = None
        self.out = Path(cfg.out) if cfg.out else None
        self.state = TrainState(np.zeros(data.d), np.zeros(data.d), 0, cfg.data_seed, cfg.delay_seed)
        self.stopped_early = False
        self.last_loss: float | None = None
        self._log_error: BaseException | None = None   # from a run-log flush run as a loop callback

    def restore(self) -> None:
        if self.out is None or not self.cfg.resume:
            return
        path = self.out / "checkpoint.npz"
        if path.exists():
            state = TrainState.load(path)
            if state.params.shape != (self.data.d,):
                _log.warning("checkpoint ignored path=%s reason=shape %s != %s", path, state.params.shape,
                             (self.data.d,))
                return
            self.state = state
            _log.info("resumed path=%s iteration=%d", path, state.iteration)

    def checkpoint(self) -> None:
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            self.state.save(self.out / "checkpoint.npz")

    def _verify(self, gradient: np.ndarray) -> float:
        if self._verify_data is None:
            source = self._partitions or (lambda j: synthetic_partition(self.data, j))
            self._verify_data = [source(j) for j in range(self.data.partitions)]
        direct = full_gradient(self.data, self.state.params, self._verify_data)
        return float(np.linalg.norm(gradient - direct)) / max(float(np.linalg.norm(direct)), 1e-300)

    async def run(self, stop: asyncio.Event) -> None:
        cfg, c = self.cfg, self.coordinator
        if self.state.iteration >= cfg.iterations:
            _log.warning("the checkpoint in %s is at iteration %d of %d: the job is complete, nothing to run "
                         "(use another --out, or raise --iterations to continue it)", cfg.out,
                         self.state.iteration, cfg.iterations)
            return
        joined = await _until(c.wait_for_workers(self.code.n, cfg.join_timeout_s), stop)
        if stop.is_set():
            return
        if not joined:
            _log.warning("join timeout connected=%d of n=%d; starting anyway", c.connected, self.code.n)
        N = self.data.samples
        d = self.data.d
        for t in range(self.state.iteration, cfg.iterations):
            if stop.is_set():
                break
            it = c.start_iteration(t, self.state.params)
            # the previous iterations' records, after this iteration's tasks: call_soon runs in order, so
            # the Work streams that start_iteration woke hand their tasks to gRPC first
            asyncio.get_running_loop().call_soon(self._flush_log, t - 1)
            await _until(asyncio.shield(it.done), stop)
            if self._log_error is not None:
                raise self._log_error  # a run log that cannot be written stops the job, as before
            if not it.done.done():
                break
            outcome = it.done.result()
            loss = None
            verify = None
            if outcome.gradient is not None:
                if cfg.verify:
                    verify = self._verify(outcome.gradient)
                grad = np.divide(outcome.gradient[:d], N, dtype=np.float64)  # widened here, not in the decode
                loss = float(outcome.gradient[d]) / N
                self.state.velocity = cfg.momentum * self.state.velocity + grad
                self.state.params = self.state.params - cfg.lr * self.state.velocity
                self.last_loss = loss
                self.metrics.loss.set(loss)
                self.metrics.level_used.labels(level=str(outcome.decoding.level)).inc()  # type: ignore[union-attr]
                self.metrics.decode_seconds.observe(outcome.decode_ms / 1e3)
            self.state.iteration = t + 1
            self.metrics.iterations.labels(outcome=outcome.phase.name).inc()
            self.metrics.iteration_latency.observe(outcome.latency_ms / 1e3)
            self.metrics.connected.set(c.connected)
            self.runlog.add(it, outcome, loss, verify)
            if cfg.checkpoint_every and (t + 1) % cfg.checkpoint_every == 0:
                # the run log must hold every iteration before the checkpoint, or a resume leaves a gap
                self._emit(self.runlog.flush(self.code, force=True))
                self.checkpoint()
            if cfg.target_loss is not None and loss is not None and loss <= cfg.target_loss:
                self.stopped_early = True
                _log.info("target loss reached iteration=%d loss=%.6g", t, loss)
                break
        # give the last iteration's cancel acks a moment to arrive, for the accounting
        last = c.history.get(self.state.iteration - 1)
        deadline = time.monotonic() + 1.0
        while last is not None and not all(last.timing[s].answered for s in last.sent if s in c.connections):
            c.acks_changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or stop.is_set():
                break
            try:
                await _until(asyncio.wait_for(c.acks_changed.wait(), remaining), stop)
            except TimeoutError:
                break
        self._emit(self.runlog.flush(self.code, force=True))

    def _flush_log(self, newest: int) -> None:
        try:
            self._emit(self.runlog.flush(self.code, newest=newest))
        except Exception as exc:
            self._log_error = exc

    def _emit(self, records: list[dict[str, Any]]) -> None:
        for rec in records:
            for w in rec["workers"]:
                for level, ms in enumerate(w["result_arrival_ms"]):
                    if ms is not None and w["task_sent_ms"] is not None:
                        self.metrics.result_latency.labels(slot=str(w["slot"]), level=str(level)).observe(
                            (ms - w["task_sent_ms"]) / 1e3)
                if w["partitions_done"] is not None and w["task_sent_ms"] is not None:
                    left = self.code.max_partitions(w["slot"]) - w["partitions_done"]
                    self.metrics.cancelled_partitions.inc(max(0, left))
            self.metrics.bytes.labels(direction="up").inc(rec["bytes_up"])
            self.metrics.bytes.labels(direction="down").inc(rec["bytes_down"])
            if self.on_record is not None:
                self.on_record(rec)


def add_coordinator_service(service: CoordinatorService, server: grpc.aio.Server) -> None:
    """As the generated add_CoordinatorServicer_to_server, but the Work stream's responses may be
    pre-serialized (`wire.Preserialized`): a task is serialized once per iteration, not once per worker."""
    handlers = {
        "Join": grpc.unary_unary_rpc_method_handler(
            service.Join, request_deserializer=pb.JoinRequest.FromString,
            response_serializer=pb.JoinReply.SerializeToString),
        "Work": grpc.stream_stream_rpc_method_handler(
            service.Work, request_deserializer=pb.WorkerMessage.FromString,
            response_serializer=wire.serialize_master_message),
        "FetchPartition": grpc.unary_stream_rpc_method_handler(
            service.FetchPartition, request_deserializer=pb.PartitionRequest.FromString,
            response_serializer=pb.PartitionChunk.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


async def _until(aw: Any, stop: asyncio.Event) -> Any:
    """Await `aw` unless `stop` is set first; returns aw's result or None."""
    task = asyncio.ensure_future(aw)
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task in done:
        return task.result()
    task.cancel()
    return None


async def serve(cfg: MasterConfig, on_port: Callable[[int], None] | None = None,
                stop: asyncio.Event | None = None,
                on_record: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run one job to completion; returns the summary (also written to OUT/summary.json)."""
    code = parse_code(cfg.code, cfg.workers)
    data, partitions = data_spec_for(cfg, code)
    stop = stop or asyncio.Event()
    if cfg.dtype == "float32" and code.worst_cond and max(code.worst_cond) * np.finfo(np.float32).eps > 1e-5:
        _log.warning("float32 code=%s worst_cond=%.3g: decoded gradients may carry relative errors near %.1g; "
                     "consider --dtype float64", code.spec, max(code.worst_cond),
                     max(code.worst_cond) * np.finfo(np.float32).eps)
    # several processes share the cores: a multi-threaded BLAS per process oversubscribes them (measured
    # 20x slower partial gradients with 5 processes on 2 cores)
    threadpool_limits(cfg.blas_threads)
    metrics = Metrics()
    coordinator = Coordinator(code, data, dtype=cfg.dtype, chunk_bytes=cfg.chunk_bytes,
                              deadline_s=cfg.deadline_s, on_deadline=cfg.on_deadline, token=cfg.token,
                              max_workers=cfg.max_workers, metrics=metrics)
    extra = dict(n=code.n, k=code.k, code_spec=code.spec, chunk_bytes=cfg.chunk_bytes,
                 max_message_bytes=transport.MAX_MESSAGE_BYTES, heartbeat_interval_s=cfg.heartbeat_s,
                 delay_spec=cfg.delay, delay_seed=cfg.delay_seed,
                 data=pb.DataSpec(model=data.model, source=data.source, samples=data.samples,
                                  features=data.features, classes=data.classes, seed=data.seed,
                                  partitions=data.partitions, dtype=cfg.dtype, noise=data.noise))
    service = CoordinatorService(coordinator, extra, partitions)
    server = transport.aio_server()
    add_coordinator_service(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = transport.bind(server, f"{cfg.host}:{cfg.port}", transport.TlsConfig(cfg.tls_cert, cfg.tls_key,
                                                                                  cfg.tls_ca))
    metrics_server = None
    if cfg.metrics_port:
        from prometheus_client import start_http_server
        metrics_server, _ = start_http_server(cfg.metrics_port, registry=metrics.registry)
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    _log.info("serving port=%d code=%s n=%d d=%d version=%s", port, code.spec, code.n, data.d, __version__)
    if on_port is not None:
        on_port(port)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread (tests)
    out = Path(cfg.out) if cfg.out else None
    trainer = Trainer(cfg, code, data, coordinator, metrics, RunLog(None), partitions, on_record)
    trainer.restore()
    trainer.runlog = RunLog(out, resume_from=trainer.state.iteration)
    started = time.perf_counter()
    summary: dict[str, Any] = {}
    try:
        await trainer.run(stop)
    finally:
        interrupted = stop.is_set()
        if interrupted or trainer.cfg.checkpoint_every:
            trainer.checkpoint()
        coordinator.shutdown("job interrupted" if interrupted else "job finished")
        trainer.runlog.close()
        summary = summarize(code, trainer.runlog.records, {
            "wall_s": round(time.perf_counter() - started, 3), "interrupted": interrupted,
            "stopped_at_target_loss": trainer.stopped_early, "rejected": dict(coordinator.rejected),
            "decoder_cache": coordinator.decoder.cache_info(), "dtype": cfg.dtype, "d": data.d,
            "model": data.model, "samples": data.samples, "delay": cfg.delay, "delay_seed": cfg.delay_seed,
            "next_iteration": trainer.state.iteration})
        if out is not None:
            write_atomic(out / "params.npy", lambda fh: np.save(fh, trainer.state.params))
            write_atomic(out / "summary.json", lambda fh: fh.write((json.dumps(summary, indent=2) + "\n").encode()))
        if cfg.linger and not interrupted:
            _log.info("job finished; lingering until SIGTERM")
            await stop.wait()
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.stop(2.0)
        if metrics_server is not None:
            metrics_server.shutdown()
    summary["params"] = trainer.state.params
    return summary
