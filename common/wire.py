"""The one module that turns protobuf messages into domain values and back (STYLE §4).

Vectors travel as raw little-endian bytes (``<f4`` or ``<f8``) split into chunks of at most
`chunk_bytes`; the sender makes one ``tobytes()`` per chunk of a flat view, the receiver reads
``msg.data`` once, checks dtype, offset, size and finiteness, and fills its row of a preallocated
buffer. Only an explicit ``last`` flag ends a result. Nothing is ever pickled.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from flexgc.common.errors import WireError
from flexgc.common.transport import MAX_MESSAGE_BYTES
from flexgc.v1 import coordinator_pb2 as pb

WIRE_DTYPES: dict[str, np.dtype] = {"<f4": np.dtype("<f4"), "<f8": np.dtype("<f8")}


def wire_dtype(dtype: str | np.dtype) -> str:
    dt = np.dtype(dtype)
    if dt.kind == "f" and dt.itemsize in (4, 8):
        return "<f4" if dt.itemsize == 4 else "<f8"
    raise WireError(f"dtype={dt}; allowed: float32, float64")


def numpy_dtype(name: str) -> np.dtype:
    try:
        return WIRE_DTYPES[name]
    except KeyError:
        raise WireError(f"dtype={name!r}; allowed: {', '.join(WIRE_DTYPES)}") from None


def chunk_slices(total_elements: int, itemsize: int, chunk_bytes: int) -> Iterator[tuple[int, int]]:
    """(start, stop) element ranges of at most `chunk_bytes` bytes; one empty range for a 0-length vector."""
    per = max(1, chunk_bytes // itemsize)
    if total_elements == 0:
        yield 0, 0
        return
    for start in range(0, total_elements, per):
        yield start, min(total_elements, start + per)


def _flat_le(vector: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(vector).reshape(-1)
    if flat.dtype.byteorder == ">" or (flat.dtype.byteorder == "=" and not np.little_endian):
        flat = flat.astype(flat.dtype.newbyteorder("<"))
    return flat


# ---------------------------------------------------------------------------------------------
# timings


@dataclass(slots=True)
class PartitionTimes:
    compute_ms: list[float] = field(default_factory=list)
    delay_ms: list[float] = field(default_factory=list)


def times_to_proto(times: PartitionTimes) -> pb.PartitionTimes:
    return pb.PartitionTimes(compute_ms=times.compute_ms, delay_ms=times.delay_ms)


def times_from_proto(msg: pb.PartitionTimes, max_len: int) -> PartitionTimes:
    compute, delay = list(msg.compute_ms), list(msg.delay_ms)
    if len(compute) > max_len or len(delay) > max_len:
        raise WireError(f"partition times list longer than {max_len} partitions")
    if not all(math.isfinite(x) and x >= 0 for x in compute) or not all(x >= 0 for x in delay):
        raise WireError("partition times must be finite and >= 0")
    return PartitionTimes(compute, delay)


# ---------------------------------------------------------------------------------------------
# results (worker -> master)


def result_chunks(iteration: int, slot: int, level: int, vector: np.ndarray, chunk_bytes: int,
                  times: PartitionTimes | None = None, task_done: bool = False) -> Iterator[pb.WorkerMessage]:
    """Split a coded vector into ResultChunk messages, the last one flagged `last` (and `task_done` if
    this vector is the last thing the task asked for)."""
    flat = _flat_le(vector)
    name = wire_dtype(flat.dtype)
    d = flat.size
    slices = list(chunk_slices(d, flat.itemsize, chunk_bytes))
    for index, (start, stop) in enumerate(slices):
        # filled in place: WorkerMessage(result=chunk) would copy the whole chunk once more
        msg = pb.WorkerMessage()
        chunk = msg.result
        chunk.iteration, chunk.slot, chunk.level, chunk.dtype = iteration, slot, level, name
        chunk.total_elements, chunk.offset, chunk.last = d, start, index == len(slices) - 1
        chunk.task_done = task_done and chunk.last
        chunk.data = flat[start:stop].tobytes()
        if (index == 0 or chunk.task_done) and times is not None:
            # the flagged chunk carries them too: if it crosses a Cancel, it is all the master keeps
            chunk.times.CopyFrom(times_to_proto(times))
        yield msg


@dataclass(slots=True)
class ChunkHeader:
    iteration: int
    slot: int
    level: int
    offset: int
    last: bool
    times: PartitionTimes | None
    task_done: bool


def result_header(chunk: pb.ResultChunk, expected_dtype: str, d: int, n_levels: int,
                  max_partitions: int) -> ChunkHeader:
    """Validate what can be checked without the destination row."""
    if chunk.dtype != expected_dtype:
        raise WireError(f"slot={chunk.slot} iteration={chunk.iteration}: dtype={chunk.dtype!r}, "
                        f"expected {expected_dtype!r}")
    if chunk.total_elements != d:
        raise WireError(f"slot={chunk.slot} iteration={chunk.iteration}: total_elements="
                        f"{chunk.total_elements}, expected d={d}")
    if not 0 <= chunk.level < n_levels:
        raise WireError(f"slot={chunk.slot}: level={chunk.level}; allowed 0..{n_levels - 1}")
    if chunk.task_done and not (chunk.last and chunk.level == n_levels - 1):
        raise WireError(f"slot={chunk.slot} iteration={chunk.iteration}: task_done on a chunk that is not "
                        f"the last of the last level (level={chunk.level}, last={chunk.last}; the task has "
                        f"{n_levels} levels)")
    times = times_from_proto(chunk.times, max_partitions) if chunk.HasField("times") else None
    return ChunkHeader(chunk.iteration, chunk.slot, chunk.level, chunk.offset, chunk.last, times, chunk.task_done)


def accept_chunk(row: np.ndarray, filled: int, chunk: pb.ResultChunk) -> int:
    """Copy a validated chunk into `row` at `filled`; return the new fill count.

    Raises WireError on an out-of-order offset, a size that does not fit, a truncated sequence (last
    chunk before the row is full) or NaN/Inf values. The row is only written after every check passed.
    """
    data = chunk.data  # each access copies with upb: read once
    itemsize = row.itemsize
    if len(data) > MAX_MESSAGE_BYTES:
        raise WireError(f"slot={chunk.slot} iteration={chunk.iteration}: oversized chunk of {len(data)} B "
                        f"(limit {MAX_MESSAGE_BYTES} B)")
    if len(data) % itemsize:
        raise WireError(f"slot={chunk.slot} iteration={chunk.iteration}: {len(data)} B is not a multiple "
                        f"of {itemsize}")
    count = len(data) // itemsize
    if chunk.offset != filled or filled + count > row.size:
        raise WireError(f"slot={chunk.slot} iteration={chunk.iteration}: {count} elements at offset "
                        f"{chunk.offset} do not fit row ({filled}/{row.size} filled)")
    if chunk.last and filled + count != row.size:
        raise WireError(f"slot={chunk.slot} iteration={chunk.iteration}: truncated result, last chunk "
                        f"ends at {filled + count} of {row.size}")
    part = np.frombuffer(data, row.dtype)
    if not np.isfinite(part).all():
        raise WireError(f"slot={chunk.slot} iteration={chunk.iteration} level={chunk.level}: NaN/Inf in "
                        f"result")
    row[filled:filled + count] = part
    return filled + count


# ---------------------------------------------------------------------------------------------
# tasks (master -> worker)


@dataclass(frozen=True, slots=True)
class TaskHeader:
    iteration: int
    dtype: str
    total_elements: int
    deadline_s: float
    max_levels: int


def task_messages(iteration: int, params: np.ndarray, chunk_bytes: int, deadline_s: float,
                  max_levels: int, inline: bool = False) -> list[pb.MasterMessage]:
    """The Task header and its ParamsChunk messages; built once per iteration, sent to every worker.
    With `inline`, parameters that fit one chunk travel inside the Task (a single message)."""
    flat = _flat_le(params)
    header = pb.MasterMessage(task=pb.Task(iteration=iteration, dtype=wire_dtype(flat.dtype),
                                           total_elements=flat.size, deadline_s=deadline_s,
                                           max_levels=max_levels))
    out = [header]
    slices = list(chunk_slices(flat.size, flat.itemsize, chunk_bytes))
    if inline and len(slices) == 1:
        header.task.params_inline = True
        header.task.params = flat.tobytes()
        return out
    for index, (start, stop) in enumerate(slices):
        msg = pb.MasterMessage()  # filled in place: MasterMessage(params=chunk) would copy the chunk again
        chunk = msg.params
        chunk.iteration, chunk.offset, chunk.last = iteration, start, index == len(slices) - 1
        chunk.data = flat[start:stop].tobytes()
        out.append(msg)
    return out


class Preserialized:
    """A MasterMessage serialized once and written to many streams (the same task goes to every worker:
    without this gRPC serializes it again per worker, n x the parameter bytes per iteration). Attribute
    access goes to the message, so code and tests read it like the message itself."""

    __slots__ = ("data", "message")

    def __init__(self, message: pb.MasterMessage) -> None:
        self.message = message
        self.data = message.SerializeToString()

    def __getattr__(self, name: str) -> object:
        return getattr(self.message, name)


def serialize_master_message(msg: pb.MasterMessage | Preserialized) -> bytes:
    """The Work stream's response serializer: pre-serialized bytes as they are, anything else as usual."""
    if isinstance(msg, Preserialized):
        return msg.data
    return msg.SerializeToString()


def task_header(msg: pb.Task, expected_d: int, n_levels: int) -> TaskHeader:
    numpy_dtype(msg.dtype)
    if msg.total_elements != expected_d:
        raise WireError(f"task iteration={msg.iteration}: total_elements={msg.total_elements}, "
                        f"expected {expected_d}")
    if msg.iteration < 0:
        raise WireError(f"task iteration={msg.iteration} < 0")
    if not 1 <= msg.max_levels <= n_levels:
        raise WireError(f"task iteration={msg.iteration}: max_levels={msg.max_levels}; allowed 1..{n_levels}")
    if not math.isfinite(msg.deadline_s) or msg.deadline_s < 0:
        raise WireError(f"task iteration={msg.iteration}: deadline_s={msg.deadline_s} must be >= 0")
    return TaskHeader(msg.iteration, msg.dtype, msg.total_elements, msg.deadline_s, msg.max_levels)


def accept_inline_params(buf: np.ndarray, task: pb.Task) -> int:
    """Fill `buf` from a Task that carries its parameters inline; returns the fill count."""
    data = task.params  # read once
    if len(data) != buf.nbytes:
        raise WireError(f"task iteration={task.iteration}: {len(data)} B of inline params, expected {buf.nbytes}")
    part = np.frombuffer(data, buf.dtype)
    if not np.isfinite(part).all():
        raise WireError(f"params of iteration {task.iteration}: NaN/Inf")
    buf[:] = part
    return buf.size


def accept_params_chunk(buf: np.ndarray, filled: int, chunk: pb.ParamsChunk, iteration: int) -> int:
    if chunk.iteration != iteration:
        raise WireError(f"params chunk of iteration {chunk.iteration} inside task {iteration}")
    data = chunk.data
    if len(data) % buf.itemsize:
        raise WireError(f"params chunk of {len(data)} B is not a multiple of {buf.itemsize}")
    count = len(data) // buf.itemsize
    if chunk.offset != filled or filled + count > buf.size or (chunk.last and filled + count != buf.size):
        raise WireError(f"params chunk: {count} elements at {chunk.offset} do not fit ({filled}/{buf.size})")
    part = np.frombuffer(data, buf.dtype)
    if not np.isfinite(part).all():
        raise WireError(f"params of iteration {iteration}: NaN/Inf")
    buf[filled:filled + count] = part
    return filled + count


# ---------------------------------------------------------------------------------------------
# join / code description


@dataclass(frozen=True, slots=True)
class SlotCode:
    """What one slot needs to know of the code: its partitions in order and its rows per level."""

    partitions: tuple[int, ...]
    level_prefix: tuple[int, ...]
    level_tolerance: tuple[int, ...]
    coefficients: np.ndarray  # (L, len(partitions)) row l restricted to `partitions`
    signaling: str

    def levels_completed_by(self, m: int) -> list[int]:
        return [level for level, p in enumerate(self.level_prefix) if p == m]


def slot_code_to_proto(sc: SlotCode) -> pb.SlotCode:
    return pb.SlotCode(partitions=sc.partitions, level_prefix=sc.level_prefix,
                       level_tolerance=sc.level_tolerance,
                       coefficients=sc.coefficients.reshape(-1).tolist(), signaling=sc.signaling)


def slot_code_from_proto(msg: pb.SlotCode, k: int) -> SlotCode:
    parts = tuple(msg.partitions)
    prefix = tuple(msg.level_prefix)
    L, m = len(prefix), len(parts)
    if not parts or len(set(parts)) != m or not all(0 <= j < k for j in parts):
        raise WireError(f"slot code: partitions {parts} must be distinct in 0..{k - 1}")
    if not prefix or list(prefix) != sorted(prefix) or prefix[0] < 1 or prefix[-1] > m:
        raise WireError(f"slot code: level_prefix {prefix} must be increasing in 1..{m}")
    if len(msg.level_tolerance) != L:
        raise WireError("slot code: level_tolerance and level_prefix differ in length")
    coeffs = np.asarray(msg.coefficients, dtype=np.float64)
    if coeffs.size != L * m or not np.isfinite(coeffs).all():
        raise WireError(f"slot code: need {L}x{m} finite coefficients, got {coeffs.size}")
    if msg.signaling not in ("push", "notify"):
        raise WireError(f"slot code: signaling={msg.signaling!r}; allowed: push, notify")
    return SlotCode(parts, prefix, tuple(msg.level_tolerance), coeffs.reshape(L, m), msg.signaling)
