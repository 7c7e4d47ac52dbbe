"""A local cluster of real processes on loopback: the demo, the integration tests and the benchmarks use it.

Processes are started with the `spawn` method (gRPC does not survive fork) and stopped through the
harness's one supervision path (`processes.stop_all`). The master reports the port it bound through a
queue (port 0 = any free port), so nothing waits on a fixed sleep.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
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
from flexgc.harness.processes import SPAWN, SpawnedChild, stop_all

_log = logging.getLogger(__name__)


def _setup_child_logging(level: str) -> None:
    logging.basicConfig(level=level, format=f"%(asctime)s %(levelname)s [{os.getpid()}] %(name)s %(message)s",
                        force=True)


def master_process_main(values: Mapping[str, Any], port_queue: Any, log_level: str = "WARNING") -> None:
    from flexgc.master.server import serve

    _setup_child_logging(log_level)
    cfg = MasterConfig.from_values(values)
    asyncio.run(serve(cfg, on_port=port_queue.put))


def worker_process_main(values: Mapping[str, Any], log_level: str = "WARNING") -> None:
    from flexgc.worker.client import run_worker, run_workers

    _setup_child_logging(log_level)
    cfg = WorkerConfig.from_values(values)
    raise SystemExit(asyncio.run(run_workers(cfg) if cfg.slots > 1 else run_worker(cfg)))


def worker_values(master: str, slot: int, **overrides: Any) -> dict[str, Any]:
    """A worker's option values (worker id `local-worker-<slot>` unless given), checked here in the parent."""
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
        self._master: SpawnedChild | None = None
        self._workers: dict[int, SpawnedChild] = {}      # slot -> its latest process
        self._children: list[SpawnedChild] = []          # every process started, for stop()
        self.port: int | None = None

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def master(self) -> mp.process.BaseProcess | None:
        return self._master.process if self._master is not None else None

    @property
    def workers(self) -> dict[int, mp.process.BaseProcess]:
        return {slot: child.process for slot, child in self._workers.items()}

    @property
    def target(self) -> str:
        if self.port is None:
            raise RuntimeError("master not started")
        return f"127.0.0.1:{self.port}"

    def start_master(self, timeout_s: float = 60.0, **overrides: Any) -> int:
        """Start the master process (config overrides as keyword arguments); the port it bound."""
        cfg = replace(self.cfg, **overrides) if overrides else self.cfg
        values = {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}
        queue = SPAWN.Queue()
        master = self._master = SpawnedChild(master_process_main, (values, queue, self.log_level), "flexgc-master")
        self._children.append(master)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.port = int(queue.get(timeout=0.2))
                return self.port
            except Empty:
                if not master.process.is_alive():
                    raise RuntimeError(f"master exited with code {master.returncode()} before listening") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"master did not report its port within {timeout_s} s") from None

    def start_worker(self, slot: int, *, any_slot: bool = False, **overrides: Any) -> mp.process.BaseProcess:
        """Start a worker process for `slot` (worker option overrides as keyword arguments); with `any_slot`
        it asks for no slot in particular (the master picks one) and `slot` only names the process here."""
        values = worker_values(self.target, -1 if any_slot else slot, token=self.cfg.token, **overrides)
        child = SpawnedChild(worker_process_main, (values, self.log_level), f"flexgc-worker-{slot}")
        self._workers[slot] = child
        self._children.append(child)
        return child.process

    def start_workers(self, per_process: int = 1, **overrides: Any) -> None:
        """A worker for every slot: one process each, or `per_process` slots per process (`--slots`; the
        process of slots s.. is `workers[s]`)."""
        for first in range(0, self.cfg.workers, per_process):
            slots = min(per_process, self.cfg.workers - first)
            extra: dict[str, Any] = {"slots": slots} if slots > 1 else {}
            self.start_worker(first, **extra, **overrides)

    def signal_worker(self, slot: int, sig: int) -> None:
        self._workers[slot].send(sig)

    def signal_master(self, sig: int) -> None:
        if self._master is None:
            raise RuntimeError("master not started")
        self._master.send(sig)

    def wait_master(self, timeout_s: float) -> int | None:
        """The master's exit code once it has exited, or None if it still runs after timeout_s."""
        if self._master is None:
            raise RuntimeError("master not started")
        return self._master.wait(timeout_s)

    def stop(self) -> None:
        """SIGTERM every process still running (workers first), SIGKILL after 5 s; idempotent."""
        workers = [c for c in self._children if c is not self._master]
        stop_all([*workers, *([self._master] if self._master else [])])
