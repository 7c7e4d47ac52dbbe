"""The wire module: chunk round trips and every validation error of the receiving side (docs/style.md §4)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexgc.common import wire
from flexgc.common.codes import parse_code
from flexgc.common.errors import WireError
from flexgc.v1 import coordinator_pb2 as pb


def receive(chunks: list[pb.WorkerMessage], d: int, dtype: str) -> np.ndarray:
    """What the master does with one result: header check, then fill a row chunk by chunk."""
    row = np.zeros(d, dtype=wire.numpy_dtype(dtype))
    filled = 0
    for msg in chunks:
        wire.result_header(msg.result, dtype, d, n_levels=3, max_partitions=4)
        filled = wire.accept_chunk(row, filled, msg.result)
    assert filled == d
    return row


def chunk(data: np.ndarray | bytes, *, offset: int = 0, last: bool = True, total: int | None = None,
          dtype: str = "<f8", slot: int = 2, iteration: int = 7, level: int = 1) -> pb.ResultChunk:
    raw = data if isinstance(data, bytes) else np.asarray(data, dtype=dtype).tobytes()
    size = total if total is not None else len(raw) // np.dtype(dtype).itemsize
    return pb.ResultChunk(iteration=iteration, slot=slot, level=level, dtype=dtype, total_elements=size,
                          offset=offset, data=raw, last=last)


# -- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("d", [0, 1, 2, 127, 128, 129, 1000])
@pytest.mark.parametrize("chunk_bytes", [1, 4, 8, 512, 1 << 20])
def test_result_round_trip(dtype: str, d: int, chunk_bytes: int) -> None:
    vector = np.random.default_rng(d).standard_normal(d).astype(dtype)

    chunks = list(wire.result_chunks(7, 2, 1, vector, chunk_bytes))

    name = wire.wire_dtype(dtype)
    per = max(1, chunk_bytes // vector.itemsize)
    assert len(chunks) == max(1, -(-d // per))
    assert [m.result.last for m in chunks] == [False] * (len(chunks) - 1) + [True]
    assert all(len(m.result.data) <= max(chunk_bytes, vector.itemsize) for m in chunks)
    assert {(m.result.dtype, m.result.total_elements, m.result.iteration, m.result.slot, m.result.level)
            for m in chunks} == {(name, d, 7, 2, 1)}
    np.testing.assert_array_equal(receive(chunks, d, name), vector)


def test_chunk_boundary_exactly_fills_chunks() -> None:
    vector = np.arange(256, dtype="<f8")   # 2048 B

    chunks = list(wire.result_chunks(0, 0, 0, vector, 512))

    assert [(m.result.offset, len(m.result.data)) for m in chunks] == [(0, 512), (64, 512), (128, 512), (192, 512)]
    np.testing.assert_array_equal(receive(chunks, 256, "<f8"), vector)


def test_zero_length_vector_is_one_empty_last_chunk() -> None:
    chunks = list(wire.result_chunks(3, 1, 0, np.zeros(0), 1024))

    assert len(chunks) == 1
    assert (chunks[0].result.offset, chunks[0].result.data, chunks[0].result.last) == (0, b"", True)
    assert receive(chunks, 0, "<f8").size == 0


@pytest.mark.parametrize("dtype", [">f8", ">f4"])
def test_big_endian_input_travels_little_endian(dtype: str) -> None:
    vector = np.array([1.5, -2.25, 3e10, 0.0], dtype=dtype)

    chunks = list(wire.result_chunks(0, 0, 0, vector, 1 << 20))

    little = "<" + dtype[1:]
    assert chunks[0].result.dtype == little
    assert chunks[0].result.data == vector.astype(little).tobytes()
    np.testing.assert_array_equal(receive(chunks, 4, little), vector.astype(float))


def test_non_contiguous_and_2d_input_is_flattened() -> None:
    matrix = np.arange(12, dtype="<f8").reshape(3, 4)

    chunks = list(wire.result_chunks(0, 0, 0, matrix[:, ::2], 16))

    np.testing.assert_array_equal(receive(chunks, 6, "<f8"), matrix[:, ::2].reshape(-1))


def test_times_travel_on_the_first_chunk_only() -> None:
    times = wire.PartitionTimes([1.0, 2.5], [0.0, 10.0])

    chunks = list(wire.result_chunks(0, 0, 0, np.ones(40), 64, times))

    assert chunks[0].result.HasField("times")
    assert not any(m.result.HasField("times") for m in chunks[1:])
    header = wire.result_header(chunks[0].result, "<f8", 40, 1, 2)
    assert header.times is not None
    assert (header.times.compute_ms, header.times.delay_ms) == ([1.0, 2.5], [0.0, 10.0])


@pytest.mark.parametrize("dtype", ["float32", "float64", ">f8"])
@pytest.mark.parametrize("d", [0, 1, 9, 300])
def test_task_round_trip(dtype: str, d: int) -> None:
    params = np.linspace(-1, 1, d).astype(dtype)

    messages = wire.task_messages(5, params, 64, 2)

    header = wire.task_header(messages[0].task, d, n_levels=3)
    assert (header.iteration, header.dtype, header.total_elements, header.max_levels) == (
        5, wire.wire_dtype(dtype), d, 2)
    buf = np.empty(d, dtype=wire.numpy_dtype(header.dtype))
    filled = 0
    for m in messages[1:]:
        filled = wire.accept_params_chunk(buf, filled, m.params, 5)
    assert messages[-1].params.last and not any(m.params.last for m in messages[1:-1])
    assert filled == d
    np.testing.assert_array_equal(buf, params.astype(float))


@settings(max_examples=60, deadline=None)
@given(d=st.integers(0, 300), chunk_bytes=st.integers(1, 2048), wide=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_result_round_trip_property(d: int, chunk_bytes: int, wide: bool, seed: int) -> None:
    dtype = "<f8" if wide else "<f4"
    vector = np.random.default_rng(seed).standard_normal(d).astype(dtype)

    chunks = list(wire.result_chunks(1, 0, 0, vector, chunk_bytes))

    np.testing.assert_array_equal(receive(chunks, d, dtype), vector)


def test_slot_code_round_trip_for_real_codes() -> None:
    code = parse_code("nested:levels=0,1,2", 5)
    for slot in range(code.n):
        parts = code.order[slot]
        sc = wire.SlotCode(parts, tuple(int(x) for x in code.prefix[:, slot]), code.levels,
                           np.stack([code.B[level, slot, list(parts)] for level in range(code.n_levels)]),
                           code.signaling)

        back = wire.slot_code_from_proto(wire.slot_code_to_proto(sc), code.k)

        assert (back.partitions, back.level_prefix, back.level_tolerance, back.signaling) == (
            sc.partitions, sc.level_prefix, sc.level_tolerance, sc.signaling)
        np.testing.assert_array_equal(back.coefficients, sc.coefficients)


# -- dtype names --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "int64", "complex128", "bool"])
def test_wire_dtype_refuses_other_dtypes(dtype: str) -> None:
    with pytest.raises(WireError, match=f"dtype={np.dtype(dtype)}; allowed: float32, float64"):
        wire.wire_dtype(dtype)


@pytest.mark.parametrize("name", ["float64", ">f8", "<f2", "", "<i8"])
def test_numpy_dtype_refuses_unknown_names(name: str) -> None:
    with pytest.raises(WireError, match=f"dtype={name!r}; allowed: <f4, <f8"):
        wire.numpy_dtype(name)


# -- result_header ------------------------------------------------------------------------------


@pytest.mark.parametrize(("changes", "expected"), [
    (dict(dtype="<f4"), "slot=2 iteration=7: dtype='<f4', expected '<f8'"),
    (dict(dtype=">f8"), "slot=2 iteration=7: dtype='>f8', expected '<f8'"),
    (dict(dtype=""), "slot=2 iteration=7: dtype='', expected '<f8'"),
    (dict(total_elements=5), "slot=2 iteration=7: total_elements=5, expected d=4"),
    (dict(total_elements=0), "slot=2 iteration=7: total_elements=0, expected d=4"),
    (dict(total_elements=-4), "slot=2 iteration=7: total_elements=-4, expected d=4"),
    (dict(level=3), "slot=2: level=3; allowed 0..2"),
    (dict(level=-1), "slot=2: level=-1; allowed 0..2"),
])
def test_result_header_errors(changes: dict[str, object], expected: str) -> None:
    msg = chunk(np.ones(4))
    for key, value in changes.items():
        setattr(msg, key, value)

    with pytest.raises(WireError) as info:
        wire.result_header(msg, "<f8", 4, n_levels=3, max_partitions=2)

    assert str(info.value) == expected


@pytest.mark.parametrize(("compute_ms", "delay_ms"), [
    ([1.0, 1.0, 1.0], []),
    ([], [0.0, 0.0, 0.0]),
    ([float("nan")], []),
    ([float("inf")], []),
    ([-1.0], []),
    ([], [-0.5]),
    ([], [float("nan")]),
])
def test_result_header_rejects_bad_partition_times(compute_ms: list[float], delay_ms: list[float]) -> None:
    msg = chunk(np.ones(4))
    msg.times.CopyFrom(pb.PartitionTimes(compute_ms=compute_ms, delay_ms=delay_ms))

    with pytest.raises(WireError, match="partition times"):
        wire.result_header(msg, "<f8", 4, n_levels=3, max_partitions=2)


def test_result_header_accepts_a_good_header() -> None:
    msg = chunk(np.ones(2), offset=2, last=True, total=4)

    header = wire.result_header(msg, "<f8", 4, n_levels=3, max_partitions=2)

    assert (header.iteration, header.slot, header.level, header.offset, header.last, header.times) == (
        7, 2, 1, 2, True, None)


# -- accept_chunk -------------------------------------------------------------------------------


def _row_with_prefix() -> tuple[np.ndarray, int]:
    row = np.zeros(6)
    filled = wire.accept_chunk(row, 0, chunk(np.array([1.0, 2.0]), last=False, total=6))
    return row, filled


@pytest.mark.parametrize(("msg", "expected"), [
    (chunk(b"\x00" * 12, offset=2, last=False, total=6), "slot=2 iteration=7: 12 B is not a multiple of 8"),
    (chunk(np.ones(2), offset=0, last=False, total=6),
     "slot=2 iteration=7: 2 elements at offset 0 do not fit row (2/6 filled)"),          # replayed chunk
    (chunk(np.ones(2), offset=4, last=False, total=6),
     "slot=2 iteration=7: 2 elements at offset 4 do not fit row (2/6 filled)"),          # gap: out of order
    (chunk(np.ones(5), offset=2, last=True, total=6),
     "slot=2 iteration=7: 5 elements at offset 2 do not fit row (2/6 filled)"),          # oversized
    (chunk(np.ones(2), offset=2, last=True, total=6),
     "slot=2 iteration=7: truncated result, last chunk ends at 4 of 6"),
    (chunk(np.zeros(0), offset=2, last=True, total=6),
     "slot=2 iteration=7: truncated result, last chunk ends at 2 of 6"),
    (chunk(np.array([1.0, np.nan]), offset=2, last=False, total=6),
     "slot=2 iteration=7 level=1: NaN/Inf in result"),
    (chunk(np.array([np.inf, 1.0, 1.0, 1.0]), offset=2, last=True, total=6),
     "slot=2 iteration=7 level=1: NaN/Inf in result"),
    (chunk(np.array([-np.inf]), offset=2, last=False, total=6), "slot=2 iteration=7 level=1: NaN/Inf in result"),
])
def test_accept_chunk_errors_leave_the_row_untouched(msg: pb.ResultChunk, expected: str) -> None:
    row, filled = _row_with_prefix()
    before = row.copy()

    with pytest.raises(WireError) as info:
        wire.accept_chunk(row, filled, msg)

    assert str(info.value) == expected
    np.testing.assert_array_equal(row, before)


def test_accept_chunk_float32_row_and_nan_payload_bits() -> None:
    row = np.zeros(3, dtype="<f4")
    quiet_nan = np.array([0.0, 0.0, 0.0], dtype="<f4")
    quiet_nan.view("<u4")[1] = 0x7FC00001

    with pytest.raises(WireError, match="NaN/Inf"):
        wire.accept_chunk(row, 0, chunk(quiet_nan.tobytes(), dtype="<f4", total=3))

    assert not row.any()


def test_accept_chunk_continues_a_sequence() -> None:
    row, filled = _row_with_prefix()

    filled = wire.accept_chunk(row, filled, chunk(np.array([3.0, 4.0, 5.0, 6.0]), offset=2, last=True, total=6))

    assert filled == 6
    np.testing.assert_array_equal(row, np.arange(1.0, 7.0))


# -- task_header --------------------------------------------------------------------------------


def _task(**changes: object) -> pb.Task:
    task = pb.Task(iteration=4, dtype="<f8", total_elements=10, max_levels=2)
    for key, value in changes.items():
        setattr(task, key, value)
    return task


@pytest.mark.parametrize(("changes", "expected"), [
    (dict(dtype="float64"), "dtype='float64'; allowed: <f4, <f8"),
    (dict(dtype=""), "dtype=''; allowed: <f4, <f8"),
    (dict(total_elements=11), "task iteration=4: total_elements=11, expected 10"),
    (dict(total_elements=-1), "task iteration=4: total_elements=-1, expected 10"),
    (dict(iteration=-1), "task iteration=-1 < 0"),
    (dict(max_levels=0), "task iteration=4: max_levels=0; allowed 1..3"),
    (dict(max_levels=4), "task iteration=4: max_levels=4; allowed 1..3"),
])
def test_task_header_errors(changes: dict[str, object], expected: str) -> None:
    with pytest.raises(WireError) as info:
        wire.task_header(_task(**changes), 10, n_levels=3)

    assert str(info.value) == expected


# -- accept_params_chunk ------------------------------------------------------------------------


def _params(data: np.ndarray | bytes, *, offset: int = 0, last: bool = False, iteration: int = 4) -> pb.ParamsChunk:
    raw = data if isinstance(data, bytes) else np.asarray(data, dtype="<f8").tobytes()
    return pb.ParamsChunk(iteration=iteration, offset=offset, data=raw, last=last)


@pytest.mark.parametrize(("msg", "expected"), [
    (_params(np.ones(2), offset=2, iteration=5), "params chunk of iteration 5 inside task 4"),
    (_params(b"\x00" * 9, offset=2), "params chunk of 9 B is not a multiple of 8"),
    (_params(np.ones(2), offset=3), "params chunk: 2 elements at 3 do not fit (2/6)"),
    (_params(np.ones(2), offset=0), "params chunk: 2 elements at 0 do not fit (2/6)"),
    (_params(np.ones(5), offset=2), "params chunk: 5 elements at 2 do not fit (2/6)"),
    (_params(np.ones(3), offset=2, last=True), "params chunk: 3 elements at 2 do not fit (2/6)"),
    (_params(np.array([0.0, np.nan]), offset=2), "params of iteration 4: NaN/Inf"),
    (_params(np.array([np.inf, 0.0, 0.0, 0.0]), offset=2, last=True), "params of iteration 4: NaN/Inf"),
])
def test_accept_params_chunk_errors_leave_the_buffer_untouched(msg: pb.ParamsChunk, expected: str) -> None:
    buf = np.zeros(6)
    filled = wire.accept_params_chunk(buf, 0, _params(np.array([1.0, 2.0])), 4)
    before = buf.copy()

    with pytest.raises(WireError) as info:
        wire.accept_params_chunk(buf, filled, msg, 4)

    assert str(info.value) == expected
    np.testing.assert_array_equal(buf, before)


# -- slot_code_from_proto -----------------------------------------------------------------------


def _slot_code(**changes: object) -> pb.SlotCode:
    fields: dict[str, object] = dict(partitions=[2, 0, 1], level_prefix=[1, 3], level_tolerance=[0, 2],
                                     coefficients=[1.0, 0.0, 0.0, 0.5, 0.25, 0.25], signaling="push")
    fields.update(changes)
    return pb.SlotCode(**fields)  # type: ignore[arg-type]


def test_slot_code_good() -> None:
    sc = wire.slot_code_from_proto(_slot_code(), k=3)

    assert sc.partitions == (2, 0, 1)
    assert sc.coefficients.shape == (2, 3)
    assert sc.levels_completed_by(3) == [1]


@pytest.mark.parametrize(("changes", "expected"), [
    (dict(partitions=[]), r"slot code: partitions \(\) must be distinct in 0..2"),
    (dict(partitions=[2, 0, 0]), r"slot code: partitions \(2, 0, 0\) must be distinct in 0..2"),
    (dict(partitions=[2, 0, 3]), r"slot code: partitions \(2, 0, 3\) must be distinct in 0..2"),
    (dict(partitions=[2, 0, -1]), r"slot code: partitions \(2, 0, -1\) must be distinct in 0..2"),
    (dict(level_prefix=[]), r"slot code: level_prefix \(\) must be increasing in 1..3"),
    (dict(level_prefix=[3, 1]), r"slot code: level_prefix \(3, 1\) must be increasing in 1..3"),
    (dict(level_prefix=[0, 3]), r"slot code: level_prefix \(0, 3\) must be increasing in 1..3"),
    (dict(level_prefix=[1, 4]), r"slot code: level_prefix \(1, 4\) must be increasing in 1..3"),
    (dict(level_tolerance=[0]), "slot code: level_tolerance and level_prefix differ in length"),
    (dict(coefficients=[1.0] * 5), "slot code: need 2x3 finite coefficients, got 5"),
    (dict(coefficients=[1.0] * 5 + [float("nan")]), "slot code: need 2x3 finite coefficients, got 6"),
    (dict(coefficients=[1.0] * 5 + [float("-inf")]), "slot code: need 2x3 finite coefficients, got 6"),
    (dict(signaling="pull"), "slot code: signaling='pull'; allowed: push, notify"),
    (dict(signaling=""), "slot code: signaling=''; allowed: push, notify"),
])
def test_slot_code_errors(changes: dict[str, object], expected: str) -> None:
    with pytest.raises(WireError, match=expected):
        wire.slot_code_from_proto(_slot_code(**changes), k=3)


# -- small helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(("total", "itemsize", "chunk_bytes", "expected"), [
    (0, 8, 16, [(0, 0)]),
    (1, 8, 16, [(0, 1)]),
    (4, 8, 16, [(0, 2), (2, 4)]),
    (5, 8, 16, [(0, 2), (2, 4), (4, 5)]),
    (3, 8, 1, [(0, 1), (1, 2), (2, 3)]),
])
def test_chunk_slices(total: int, itemsize: int, chunk_bytes: int, expected: list[tuple[int, int]]) -> None:
    assert list(wire.chunk_slices(total, itemsize, chunk_bytes)) == expected


def test_times_proto_round_trip_and_limit() -> None:
    times = wire.PartitionTimes([1.0, 2.0], [0.5, 0.0])

    back = wire.times_from_proto(wire.times_to_proto(times), max_len=2)

    assert (back.compute_ms, back.delay_ms) == ([1.0, 2.0], [0.5, 0.0])
    with pytest.raises(WireError, match="longer than 1 partitions"):
        wire.times_from_proto(wire.times_to_proto(times), max_len=1)


def test_small_parameters_travel_inside_the_task() -> None:
    params = np.arange(5, dtype=np.float64)

    messages = wire.task_messages(3, params, 1 << 20, 2, inline=True)

    assert len(messages) == 1 and messages[0].task.params_inline
    buf = np.empty(5)
    assert wire.accept_inline_params(buf, messages[0].task) == 5
    np.testing.assert_array_equal(buf, params)


def test_large_parameters_are_never_inline() -> None:
    messages = wire.task_messages(3, np.zeros(100), 64, 2, inline=True)

    assert not messages[0].task.params_inline and len(messages) > 2


@pytest.mark.parametrize(("data", "message"), [
    (np.array([0.0, np.nan]).tobytes(), "NaN/Inf"),
    (np.zeros(3).tobytes(), "24 B of inline params, expected 16"),
])
def test_inline_parameters_are_validated(data: bytes, message: str) -> None:
    task = pb.Task(iteration=1, dtype="<f8", total_elements=2, max_levels=1, params_inline=True, params=data)

    with pytest.raises(WireError, match=message):
        wire.accept_inline_params(np.empty(2), task)
