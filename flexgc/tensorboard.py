"""TensorBoard event files of a job (the optional extra ``flexgc[tensorboard]``: tensorboardX, which writes
them with protobuf alone: no TensorFlow, no PyTorch).

`TensorBoard(logdir)` is a callback (`flexgc.Job(..., callbacks=[...])`, or ``--tensorboard DIR`` on
``flexgc master``). Per iteration t it writes the scalars

    train/loss                     the mean training loss (not for a FAILED iteration)
    iteration/latency_ms           task first sent -> gradient decoded
    iteration/level                the highest level the decode used (not for a FAILED iteration)
    iteration/stragglers           slots none of whose rows the decode used
    iteration/exact                1 for an EXACT iteration, 0 otherwise
    level_use/level_L              the fraction of the iterations so far decoded at level L
    load/mean, load/max            over the slots: the fraction of the data whose results had arrived
    straggler_score/slot_I         the fraction of the iterations so far in which slot I was a straggler
    validation/loss, validation/accuracy   when the iteration was evaluated (--eval-every)

and at the end ``validation/*`` of the final parameters when they were evaluated after the last iteration.
`read_scalars(logdir)` reads them back (for tests and scripts; TensorBoard itself needs nothing of it).
"""

from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from flexgc.common.errors import ConfigError
from flexgc.master.hooks import IterationInfo


class TensorBoard:
    """Writes each iteration's figures to event files in `logdir` (created if missing)."""

    def __init__(self, logdir: str | Path, flush_secs: float = 10.0) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ConfigError(f"tensorboard={str(logdir)!r} needs tensorboardX: pip install 'flexgc[tensorboard]'") \
                from None
        self.logdir = Path(logdir)
        try:
            self.logdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"tensorboard={str(logdir)!r}: cannot create it ({exc.strerror})") from None
        self._writer = SummaryWriter(str(self.logdir), flush_secs=int(max(1, flush_secs)))
        self._levels: Counter[int] = Counter()
        self._straggled: np.ndarray | None = None
        self._seen = 0
        self._last_evaluated = -1

    def on_iteration(self, info: IterationInfo) -> None:
        """The scalars of one iteration (module docstring)."""
        t, w = info.iteration, self._writer
        self._seen += 1
        if info.loss is not None:
            w.add_scalar("train/loss", info.loss, t)
        w.add_scalar("iteration/latency_ms", info.latency_ms, t)
        w.add_scalar("iteration/stragglers", len(info.stragglers), t)
        w.add_scalar("iteration/exact", float(info.outcome == "EXACT"), t)
        if info.level is not None:
            w.add_scalar("iteration/level", info.level, t)
            self._levels[info.level] += 1
        for level, count in sorted(self._levels.items()):
            w.add_scalar(f"level_use/level_{level}", count / self._seen, t)
        if info.load:
            w.add_scalar("load/mean", float(np.mean(info.load)), t)
            w.add_scalar("load/max", float(np.max(info.load)), t)
        if self._straggled is None or self._straggled.size != info.n:
            self._straggled = np.zeros(info.n)
        self._straggled[list(info.stragglers)] += 1
        for slot, count in enumerate(self._straggled):
            w.add_scalar(f"straggler_score/slot_{slot}", count / self._seen, t)
        if info.validation is not None:
            self._validation(info.validation, t)

    def _validation(self, figures: dict[str, Any], t: int) -> None:
        self._last_evaluated = t
        self._writer.add_scalar("validation/loss", figures["val_loss"], t)
        if "val_accuracy" in figures:
            self._writer.add_scalar("validation/accuracy", figures["val_accuracy"], t)

    def on_end(self, run: Any) -> None:
        """The final evaluation, when the job evaluated after its last iteration."""
        final = run.summary.get("validation") if run.summary else None
        if final is not None and final["iteration"] != self._last_evaluated:
            self._validation(final, final["iteration"])

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()


def read_scalars(logdir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files of `logdir`: tag -> [(step, value), ...] in file order. Each record's
    length and data are checked against their CRC-32C (ValueError naming the file if one is wrong); a torn
    last record, still being written, is left out."""
    from tensorboardX.proto import event_pb2
    from tensorboardX.record_writer import masked_crc32c

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(logdir).glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos + 12 <= len(data):
            header = data[pos: pos + 8]
            (length,) = struct.unpack("<Q", header)
            end = pos + 12 + length + 4
            if end > len(data):
                break
            body = data[pos + 12: pos + 12 + length]
            crcs = struct.unpack_from("<I", data, pos + 8) + struct.unpack_from("<I", data, end - 4)
            if crcs != (masked_crc32c(header), masked_crc32c(body)):
                raise ValueError(f"{path}: the record at byte {pos} fails its CRC-32C")
            event = event_pb2.Event.FromString(body)
            pos = end
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    out.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
    return out
