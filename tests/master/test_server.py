"""The master process: file datasets streamed to workers, health and Prometheus metrics."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flexgc.common.config import worker_config
from flexgc.common.errors import ConfigError
from flexgc.common.models import DataSpec, full_gradient, load_dataset
from flexgc.harness.local import LocalCluster
from flexgc.master.server import serve
from flexgc.worker.client import run_worker
from tests.helpers import job_config, read_records, run_job, wait_for


def _gd_reference(X: np.ndarray, y: np.ndarray, model: str, iterations: int, lr: float, momentum: float,
                  k: int, classes: int = 1) -> np.ndarray:
    spec = DataSpec(model=model, source="master", samples=X.shape[0], features=X.shape[1], partitions=k,
                    classes=classes)
    parts = [(X[a:b], y[a:b]) for a, b in (spec.partition_bounds(j) for j in range(k))]
    w, v = np.zeros(spec.d), np.zeros(spec.d)
    for _ in range(iterations):
        v = momentum * v + full_gradient(spec, w, parts)[:-1] / spec.samples
        w = w - lr * v
    return w


@pytest.mark.parametrize("suffix", [".npz", ".csv"])
def test_file_dataset_is_streamed_to_workers_and_matches_reference(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(7)
    X = rng.standard_normal((203, 5))
    y = (X @ rng.standard_normal(5) + 0.3 * rng.standard_normal(203) > 0).astype(float)
    path = tmp_path / f"data{suffix}"
    if suffix == ".npz":
        np.savez(path, X=X, y=y)
    else:
        np.savetxt(path, np.column_stack([X, y]), delimiter=",", fmt="%.17g")
    cfg = job_config(tmp_path / "out", data=str(path), code="crc:s=1", workers=4)

    summary, _, params = run_job(cfg)

    assert summary["samples"] == 203
    reference = _gd_reference(X, y, "logistic", cfg.iterations, cfg.lr, cfg.momentum, 4)
    assert np.linalg.norm(params - reference) <= 1e-9 * np.linalg.norm(reference)


@pytest.mark.parametrize(("source", "model", "classes"), [("sklearn:iris", "softmax", 3),
                                                       ("sklearn:breast_cancer", "logistic", 1),
                                                       ("sklearn:diabetes", "least-squares", 1)])
def test_sklearn_dataset_matches_reference(tmp_path: Path, source: str, model: str, classes: int) -> None:
    pytest.importorskip("sklearn", reason="scikit-learn (the optional extra flexgc[sklearn]) is not installed")
    X, y = load_dataset(source, model)                       # standardized features, as the master loads them
    cfg = job_config(tmp_path, data=source, model=model, code="nested:levels=0,1", workers=4, iterations=5,
                     lr=0.1)

    summary, _, params = run_job(cfg)

    assert (summary["samples"], summary["model"]) == (X.shape[0], model)
    spec_ref = _gd_reference(X, y, model, cfg.iterations, cfg.lr, cfg.momentum, 4, classes)
    assert np.linalg.norm(params - spec_ref) <= 1e-9 * np.linalg.norm(spec_ref)


def test_unknown_sklearn_dataset_names_the_allowed_ones() -> None:
    with pytest.raises(ConfigError, match=r"data='sklearn:mnist'; allowed sklearn datasets: iris, wine"):
        load_dataset("sklearn:mnist", "logistic")


def test_a_run_log_that_cannot_be_written_stops_the_job(tmp_path: Path) -> None:
    """Records are flushed by a loop callback; a failure there must still end the job, not vanish."""
    cfg = job_config(tmp_path, iterations=60)
    seen: list[int] = []

    def on_record(rec: dict[str, Any]) -> None:
        seen.append(rec["iteration"])
        if rec["iteration"] == 2:
            raise OSError(28, "No space left on device")

    async def main() -> None:
        ports: asyncio.Queue[int] = asyncio.Queue()
        master = asyncio.create_task(serve(cfg, on_port=ports.put_nowait, on_record=on_record))
        port = await asyncio.wait_for(ports.get(), 30)
        workers = [asyncio.create_task(run_worker(worker_config(master=f"127.0.0.1:{port}", worker_id=f"w{i}",
                                                                slot=i))) for i in range(cfg.workers)]
        try:
            with pytest.raises(OSError, match="No space left on device"):
                await asyncio.wait_for(master, 60)
            assert await asyncio.wait_for(asyncio.gather(*workers), 30) == [0] * cfg.workers  # told to stop
        finally:
            for task in (master, *workers):
                task.cancel()
            await asyncio.gather(master, *workers, return_exceptions=True)

    asyncio.run(main())

    assert seen == [0, 1, 2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_endpoint_and_health(tmp_path: Path) -> None:
    from flexgc.cli import main

    metrics_port = _free_port()
    cfg = job_config(tmp_path, iterations=10_000, metrics_port=metrics_port)
    with LocalCluster(cfg) as cluster:
        port = cluster.start_master()
        cluster.start_workers()
        wait_for(lambda: len(read_records(tmp_path)) >= 3, 60, "3 iterations")
        assert main(["health", "--target", f"127.0.0.1:{port}", "--service", "flexgc.v1.Coordinator"]) == 0
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    for name in ("flexgc_iteration_latency_seconds_bucket", "flexgc_result_latency_seconds_bucket",
                 "flexgc_decode_seconds_count", "flexgc_level_used_total", "flexgc_cancelled_partitions_total",
                 'flexgc_bytes_total{direction="up"}', "flexgc_connected_workers",
                 'flexgc_iterations_total{outcome="EXACT"}'):
        assert name in body, name
    assert main(["health", "--target", f"127.0.0.1:{port}", "--timeout-s", "1"]) == 1  # master is gone


def test_the_stop_filter_drops_only_grpcs_cancelled_call_record() -> None:
    import asyncio
    import logging

    from flexgc.master.server import _CancelledAtStop

    def record(message: str, exc: BaseException | None) -> logging.LogRecord:
        return logging.LogRecord("grpc._cython.cygrpc", logging.ERROR, "server.pyx.pxi", 812, message, None,
                                 (type(exc), exc, None) if exc is not None else None)

    quiet = _CancelledAtStop()
    assert not quiet.filter(record("Exception not handled by _handle_exceptions in servicer method [/x/Work]",
                                   asyncio.CancelledError()))
    assert quiet.filter(record("Exception not handled by _handle_exceptions in servicer method [/x/Work]",
                               ValueError("a real error")))
    assert quiet.filter(record("Unexpected [ValueError] raised by servicer method [/x/Work]", None))
