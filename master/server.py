"""The master process: wires the gRPC server, health, metrics, the coordinator and the trainer together.

One `asyncio.run(serve(cfg))` per process (docs/style.md §7); the training loop lives in trainer.py, the
iteration state machine in coordinator.py, the servicer in service.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from threadpoolctl import threadpool_limits

from flexgc import __version__
from flexgc.common import transport, wire
from flexgc.common.config import MasterConfig
from flexgc.common.errors import ConfigError, StorageError, TrainingFailedError
from flexgc.master.accounting import RunLog, summarize
from flexgc.master.adapt import Adapter, AdaptPolicy, job_code
from flexgc.master.coordinator import Coordinator
from flexgc.master.data import JobData
from flexgc.master.hooks import IterationHook
from flexgc.master.metrics import Metrics
from flexgc.master.rundir import RunDir, job_identity, write_atomic
from flexgc.master.service import SERVICE_NAME, CoordinatorService, TokenCheck, add_coordinator_service
from flexgc.master.trainer import Trainer

_log = logging.getLogger(__name__)


async def serve(cfg: MasterConfig, on_port: Callable[[int], None] | None = None,
                stop: asyncio.Event | None = None,
                on_record: Callable[[dict[str, Any]], None] | None = None,
                on_iteration: IterationHook | None = None) -> dict[str, Any]:
    """Run one job to completion; returns the summary (also written to OUT/summary.json).

    `on_record` gets every run-log record once written; `on_iteration` an `IterationInfo` right after each
    iteration's step (returning True ends the job after that iteration: the Python API's callbacks).

    Raises ConfigError for what the user can fix before the job starts (a run directory of another job,
    a port in use) and StorageError when the run directory cannot be written any more: then the job
    ends at once, workers are told to stop, and every file written before stays intact.
    """
    policy = AdaptPolicy.of(cfg)
    code = job_code(cfg.code, cfg.workers, policy)
    if cfg.max_workers > cfg.workers and not policy.grow:
        _log.warning("max_workers=%d cannot grow this job (adapt=%s, code=%s): it grows only under elastic "
                     "adaptation (--adapt elastic|all, or auto with an exact code); workers beyond %d wait as spares",
                     cfg.max_workers, policy.mode, cfg.code, cfg.workers)
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
                              max_workers=cfg.max_workers, metrics=metrics,
                              liveness_s=3 * cfg.heartbeat_s)  # three missed heartbeats: silent
    adapter = Adapter(policy, coordinator) if policy.on else None
    trainer = Trainer(cfg, code, job_data, coordinator, metrics, RunLog(None), on_record, adapter, on_iteration)
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
    metrics_server = _start_metrics(cfg, metrics)  # both ports are bound before the run directory is touched
    out = Path(cfg.out) if cfg.out else None
    complete = False
    claimed = False  # not sys.exc_info(): serve() may run inside a caller's `except` (flexgc.api's loop does)
    try:
        if out is None:
            _log.warning("no --out: nothing of this job will be saved (no run log, checkpoint, parameters or "
                         "summary)")
        elif _claim(RunDir(out), cfg, job_data):
            trainer.restore()
            complete = trainer.state.iteration >= cfg.iterations and not cfg.linger
        claimed = True
    finally:
        if complete or not claimed:
            await server.stop(None)
            if metrics_server is not None:
                metrics_server.shutdown()
    if complete:
        return _finished_summary(out, trainer)  # nothing to run, and nothing of the run is rewritten
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    tls = "mutual" if cfg.tls_ca else "on" if cfg.tls_cert else "off"
    grows = f" (starts on {code.holders}, may grow to {code.n})" if code.holders < code.n else ""
    _log.info("serving port=%d code=%s n=%d%s d=%d tls=%s token=%s version=%s", port, code.spec, code.n, grows, data.d,
              tls, "on" if cfg.token else "off", __version__)
    if cfg.host in ("0.0.0.0", "::", "") and not cfg.token and tls == "off":
        _log.warning("serving on every interface (host=%s) with neither --token nor TLS: anyone who can reach port %d "
                     "can join and receive the job's data and parameters; set --token (and TLS: docs/security.md), or "
                     "--host 127.0.0.1 to serve this machine only", cfg.host or "*", port)
    if on_port is not None:
        on_port(port)
    loop = asyncio.get_running_loop()
    signals: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        signals.append(sig)
        stop.set()

    for sig in transport.stop_signals():
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread (tests)
    trainer.runlog = RunLog(out, resume_from=trainer.state.iteration)
    started = time.perf_counter()
    summary: dict[str, Any] = {}
    failure: StorageError | None = None
    ended: TrainingFailedError | None = None  # the job cannot go on: it ends, saved, and the master exits 1
    try:
        await trainer.run(stop)
    except StorageError as exc:
        failure = exc
    except TrainingFailedError as exc:
        ended = exc
    finally:
        interrupted = stop.is_set() and ended is None
        # interrupted (SIGTERM/SIGINT): the job is not over, so the workers are not told to exit; they
        # reconnect to the master that resumes it (a container restart, a rolling update)
        why = failure or ended
        coordinator.shutdown("job failed: " + str(why) if why else "job finished", final=not interrupted)
        trainer.runlog.close()
        summary = summarize(code, trainer.runlog.records, {
            "wall_s": round(time.perf_counter() - started, 3), "interrupted": interrupted,
            "interrupted_by": signals[0].name if signals else None,
            "stopped_at_target_loss": trainer.stopped_early, "stopped_by_callback": trainer.stopped_by_callback,
            "validation": trainer.last_validation, "rejected": dict(metrics.rejected_by_kind),
            "decoder_cache": coordinator.decoder.cache_info(), "dtype": cfg.dtype, "d": data.d,
            "adapt": None if adapter is None else {"mode": policy.mode, "plan": coordinator.plan,
                                                   "code": coordinator.code.spec, "switches": adapter.switches,
                                                   "checks": adapter.checks},
            "model": data.model, "samples": data.samples, "features": data.features, "classes": data.classes,
            "delay": cfg.delay, "delay_seed": cfg.delay_seed,
            "next_iteration": trainer.state.iteration, "failure": None if ended is None else str(ended),
            "by_worker": trainer.stragglers.summary(),
            "versions": _versions(), "machine": _machine()})
        if out is not None and failure is None:
            try:
                if interrupted or cfg.checkpoint_every:
                    trainer.checkpoint()
                write_atomic(out / "params.npy", lambda fh: np.save(fh, trainer.state.params))
                write_atomic(out / "summary.json",
                             lambda fh: fh.write((json.dumps(summary, indent=2) + "\n").encode()))
            except StorageError as exc:
                failure = exc
        if cfg.linger and not interrupted and failure is None and ended is None:
            _log.info("job finished; lingering until SIGTERM")
            await stop.wait()
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        service.close()  # no handler may still run when the server stops (gRPC would cancel it, with a traceback)
        with _quiet_stop():
            await server.stop(2.0)
            for _ in range(3):  # the cancelled calls' tasks end on the next turns of the loop
                await asyncio.sleep(0)
        if metrics_server is not None:
            metrics_server.shutdown()
    if failure is not None:
        raise failure
    if ended is not None:
        raise ended  # one line (the CLI's "flexgc: ..."), exit 1; the summary and parameters are written
    _log.info("%s %s", f"interrupted by {signals[0].name}:" if signals else "interrupted:" if interrupted else
              "finished:", _readable(summary))
    summary["params"] = trainer.state.params
    return summary


class _CancelledAtStop(logging.Filter):
    """Drops gRPC's ERROR record for a call whose wait for the client's close was cancelled by the server's own
    stop: at that point the job is over and saved, and a worker that had not yet closed its stream is being
    cut off on purpose (seen intermittently with ten workers on two loaded cores). Every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        cancelled = record.exc_info is not None and isinstance(record.exc_info[1], asyncio.CancelledError)
        return not (cancelled and record.getMessage().startswith("Exception not handled by _handle_exceptions"))


@contextlib.contextmanager
def _quiet_stop() -> Iterator[None]:
    """While the master stops its server: `_CancelledAtStop` on gRPC's server logger."""
    logger, quiet = logging.getLogger("grpc._cython.cygrpc"), _CancelledAtStop()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _claim(rundir: RunDir, cfg: MasterConfig, job_data: JobData) -> bool:
    """Make OUT this job's run directory; True if it holds this job's earlier run to resume."""
    resuming = rundir.claim(job_identity(cfg, job_data), cfg.new_run)
    rundir.check_space(6 * 8 * job_data.spec.d + (1 << 20))  # params + optimizer state, twice (atomic), + log
    return resuming


def _start_metrics(cfg: MasterConfig, metrics: Metrics) -> Any:
    if not cfg.metrics_port:
        return None
    from prometheus_client import start_http_server

    try:
        server, _ = start_http_server(cfg.metrics_port, registry=metrics.registry)
    except OSError as exc:
        raise ConfigError(f"metrics_port={cfg.metrics_port} cannot be bound ({exc.strerror}): another process "
                          f"has it? pick another --metrics-port, or 0 for no metrics") from None
    return server


def _finished_summary(out: Path | None, trainer: Trainer) -> dict[str, Any]:
    """A master started again on a finished job: say so and hand back the run's summary, untouched."""
    assert out is not None
    _log.warning("the run in %s is complete (iteration %d of %d): nothing to run, its files stay as they are (raise "
                 "--iterations to continue it, or --new-run to start over)", out, trainer.state.iteration,
                 trainer.cfg.iterations)
    try:
        summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {"next_iteration": trainer.state.iteration}
    summary["params"] = trainer.state.params
    summary["nothing_to_run"] = True  # exit 0: a restart policy (on-failure) must not start it again and again
    return summary


def _versions() -> dict[str, str]:
    """The versions behind a run's figures (the report's header shows them)."""
    import platform

    import google.protobuf
    import grpc

    return {"flexgc": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "grpcio": grpc.__version__, "protobuf": google.protobuf.__version__}


def _machine() -> dict[str, Any]:
    """Where the master ran: host name, CPU count, platform."""
    import os
    import platform
    import socket

    return {"hostname": socket.gethostname(), "cpus": os.cpu_count(), "platform": platform.platform()}


def _readable(summary: dict[str, Any]) -> str:
    lat = summary.get("latency_ms") or {}
    loss = summary.get("final_loss")

    def shown(value: Any) -> Any:
        return "-" if value is None else value  # a run of no iterations has no latency, load or loss

    return (f"iterations={summary.get('iterations')} exact={summary.get('exact_iterations')} "
            f"approximate={summary.get('approximate_iterations')} failed={summary.get('failed_iterations')} "
            f"final_loss={'-' if loss is None else f'{loss:.6g}'} "
            f"latency_ms_mean={shown(lat.get('mean'))} latency_ms_p90={shown(lat.get('p90'))} "
            f"mean_load={shown(summary.get('mean_load'))} level_use={shown(summary.get('level_use'))}")
