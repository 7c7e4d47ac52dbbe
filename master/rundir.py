"""The run directory (`--out`): one job's files, never lost and never mixed with another job's.

A run directory belongs to one job identity, written to OUT/job.json when the job first starts: code, n,
model, d, dtype, data source and its fingerprint, learning rate and momentum (and optimizer), delay spec
and seed. A master started again on the same directory resumes only if the identity is the same;
otherwise it refuses, naming every differing field with both values, unless asked for a new run
(`--new-run`), which moves the old run's files aside into OUT/previous-<UTC time>/ and deletes nothing
(OUT may be a mount point, so the directory itself stays).

Writes are atomic (a temporary file beside the target, fsync, rename) or appends of whole records; a
write that fails (e.g. a full disk) raises `StorageError` naming the path and the errno after removing
its temporary file, so the last good checkpoint and every complete run-log record stay intact.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from flexgc.common.config import MasterConfig
from flexgc.common.delays import parse_delay
from flexgc.common.errors import ConfigError, StorageError
from flexgc.master.adapt import AdaptPolicy, job_code
from flexgc.master.data import JobData

_log = logging.getLogger(__name__)

JOB_FILE = "job.json"
RUN_FILES = ("job.json", "run.jsonl", "checkpoint.npz", "params.npy", "summary.json", "report.html")
# the fields of a job identity; a field a MasterConfig does not have (yet) is left out
IDENTITY_FIELDS = ("code", "workers", "model", "data", "samples", "features", "classes", "data_seed", "dtype", "lr",
                   "momentum", "optimizer", "batch_size", "batch_seed", "delay", "delay_seed")


def job_identity(cfg: MasterConfig, data: JobData | None = None) -> dict[str, Any]:
    """What makes a run directory one job's: its computation's inputs (canonical specs, the data's
    fingerprint), not how long it runs or where it listens. `data`: the job's data if already loaded."""
    # the job's first code as it runs: an adaptive job's is split into finer partitions, and synthetic data
    # is generated per partition, so the same spec at another split is another dataset
    code = job_code(cfg.code, cfg.workers, AdaptPolicy.of(cfg))
    data = data or JobData.from_config(cfg, code)
    identity = {name: getattr(cfg, name) for name in IDENTITY_FIELDS if hasattr(cfg, name)}
    identity.update(code=code.spec, delay=parse_delay(cfg.delay).spec, data_fingerprint=data.fingerprint,
                    d=data.spec.d)
    return identity


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write a temporary file beside `path`, fsync, rename: a reader sees the old file or the whole new one.
    On failure the temporary file is removed, `path` is untouched, and StorageError says why."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(path, exc) from None


def check_out_dir(path: Path) -> None:
    """Make `path` a directory this user can write, or ConfigError in one line (for every --out)."""
    try:
        if path.exists() and not path.is_dir():
            raise ConfigError(f"out={str(path)!r} is a file, not a directory; name a directory for the run")
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"out={str(path)!r}: cannot create it ({exc.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"out={str(path)!r} is not writable by this user; name a directory it can write")


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


class RunDir:
    """OUT, claimed for one job identity (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def job_file(self) -> Path:
        return self.path / JOB_FILE

    def claim(self, identity: Mapping[str, Any], new_run: bool = False) -> bool:
        """Make OUT this job's: True if it resumes the same job's earlier run, False for a fresh one.

        ConfigError if OUT is a file, cannot be written, or holds another job's run (unless `new_run`,
        which first moves that run aside)."""
        self._check_writable()
        held = [f for f in RUN_FILES if (self.path / f).exists()]
        if held and new_run:
            aside = self.path / f"previous-{datetime.datetime.now(datetime.UTC):%Y%m%dT%H%M%S.%fZ}"
            try:
                aside.mkdir()
                for name in held:
                    (self.path / name).rename(aside / name)
            except OSError as exc:
                raise StorageError(aside, exc) from None
            _log.warning("new run: the previous run's files in %s were moved to %s", self.path, aside)
            held = []
        if not held:
            write_atomic(self.job_file, lambda fh: fh.write((json.dumps(dict(identity), indent=2) + "\n").encode()))
            return False
        if not self.job_file.exists():
            raise ConfigError(f"out={str(self.path)!r} holds {', '.join(held)} but no {JOB_FILE}: not a run this "
                              f"master can resume; use another --out, or --new-run to move it aside")
        try:
            old = json.loads(self.job_file.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"out={str(self.path)!r}: cannot read {JOB_FILE} ({exc}); use --new-run to move "
                              f"the run aside") from None
        diff = _differences(old, identity)
        if diff:
            raise ConfigError(f"out={str(self.path)!r} holds a run of another job ({'; '.join(diff)}); resume it "
                              f"with the same options, use another --out, or pass --new-run to move it aside")
        return True

    def clear_own_run(self, identity: Mapping[str, Any]) -> None:
        """Remove the run files of a previous run of this very job (the demo starts fresh each time);
        ConfigError if OUT holds any other run."""
        self._check_writable()
        held = [f for f in RUN_FILES if (self.path / f).exists()]
        if not held:
            return
        try:
            same = self.job_file.exists() and json.loads(self.job_file.read_text()) == dict(identity)
        except (OSError, ValueError):
            same = False
        if not same:
            raise ConfigError(f"out={str(self.path)!r} holds another run ({', '.join(held)}); name another --out "
                              f"for the demo")
        for name in held:
            (self.path / name).unlink(missing_ok=True)

    def _check_writable(self) -> None:
        check_out_dir(self.path)

    def check_space(self, needed_bytes: int) -> None:
        """Warn when the filesystem of OUT has less free space than `needed_bytes` (a checkpoint and its
        temporary copy, plus the run log's growth)."""
        free = shutil.disk_usage(self.path).free
        if free < needed_bytes:
            _log.warning("low disk space out=%s free_bytes=%d needed_bytes=%d: checkpoints may fail; the job "
                         "ends at the first write that does", self.path, free, needed_bytes)
