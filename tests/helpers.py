"""Shared helpers for the integration tests: run real jobs, read run logs, wait on conditions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from flexgc.common.config import MasterConfig, master_config
from flexgc.common.models import full_gradient
from flexgc.harness.local import LocalCluster
from flexgc.master.accounting import read_run_log
from flexgc.master.adapt import AdaptPolicy, job_code
from flexgc.master.data import JobData
from flexgc.v1 import coordinator_pb2 as pb


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.02) -> Any:
    """Poll a condition until it holds or the deadline passes (then fail with `what`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def read_records(out: Path) -> list[dict[str, Any]]:
    """The complete records of OUT/run.jsonl; safe while the master is still writing it."""
    return read_run_log(out / "run.jsonl")


def job_config(out: Path, **overrides: Any) -> MasterConfig:
    base: dict[str, Any] = dict(host="127.0.0.1", port=0, workers=4, code="nested:levels=0,1,2", iterations=4,
                                samples=240, features=6, out=str(out), checkpoint_every=0, dtype="float64",
                                join_timeout_s=30.0, deadline_s=30.0, lr=0.5, momentum=0.5,
                                # the tests of one code's behaviour run it static; adaptive runs ask for it
                                adapt="off")
    base.update(overrides)
    return master_config(**base)


def run_job(cfg: MasterConfig, dead: tuple[int, ...] = (), timeout_s: float = 90.0, absent: tuple[int, ...] = (),
            **worker_overrides: Any) -> tuple[dict[str, Any], list[dict[str, Any]], np.ndarray]:
    """Run `cfg` with a worker per slot; those in `dead` join and never answer (a hung process), those in
    `absent` are never started (the master starts after --join-timeout-s if the others can decode exactly)."""
    out = Path(cfg.out or "")
    with LocalCluster(cfg) as cluster:
        cluster.start_master()
        for slot in range(cfg.workers):
            if slot in absent:
                continue
            if slot in dead:
                cluster.start_worker(slot, **{**worker_overrides, "delay": f"none/dead:workers={slot}"})
            else:
                cluster.start_worker(slot, **worker_overrides)
        rc = cluster.wait_master(timeout_s)
        assert rc == 0, f"master exit code {rc}"
    summary = json.loads((out / "summary.json").read_text())
    return summary, read_records(out), np.load(out / "params.npy")


def centralized_params(cfg: MasterConfig) -> np.ndarray:
    """Full-batch gradient descent with the same data, optimizer and iteration count, in one process."""
    code = job_code(cfg.code, cfg.workers, AdaptPolicy.of(cfg))  # --adapt runs on finer partitions
    data = JobData.from_config(cfg, code)  # synthetic rows, or the dataset the master loads (sklearn:NAME, a file)
    spec = data.spec
    parts = [data.partition(j) for j in range(code.k)]
    w = np.zeros(spec.d)
    v = np.zeros(spec.d)
    for _ in range(cfg.iterations):
        g = full_gradient(spec, w, parts)[:-1] / spec.samples
        v = cfg.momentum * v + g
        w = w - cfg.lr * v
    return w


def edited_chunk(chunk: pb.ResultChunk, **changes: Any) -> pb.ResultChunk:
    """A copy of a result chunk with some fields changed (`times` takes a PartitionTimes message)."""
    out = pb.ResultChunk()
    out.CopyFrom(chunk)
    for key, value in changes.items():
        if key == "times":
            out.times.CopyFrom(value)
        else:
            setattr(out, key, value)
    return out


def master_args(cfg: MasterConfig) -> list[str]:
    """`flexgc master` arguments for `cfg` (the options that differ from their defaults)."""
    from flexgc.common.config import MASTER_OPTIONS

    args = []
    for opt in MASTER_OPTIONS:
        value = getattr(cfg, opt.name)
        if value == opt.default:
            continue
        if opt.kind is bool:
            args.append(opt.flag if value else "--no-" + opt.flag[2:])
        else:
            args += [opt.flag, str(value)]
    return args


def run_cli(*args: str, timeout_s: float = 60.0, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`flexgc ARGS` in a fresh interpreter, as a user runs it; stdout and stderr captured."""
    return subprocess.run([sys.executable, "-m", "flexgc", *args], capture_output=True, text=True,
                          timeout=timeout_s, env={**os.environ, **(env or {})}, cwd=cwd)


def one_line_error(run: subprocess.CompletedProcess[str], rc: int, *needles: str) -> str:
    """The one `flexgc...` line a failed command printed (asserting its exit code `rc`, no traceback, and that
    the line holds each of `needles`)."""
    lines = [line for line in run.stderr.splitlines() if line.startswith("flexgc")]
    assert run.returncode == rc, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    assert len(lines) == 1, run.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
