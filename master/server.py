"""The master process: wires the gRPC server, health, metrics, the coordinator and the trainer together.

One `asyncio.run(serve(cfg))` per process (docs/style.md §7); the training loop lives in trainer.py, the
iteration state machine in coordinator.py, the servicer in service.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from threadpoolctl import threadpool_limits

from flexgc import __version__
from flexgc.common import transport, wire
from flexgc.common.codes import parse_code
from flexgc.common.config import MasterConfig
from flexgc.master.accounting import RunLog, summarize
from flexgc.master.coordinator import Coordinator
from flexgc.master.data import JobData
from flexgc.master.metrics import Metrics
from flexgc.master.service import SERVICE_NAME, CoordinatorService, TokenCheck, add_coordinator_service
from flexgc.master.trainer import Trainer, write_atomic

_log = logging.getLogger(__name__)


async def serve(cfg: MasterConfig, on_port: Callable[[int], None] | None = None,
                stop: asyncio.Event | None = None,
                on_record: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run one job to completion; returns the summary (also written to OUT/summary.json)."""
    code = parse_code(cfg.code, cfg.workers)
    job_data = JobData.from_config(cfg, code)
    data = job_data.spec
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
                              deadline_s=cfg.deadline_s, on_deadline=cfg.on_deadline,
                              max_workers=cfg.max_workers, metrics=metrics)
    job = wire.JobInfo(n=code.n, k=code.k, code_spec=code.spec, data=data, dtype=cfg.dtype,
                       chunk_bytes=cfg.chunk_bytes, heartbeat_interval_s=cfg.heartbeat_s, delay_spec=cfg.delay,
                       delay_seed=cfg.delay_seed)
    service = CoordinatorService(coordinator, job, job_data)
    server = transport.aio_server(interceptors=[TokenCheck(cfg.token, metrics)])
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
    trainer = Trainer(cfg, code, job_data, coordinator, metrics, RunLog(None), on_record)
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
            "stopped_at_target_loss": trainer.stopped_early, "rejected": dict(metrics.rejected_by_kind),
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
