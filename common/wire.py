"""The one module that turns protobuf messages into domain values and back (docs/style.md §4).

Vectors travel as raw little-endian bytes (``<f4`` or ``<f8``) split into chunks of at most
`chunk_bytes`; the sender makes one ``tobytes()`` per chunk of a flat view, the receiver reads
``msg.data`` once, checks dtype, offset, size and finiteness, and fills its row of a preallocated
buffer. Only an explicit ``last`` flag ends a result. Nothing is ever pickled.

Sections: vectors and timings, results (worker -> master), tasks (master -> worker), join, the Work
stream's control messages, partitions, error kinds. The module is longer than the ~600 lines the project
keeps others to, on purpose: every protobuf message of the protocol is built or read here and nowhere
else, so a change of the protocol is a change of this one file.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from flexgc.common.errors import WireError
from flexgc.common.models import DataSpec
from flexgc.common.transport import MAX_MESSAGE_BYTES
from flexgc.v1 import coordinator_pb2 as pb

WIRE_DTYPES: dict[str, np.dtype] = {"<f4": np.dtype("<f4"), "<f8": np.dtype("<f8")}


def wire_dtype(dtype: str | np.dtype) -> str:
    """The wire name (<f4 or <f8) of a float32/float64 dtype, or WireError."""
    dt = np.dtype(dtype)
    if dt.kind == "f" and dt.itemsize in (4, 8):
        return "<f4" if dt.itemsize == 4 else "<f8"
    raise WireError(f"dtype={dt}; allowed: float32, float64")


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of a wire name (<f4 or <f8), or WireError."""
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
    """Measured compute and injected delay per finished partition, in ms, in compute order."""

    compute_ms: list[float] = field(default_factory=list)
    delay_ms: list[float] = field(default_factory=list)


def times_to_proto(times: PartitionTimes) -> pb.PartitionTimes:
    """The PartitionTimes message of `times`."""
    return pb.PartitionTimes(compute_ms=times.compute_ms, delay_ms=times.delay_ms)


def times_from_proto(msg: pb.PartitionTimes, max_len: int) -> PartitionTimes:
    """Per-partition times of a slot that computes at most `max_len` partitions; finite and >= 0."""
    compute, delay = list(msg.compute_ms), list(msg.delay_ms)
    if len(compute) > max_len or len(delay) > max_len:
        raise WireError(f"partition times list longer than {max_len} partitions")
    if not all(math.isfinite(x) and x >= 0 for x in compute) or not all(x >= 0 for x in delay):
        raise WireError("partition times must be finite and >= 0")
    return PartitionTimes(compute, delay)


def _times_or_none(msg: Any, max_len: int) -> PartitionTimes | None:
    return times_from_proto(msg.times, max_len) if msg.HasField("times") else None


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
    """What a result chunk says about itself, validated (its bytes are read by accept_chunk)."""

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
    """A Task's header, validated: iteration, dtype and length of the parameters, levels to compute."""

    iteration: int
    dtype: str
    total_elements: int
    max_levels: int
    plan: int = 0


def task_messages(iteration: int, params: np.ndarray, chunk_bytes: int, max_levels: int,
                  inline: bool = False, plan: int = 0) -> list[pb.MasterMessage]:
    """The Task header and its ParamsChunk messages; built once per iteration, sent to every worker.
    With `inline`, parameters that fit one chunk travel inside the Task (a single message)."""
    flat = _flat_le(params)
    header = pb.MasterMessage(task=pb.Task(iteration=iteration, dtype=wire_dtype(flat.dtype),
                                           total_elements=flat.size, max_levels=max_levels, plan=plan))
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
    """Validate a Task's header against what this worker expects (vector length, levels, dtype); `n_levels`
    is that of the task's plan (the worker checks that it holds the plan first)."""
    numpy_dtype(msg.dtype)
    if msg.total_elements != expected_d:
        raise WireError(f"task iteration={msg.iteration}: total_elements={msg.total_elements}, "
                        f"expected {expected_d}")
    if msg.iteration < 0:
        raise WireError(f"task iteration={msg.iteration} < 0")
    if not 1 <= msg.max_levels <= n_levels:
        raise WireError(f"task iteration={msg.iteration}: max_levels={msg.max_levels}; allowed 1..{n_levels}")
    return TaskHeader(msg.iteration, msg.dtype, msg.total_elements, msg.max_levels, msg.plan)


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
    """Copy a validated ParamsChunk of task `iteration` into `buf` at `filled`; return the new fill count."""
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
        """Levels whose message this slot can send right after its m-th partition."""
        return [level for level, p in enumerate(self.level_prefix) if p == m]


def slot_code_to_proto(sc: SlotCode) -> pb.SlotCode:
    """The SlotCode message of `sc`."""
    return pb.SlotCode(partitions=sc.partitions, level_prefix=sc.level_prefix,
                       level_tolerance=sc.level_tolerance,
                       coefficients=sc.coefficients.reshape(-1).tolist(), signaling=sc.signaling)


def slot_code_from_proto(msg: pb.SlotCode, k: int) -> SlotCode:
    """A slot's code from the JoinReply, checked (partitions, prefixes, coefficients, signaling)."""
    parts = tuple(msg.partitions)
    prefix = tuple(msg.level_prefix)
    L, m = len(prefix), len(parts)
    standby = not parts and bool(prefix) and not any(prefix)  # a removed slot of an elastic plan: no work
    if (not parts and not standby) or len(set(parts)) != m or not all(0 <= j < k for j in parts):
        raise WireError(f"slot code: partitions {parts} must be distinct in 0..{k - 1}")
    if not standby and (not prefix or list(prefix) != sorted(prefix) or prefix[0] < 1 or prefix[-1] > m):
        raise WireError(f"slot code: level_prefix {prefix} must be increasing in 1..{m}")
    if len(msg.level_tolerance) != L:
        raise WireError("slot code: level_tolerance and level_prefix differ in length")
    coeffs = np.asarray(msg.coefficients, dtype=np.float64)
    if coeffs.size != L * m or not np.isfinite(coeffs).all():
        raise WireError(f"slot code: need {L}x{m} finite coefficients, got {coeffs.size}")
    if msg.signaling not in ("push", "notify"):
        raise WireError(f"slot code: signaling={msg.signaling!r}; allowed: push, notify")
    return SlotCode(parts, prefix, tuple(msg.level_tolerance), coeffs.reshape(L, m), msg.signaling)


# ---------------------------------------------------------------------------------------------
# join (worker -> master -> worker)


@dataclass(frozen=True, slots=True)
class JoinAsk:
    """A worker's Join: its identity and the slot it would like (-1: any)."""

    worker_id: str
    preferred_slot: int
    version: str = ""
    instance_id: str = ""      # random per worker process: a reconnect vs a second process of one id
    host: str = ""             # the worker's machine (its hostname; "" for an older worker)


@dataclass(frozen=True, slots=True)
class JoinGrant:
    """The slot a worker got, the master session it belongs to, and that slot's part of the code."""

    slot: int
    session_id: str
    slot_code: SlotCode
    plan: int = 0          # the plan slot_code belongs to (docs/design.md §2.10)


@dataclass(frozen=True, slots=True)
class JobInfo:
    """What every joining worker learns of the job besides its slot."""

    n: int
    k: int
    code_spec: str
    data: DataSpec
    dtype: str                 # "float32" | "float64" of the coded vectors on the wire
    chunk_bytes: int
    heartbeat_interval_s: float
    delay_spec: str
    delay_seed: int


def join_request(ask: JoinAsk) -> pb.JoinRequest:
    """The JoinRequest of `ask`."""
    return pb.JoinRequest(worker_id=ask.worker_id, preferred_slot=ask.preferred_slot, version=ask.version,
                          instance_id=ask.instance_id, host=ask.host)


def join_ask(msg: pb.JoinRequest | Undecodable) -> JoinAsk:
    """The domain value of a JoinRequest."""
    if isinstance(msg, Undecodable):
        raise msg.error()
    return JoinAsk(msg.worker_id, msg.preferred_slot, msg.version, msg.instance_id[:64],
                   "".join(c for c in msg.host[:128] if c.isprintable()))


def join_reply(grant: JoinGrant, job: JobInfo) -> pb.JoinReply:
    """The JoinReply for `grant` in `job`."""
    d = job.data
    return pb.JoinReply(
        slot=grant.slot, session_id=grant.session_id, n=job.n, k=job.k, code_spec=job.code_spec,
        slot_code=slot_code_to_proto(grant.slot_code), plan=grant.plan,
        data=pb.DataSpec(model=d.model, source=d.source, samples=d.samples, features=d.features, classes=d.classes,
                         seed=d.seed, partitions=d.partitions, dtype=job.dtype, noise=d.noise, batch=d.batch,
                         batch_seed=d.batch_seed),
        chunk_bytes=job.chunk_bytes, heartbeat_interval_s=job.heartbeat_interval_s, delay_spec=job.delay_spec,
        delay_seed=job.delay_seed)


def joined(msg: pb.JoinReply) -> tuple[JoinGrant, JobInfo]:
    """The grant and the job description of a JoinReply, checked (slot code, data description, dtype)."""
    ds = msg.data
    if ds.dtype not in ("float32", "float64"):
        raise WireError(f"join reply: dtype={ds.dtype!r}; allowed: float32, float64")
    if not 0 <= msg.slot < msg.n or msg.chunk_bytes <= 0:
        raise WireError(f"join reply: slot={msg.slot} of n={msg.n}, chunk_bytes={msg.chunk_bytes}")
    try:
        data = DataSpec(model=ds.model, source=ds.source, samples=ds.samples, features=ds.features,
                        classes=ds.classes, seed=ds.seed, partitions=ds.partitions, noise=ds.noise, batch=ds.batch,
                        batch_seed=ds.batch_seed)
    except ValueError as exc:
        raise WireError(f"join reply: data description: {exc}") from None
    if msg.plan < 0:
        raise WireError(f"join reply: plan={msg.plan} < 0")
    grant = JoinGrant(msg.slot, msg.session_id, slot_code_from_proto(msg.slot_code, msg.k), msg.plan)
    job = JobInfo(msg.n, msg.k, msg.code_spec, data, ds.dtype, msg.chunk_bytes, msg.heartbeat_interval_s,
                  msg.delay_spec, msg.delay_seed)
    return grant, job


# ---------------------------------------------------------------------------------------------
# the Work stream's control messages


@dataclass(frozen=True, slots=True)
class Hello:
    """The first message on a Work stream: who opens it, for which slot of which session."""

    slot: int
    session_id: str
    worker_id: str
    instance_id: str = ""


@dataclass(frozen=True, slots=True)
class Ready:
    """The worker is idle and asks for the first task newer than `after_iteration`."""

    after_iteration: int


@dataclass(frozen=True, slots=True)
class LevelDone:
    """notify signaling: the worker holds the level's coded vector of `iteration`."""

    iteration: int
    level: int
    times: PartitionTimes | None


@dataclass(frozen=True, slots=True)
class CancelAck:
    """The worker stopped `iteration` after `partitions_done` partitions (all of them: `finished`);
    `ready`: it also asks for the next task, as Ready(after_iteration=iteration) would."""

    iteration: int
    partitions_done: int
    times: PartitionTimes
    finished: bool
    ready: bool


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The worker is alive (sent every heartbeat interval)."""


@dataclass(frozen=True, slots=True)
class PlanReady:
    """The worker holds the data and rows of `plan`."""

    plan: int


TASK_MODEL_FAILED = "model"      # TaskRejected.cause: loss_and_grad raised or returned a wrong shape
TASK_NON_FINITE = "non_finite"   # TaskRejected.cause: the loss or gradient computed is NaN/Inf
TASK_REJECTION_CAUSES = ("", TASK_MODEL_FAILED, TASK_NON_FINITE)


@dataclass(frozen=True, slots=True)
class TaskRejected:
    """The worker did not compute the task of `iteration`: a malformed task (`cause` ""), a model that
    raised or returned a wrong shape (TASK_MODEL_FAILED), or a NaN/Inf loss or gradient (TASK_NON_FINITE)."""

    iteration: int
    reason: str
    cause: str = ""


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop `iteration`: its gradient is decoded (or given up)."""

    iteration: int


@dataclass(frozen=True, slots=True)
class Pull:
    """notify signaling: send the level's coded vector of `iteration` now."""

    iteration: int
    level: int


@dataclass(frozen=True, slots=True)
class Shutdown:
    """The job is over; the worker may exit."""

    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    """An adaptive re-plan announced ahead of its use: the slot's part of code `plan` (docs/design.md §2.10)."""

    plan: int
    slot_code: SlotCode


# What a Work stream carries after its hello. Result chunks and task messages stay protobuf: their bytes
# go straight into preallocated buffers through accept_chunk / accept_params_chunk.
WorkerEvent = Ready | LevelDone | CancelAck | Heartbeat | TaskRejected | PlanReady | pb.ResultChunk
MasterEvent = pb.Task | pb.ParamsChunk | Cancel | Pull | Shutdown | Plan


def hello(msg: pb.WorkerMessage | Undecodable) -> Hello:
    """The hello a Work stream must open with, or WireError."""
    if isinstance(msg, Undecodable):
        raise msg.error()
    if msg.WhichOneof("kind") != "hello":
        raise WireError("the first message on Work must be hello")
    h = msg.hello
    return Hello(h.slot, h.session_id, h.worker_id, h.instance_id[:64])


def worker_event(msg: pb.WorkerMessage | Undecodable, slot: int, max_partitions: int) -> WorkerEvent:
    """A worker's message after its hello on the stream of `slot`, as a domain value; `max_partitions`
    bounds its time lists."""
    if isinstance(msg, Undecodable):
        raise msg.error()
    kind = msg.WhichOneof("kind")
    if kind == "result":
        return msg.result
    if kind == "ready":
        return Ready(msg.ready.after_iteration)
    if kind == "level_done":
        ld = msg.level_done
        return LevelDone(ld.iteration, ld.level, _times_or_none(ld, max_partitions))
    if kind == "cancel_ack":
        a = msg.cancel_ack
        return CancelAck(a.iteration, a.partitions_done, times_from_proto(a.times, max_partitions), a.finished,
                         a.ready)
    if kind == "heartbeat":
        return Heartbeat()
    if kind == "task_rejected":
        r = msg.task_rejected
        if r.cause not in TASK_REJECTION_CAUSES:
            raise WireError(f"slot={slot}: task_rejected cause={r.cause[:40]!r}; allowed: "
                            f"{', '.join(repr(c) for c in TASK_REJECTION_CAUSES)}")
        return TaskRejected(r.iteration, " ".join(r.reason[:300].split()), r.cause)
    if kind == "plan_ready":
        return PlanReady(msg.plan_ready.plan)
    raise WireError(f"slot={slot}: unexpected message kind {kind!r} on Work")


def worker_message(event: Hello | Ready | LevelDone | CancelAck | Heartbeat | TaskRejected | PlanReady
                   ) -> pb.WorkerMessage:
    """The WorkerMessage of a control event (results are built by `result_chunks`)."""
    if isinstance(event, Hello):
        return pb.WorkerMessage(hello=pb.Hello(slot=event.slot, session_id=event.session_id,
                                               worker_id=event.worker_id, instance_id=event.instance_id))
    if isinstance(event, Ready):
        return pb.WorkerMessage(ready=pb.Ready(after_iteration=event.after_iteration))
    if isinstance(event, LevelDone):
        msg = pb.WorkerMessage(level_done=pb.LevelDone(iteration=event.iteration, level=event.level))
        if event.times is not None:
            msg.level_done.times.CopyFrom(times_to_proto(event.times))
        return msg
    if isinstance(event, CancelAck):
        return pb.WorkerMessage(cancel_ack=pb.CancelAck(
            iteration=event.iteration, partitions_done=event.partitions_done, times=times_to_proto(event.times),
            finished=event.finished, ready=event.ready))
    if isinstance(event, Heartbeat):
        return pb.WorkerMessage(heartbeat=pb.Heartbeat())
    if isinstance(event, PlanReady):
        return pb.WorkerMessage(plan_ready=pb.PlanReady(plan=event.plan))
    return pb.WorkerMessage(task_rejected=pb.TaskRejected(iteration=event.iteration, reason=event.reason,
                                                          cause=event.cause))


def master_event(msg: pb.MasterMessage, k: int = 0) -> MasterEvent:
    """A master's message on the Work stream, as a domain value (`k`: the job's partitions, to check a Plan's
    slot code)."""
    kind = msg.WhichOneof("kind")
    if kind == "task":
        return msg.task
    if kind == "params":
        return msg.params
    if kind == "cancel":
        return Cancel(msg.cancel.iteration)
    if kind == "pull":
        return Pull(msg.pull.iteration, msg.pull.level)
    if kind == "shutdown":
        return Shutdown(msg.shutdown.reason)
    if kind == "plan":
        if msg.plan.plan < 1:
            raise WireError(f"plan={msg.plan.plan}; a re-plan has an id >= 1")
        return Plan(msg.plan.plan, slot_code_from_proto(msg.plan.slot_code, k))
    raise WireError(f"unexpected message kind {kind!r} from the master")


def master_message(event: Cancel | Pull | Shutdown | Plan) -> pb.MasterMessage:
    """The MasterMessage of a control event (tasks are built by `task_messages`)."""
    if isinstance(event, Cancel):
        return pb.MasterMessage(cancel=pb.Cancel(iteration=event.iteration))
    if isinstance(event, Pull):
        return pb.MasterMessage(pull=pb.Pull(iteration=event.iteration, level=event.level))
    if isinstance(event, Plan):
        return pb.MasterMessage(plan=pb.Plan(plan=event.plan, slot_code=slot_code_to_proto(event.slot_code)))
    return pb.MasterMessage(shutdown=pb.Shutdown(reason=event.reason))


# ---------------------------------------------------------------------------------------------
# partitions (master -> worker, when the master holds the data)


@dataclass(frozen=True, slots=True)
class PartitionAsk:
    """A worker's request for one partition of the master's data."""

    slot: int
    partition: int
    session_id: str


def partition_request(ask: PartitionAsk) -> pb.PartitionRequest:
    """The PartitionRequest of `ask`."""
    return pb.PartitionRequest(slot=ask.slot, partition=ask.partition, session_id=ask.session_id)


def partition_ask(msg: pb.PartitionRequest | Undecodable) -> PartitionAsk:
    """The domain value of a PartitionRequest."""
    if isinstance(msg, Undecodable):
        raise msg.error()
    return PartitionAsk(msg.slot, msg.partition, msg.session_id)


def partition_chunks(X: np.ndarray, y: np.ndarray, chunk_bytes: int) -> Iterator[pb.PartitionChunk]:
    """Rows X (m, f) and labels y (m,) of one partition as float64 chunks, each array ending `last`."""
    for name, arr in (("X", X), ("y", y)):
        flat = np.ascontiguousarray(arr, dtype="<f8").reshape(-1)
        slices = list(chunk_slices(flat.size, 8, chunk_bytes))
        for i, (a, b) in enumerate(slices):
            yield pb.PartitionChunk(name=name, dtype="<f8", shape=arr.shape, offset=a, data=flat[a:b].tobytes(),
                                    last=i == len(slices) - 1)


class PartitionReceiver:
    """Reassembles one partition's X and y from its chunks, checking names, dtype, order and completeness."""

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self._arrays: dict[str, np.ndarray] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._filled: dict[str, int] = {}

    def accept(self, chunk: pb.PartitionChunk) -> None:
        """Write one chunk after what its array holds, or WireError (nothing written)."""
        j = self.partition
        if chunk.name not in ("X", "y") or chunk.dtype != "<f8":
            raise WireError(f"partition {j}: unexpected array {chunk.name!r} dtype {chunk.dtype!r}")
        name = chunk.name
        if name not in self._arrays:
            shape = tuple(int(x) for x in chunk.shape)
            if any(x < 0 for x in shape) or len(shape) != (2 if name == "X" else 1):
                raise WireError(f"partition {j}: shape {shape} of {name}")
            self._arrays[name] = np.empty(int(np.prod(shape)), dtype="<f8")
            self._shapes[name], self._filled[name] = shape, 0
        buf, filled = self._arrays[name], self._filled[name]
        part = np.frombuffer(chunk.data, "<f8")
        if chunk.offset != filled or filled + part.size > buf.size:
            raise WireError(f"partition {j}: chunk of {name} out of order")
        buf[filled:filled + part.size] = part
        self._filled[name] = filled + part.size

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(X, y) once both arrays are complete, else WireError."""
        if set(self._arrays) != {"X", "y"} or any(self._filled[k] != self._arrays[k].size for k in self._arrays):
            raise WireError(f"partition {self.partition}: incomplete transfer")
        return self._arrays["X"].reshape(self._shapes["X"]), self._arrays["y"]


# ---------------------------------------------------------------------------------------------
# requests whose bytes do not parse


@dataclass(frozen=True, slots=True)
class Undecodable:
    """What the master's deserializer hands over for request bytes that do not parse as the method's message
    (gRPC would answer UNKNOWN, uncounted, had the deserializer raised); the readers below refuse it with a
    WireError (INVALID_ARGUMENT, counted). It keeps the size, never the bytes."""

    message: str
    size: int

    def error(self) -> WireError:
        """The refusal: which message did not parse, and how large it was."""
        return WireError(f"{self.size} bytes that do not parse as a {self.message} (protobuf)")


def request_parser(message: type[Any]) -> Any:
    """A request deserializer for `message` (a protobuf class) that returns Undecodable instead of raising."""
    from google.protobuf.message import DecodeError

    name = message.__name__

    def parse(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except DecodeError:
            return Undecodable(name, len(data))

    return parse


# ---------------------------------------------------------------------------------------------
# error kinds in a status's trailing metadata


ERROR_KIND_KEY = "flexgc-error-kind"


def error_metadata(kind: str) -> tuple[tuple[str, str], ...]:
    """Trailing metadata that names the domain error behind a status (e.g. "JobFinishedError")."""
    return ((ERROR_KIND_KEY, kind),)


def error_kind(exc: grpc.RpcError) -> str | None:
    """The domain error a master named in a failed call's trailing metadata, if any."""
    trailing = getattr(exc, "trailing_metadata", None)
    for key, value in (trailing() if callable(trailing) else None) or ():
        if key == ERROR_KIND_KEY:
            return str(value)
    return None


# ---------------------------------------------------------------------------------------------
# the join token, in call metadata


TOKEN_KEY = "flexgc-token"


def token_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata that carries the job's token (none when the job has none)."""
    return ((TOKEN_KEY, token),) if token else ()


def token_of(metadata: Any) -> str:
    """The token a call carries in its metadata ("" if none)."""
    for key, value in metadata or ():
        if key == TOKEN_KEY:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return ""
