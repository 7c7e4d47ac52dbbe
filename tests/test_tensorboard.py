"""The TensorBoard writer (flexgc/tensorboard.py, extra flexgc[tensorboard]): a job's event file read back."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from flexgc.api import train
from flexgc.common.errors import ConfigError
from flexgc.tensorboard import TensorBoard, read_scalars

pytest.importorskip("tensorboardX", reason="tensorboardX (the optional extra flexgc[tensorboard]) is not installed")

pytestmark = pytest.mark.slow


def test_a_jobs_figures_are_in_the_event_file(tmp_path: Path) -> None:
    logdir = tmp_path / "tb"

    run = train(workers=4, code="nested:levels=0,1,2", iterations=6, samples=240, features=6, join_timeout_s=1.0,
                dead=(0,), val_fraction=0.2, eval_every=3, tensorboard=str(logdir), out=str(tmp_path / "run"))

    scalars = read_scalars(logdir)
    steps = list(range(6))
    assert [s for s, _ in scalars["train/loss"]] == steps
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([r["loss"] for r in run.records], rel=1e-6)
    assert [s for s, _ in scalars["iteration/latency_ms"]] == steps
    assert [v for _, v in scalars["iteration/exact"]] == [1.0] * 6
    assert scalars["straggler_score/slot_0"][-1] == (5, 1.0)       # the dead slot straggled in every iteration
    assert all(0.0 <= v <= 1.0 for _, v in scalars["straggler_score/slot_1"])
    level_use = [dict(scalars[tag]) for tag in scalars if tag.startswith("level_use/")]
    assert all(sum(use.get(t, 0.0) for use in level_use) == pytest.approx(1.0) for t in steps)
    assert [s for s, _ in scalars["validation/accuracy"]] == [2, 5]
    assert [v for _, v in scalars["validation/loss"]] == pytest.approx([e["val_loss"] for e in run.evaluations],
                                                                      rel=1e-6)
    assert all(0.0 < v <= 1.0 for _, v in scalars["load/mean"])


def test_a_corrupt_record_is_refused(tmp_path: Path) -> None:
    writer = TensorBoard(tmp_path)
    writer._writer.add_scalar("x", 1.0, 0)
    writer.close()
    path = next(tmp_path.glob("events.out.tfevents.*"))
    data = bytearray(path.read_bytes())
    assert read_scalars(tmp_path) == {"x": [(0, 1.0)]}

    data[-6] ^= 0xFF                                               # a byte of the last record's data
    path.write_bytes(bytes(data))

    with pytest.raises(ValueError, match="fails its CRC-32C"):
        read_scalars(tmp_path)


def test_without_tensorboardx_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorboardX", None)         # import tensorboardX raises ImportError

    with pytest.raises(ConfigError, match=r"tensorboard='.*' needs tensorboardX: pip install 'flexgc\[tensorboard\]'"):
        TensorBoard(tmp_path)
