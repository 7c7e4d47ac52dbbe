"""The run directory: one job identity per directory, atomic writes that fail cleanly, space warnings."""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path
from typing import BinaryIO

import pytest

from flexgc.common.errors import ConfigError, StorageError
from flexgc.master.rundir import RunDir, write_atomic

IDENTITY = {"code": "crc:s=1", "workers": 4, "d": 10, "lr": 0.5}


def test_a_fresh_directory_is_claimed_and_the_same_job_resumes(tmp_path: Path) -> None:
    first = RunDir(tmp_path / "run").claim(IDENTITY)
    (tmp_path / "run" / "run.jsonl").write_text("{}\n")

    again = RunDir(tmp_path / "run").claim(dict(IDENTITY))

    assert (first, again) == (False, True)
    assert json.loads((tmp_path / "run" / "job.json").read_text()) == IDENTITY


def test_another_job_is_refused_with_every_difference_and_nothing_changes(tmp_path: Path) -> None:
    RunDir(tmp_path).claim(IDENTITY)
    before = (tmp_path / "job.json").read_bytes()

    with pytest.raises(ConfigError) as info:
        RunDir(tmp_path).claim({**IDENTITY, "d": 11, "lr": 0.1, "optimizer": "adam"})

    assert "d: 10 -> 11; lr: 0.5 -> 0.1; optimizer: None -> 'adam'" in str(info.value)
    assert (tmp_path / "job.json").read_bytes() == before


def test_new_run_moves_every_run_file_aside(tmp_path: Path) -> None:
    RunDir(tmp_path).claim(IDENTITY)
    (tmp_path / "run.jsonl").write_text("old\n")

    resumed = RunDir(tmp_path).claim({**IDENTITY, "d": 11}, new_run=True)

    (aside,) = tmp_path.glob("previous-*")
    assert resumed is False
    assert sorted(p.name for p in aside.iterdir()) == ["job.json", "run.jsonl"]
    assert (aside / "run.jsonl").read_text() == "old\n"
    assert json.loads((tmp_path / "job.json").read_text())["d"] == 11


def test_files_without_a_job_file_are_not_resumed(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.npz").write_bytes(b"x")

    with pytest.raises(ConfigError, match=r"holds checkpoint\.npz but no job\.json"):
        RunDir(tmp_path).claim(IDENTITY)


def test_the_demo_clears_only_its_own_run(tmp_path: Path) -> None:
    RunDir(tmp_path).claim(IDENTITY)
    (tmp_path / "run.jsonl").write_text("old\n")

    RunDir(tmp_path).clear_own_run(IDENTITY)
    assert list(tmp_path.iterdir()) == []

    RunDir(tmp_path).claim({**IDENTITY, "d": 3})
    with pytest.raises(ConfigError, match="holds another run"):
        RunDir(tmp_path).clear_own_run(IDENTITY)


def test_a_failed_atomic_write_removes_its_temporary_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.npz"
    target.write_bytes(b"good")

    def half_then_full(fh: BinaryIO) -> None:
        fh.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StorageError) as info:
        write_atomic(target, half_then_full)

    assert str(info.value) == f"cannot write {target}: [ENOSPC] No space left on device; the disk is full"
    assert target.read_bytes() == b"good" and not list(tmp_path.glob("*.tmp"))


def test_low_space_is_warned_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        RunDir(tmp_path).check_space(1 << 62)
        RunDir(tmp_path).check_space(1)

    assert caplog.text.count("low disk space") == 1
