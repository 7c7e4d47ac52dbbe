"""A local cluster of real processes on loopback: the demo, the integration tests and the benchmarks use it.

Processes are started with the `spawn` method (gRPC does not survive fork). The master reports the
port it bound through a queue (port 0 = any free port), so nothing waits on a fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import replace
from queue import Empty
from typing import Any

from flexgc.common.config import (
    WORKER_OPTIONS,
    MasterConfig,
    WorkerConfig,
    resolve,
)

_log = logging.getLogger(__name__)
_CTX = mp.get_context("spawn")


def _setup_child_logging(level: str) -> None:
    logging.basicConfig(level=level, format=f"%(asctime)s %(levelname)s [{os.getpid()}] %(name)s %(message)s",
                        force=True)


def master_process_main(values: Mapping[str, Any], port_queue: Any, log_level: str = "WARNING") -> None:
    from flexgc.master.server import serve

    _setup_child_logging(log_level)
    cfg = MasterConfig.from_values(values)
    asyncio.run(serve(cfg, on_port=port_queue.put))


def worker_process_main(values: Mapping[str, Any], log_level: str = "WARNING") -> None:
    from flexgc.worker.client import run_worker

    _setup_child_logging(log_level)
    cfg = WorkerConfig.from_values(values)
    raise SystemExit(asyncio.run(run_worker(cfg)))


def worker_values(master: str, slot: int, **overrides: Any) -> dict[str, Any]:
    values = resolve(WORKER_OPTIONS, {"master": master, "slot": slot,
                                      "worker_id": overrides.pop("worker_id", f"local-worker-{slot}"),
                                      **overrides}, {}, None)
    WorkerConfig.from_values(values)  # validate now, in the parent, with a clear error
    return values


class LocalCluster:
    """Master and workers as separate processes; always use as a context manager (cleans up)."""

    def __init__(self, cfg: MasterConfig, log_level: str = "WARNING") -> None:
        self.cfg = cfg
        self.log_level = log_level
        self.master: mp.process.BaseProcess | None = None
        self.workers: dict[int, mp.process.BaseProcess] = {}
        self.port: int | None = None

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def target(self) -> str:
        if self.port is None:
            raise RuntimeError("master not started")
        return f"127.0.0.1:{self.port}"

    def start_master(self, timeout_s: float = 60.0, **overrides: Any) -> int:
        cfg = replace(self.cfg, **overrides) if overrides else self.cfg
        values = {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}
        queue = _CTX.Queue()
        self.master = _CTX.Process(target=master_process_main, args=(values, queue, self.log_level),
                                   name="flexgc-master")
        self.master.start()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.port = int(queue.get(timeout=0.2))
                return self.port
            except Empty:
                if not self.master.is_alive():
                    raise RuntimeError(f"master exited with code {self.master.exitcode} before listening") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"master did not report its port within {timeout_s} s") from None

    def start_worker(self, slot: int, **overrides: Any) -> mp.process.BaseProcess:
        values = worker_values(self.target, slot, token=self.cfg.token, **overrides)
        p = _CTX.Process(target=worker_process_main, args=(values, self.log_level), name=f"flexgc-worker-{slot}")
        p.start()
        self.workers[slot] = p
        return p

    def start_workers(self, **overrides: Any) -> None:
        for slot in range(self.cfg.workers):
            self.start_worker(slot, **overrides)

    def signal_worker(self, slot: int, sig: int) -> None:
        p = self.workers[slot]
        if p.pid is not None:
            os.kill(p.pid, sig)

    def wait_master(self, timeout_s: float) -> int | None:
        assert self.master is not None
        self.master.join(timeout_s)
        return self.master.exitcode

    def stop(self) -> None:
        procs = [p for p in [*self.workers.values(), self.master] if p is not None and p.pid is not None]
        for p in procs:
            if p.is_alive() and p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGCONT)  # a stopped process cannot handle SIGTERM
                p.terminate()
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
