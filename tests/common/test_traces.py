"""Trace files: the shipped matrices, the CSV and .npz parsers, the cache, the step-time converter and its CLI."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from flexgc.common import traces
from flexgc.common.errors import ConfigError
from flexgc.common.traces import (
    SHIPPED,
    convert_step_times,
    describe,
    load_factors,
    read_step_times,
    resolve,
)
from flexgc.common.traces import __main__ as traces_cli


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# -- shipped traces -----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "shape"), [("bytedance-se", (43, 32)), ("bytedance-ar", (44, 4))])
def test_shipped_traces_resolve_by_short_name(name: str, shape: tuple[int, int]) -> None:
    F = load_factors(name)

    assert resolve(name).parent == traces.TRACE_DIR and resolve(name).name == SHIPPED[name]
    assert F.shape == shape and F.dtype == np.float64
    assert np.all(F > 0) and np.median(F) == pytest.approx(1.0, abs=0.01)  # divided by the matrix median
    assert not F.flags.writeable


def test_shipped_folder_holds_licence_and_notice() -> None:
    notice = (traces.TRACE_DIR / "NOTICE.md").read_text(encoding="utf-8")

    assert "Apache License" in (traces.TRACE_DIR / "LICENSE-StragglerAnalysis.txt").read_text(encoding="utf-8")
    for needle in ("ByteDance-Seed/StragglerAnalysis", "8efcd7f", "OSDI", "divided by its own median"):
        assert needle in notice


def test_bytedance_se_figures() -> None:
    figures = describe(load_factors("bytedance-se"))

    assert figures["p90"] == pytest.approx(1.166, abs=0.002)
    assert figures["p99"] == pytest.approx(1.372, abs=0.002)
    assert figures["max"] == pytest.approx(1.802, abs=0.002)


def test_other_values_are_paths(tmp_path: Path) -> None:
    path = _write(tmp_path, "mine.csv", "a,b\n1,2\n")

    assert resolve(path) == Path(path)
    assert load_factors(path).tolist() == [[1.0, 2.0]]
    with pytest.raises(ConfigError, match=r"delay: trace file 'nope.csv': .*shipped traces: bytedance-se, "
                                          r"bytedance-ar"):
        load_factors("nope.csv", "delay")


# -- CSV -----------------------------------------------------------------------------------------


def test_csv_comments_header_and_blank_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.csv", "# a comment\n\n  # indented comment\nw0, w1 ,w2\n1, 2, 3\n\n0.5,1e-1,4\n")

    F = load_factors(path)

    assert F.tolist() == [[1.0, 2.0, 3.0], [0.5, 0.1, 4.0]]


@pytest.mark.parametrize(("text", "needles"), [
    ("w0,w1\n1,2\n3,abc\n", ["line 3, column 2", "'abc' is not a number"]),
    ("# c\nw0,w1\n1,0\n", ["line 3, column 2", "factor '0'", "finite and > 0"]),
    ("w0,w1\n-1,2\n", ["line 2, column 1", "factor '-1'"]),
    ("w0,w1\n1,nan\n", ["line 2, column 2", "factor 'nan'"]),
    ("w0,w1\ninf,1\n", ["line 2, column 1", "factor 'inf'"]),
    ("w0,w1\n1,2\n1,2,3\n", ["line 3 has 3 fields", "the header (line 1) has 2"]),
    ("# only comments\nw0,w1\n", ["a header but no data rows"]),
    ("# nothing\n\n", ["no header and no data rows"]),
    ("1,2\n", ["a header but no data rows"]),  # the first line is always the header
])
def test_malformed_csv_names_file_line_and_column(tmp_path: Path, text: str, needles: list[str]) -> None:
    path = _write(tmp_path, "bad.csv", text)

    with pytest.raises(ConfigError) as info:
        load_factors(path, "delay")

    message = str(info.value)
    assert message.startswith(f"delay: trace file {path!r}")
    for needle in needles:
        assert needle in message


def test_edited_file_is_parsed_again(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.csv", "w\n1\n")
    first = load_factors(path)

    Path(path).write_text("w\n2\n3\n", encoding="utf-8")
    os.utime(path, ns=(1, 1))  # a different modification time whatever the clock's resolution

    assert first.tolist() == [[1.0]]
    assert load_factors(path).tolist() == [[2.0], [3.0]]
    assert load_factors(path) is load_factors(path)  # cached


# -- .npz ----------------------------------------------------------------------------------------


def test_npz_with_one_2d_array(tmp_path: Path) -> None:
    path = tmp_path / "t.npz"
    np.savez(path, F=np.array([[1, 2], [3, 4]], dtype=np.int32))

    assert load_factors(str(path)).tolist() == [[1.0, 2.0], [3.0, 4.0]]


@pytest.mark.parametrize(("arrays", "needles"), [
    ({"F": np.ones(3)}, ["shape (3,)", "2-D"]),
    ({"F": np.ones((2, 2)), "G": np.ones((2, 2))}, ["holds 2 arrays (F, G)", "exactly one"]),
    ({"F": np.array([[1.0, 2.0], [3.0, 0.0]])}, ["entry [1, 1]", "finite and > 0"]),
    ({"F": np.array([[1.0, np.nan]])}, ["entry [0, 1]", "nan"]),
    ({"F": np.array([["a", "b"]])}, ["dtype <U1", "real numbers"]),
])
def test_bad_npz_is_refused(tmp_path: Path, arrays: dict[str, np.ndarray], needles: list[str]) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]

    with pytest.raises(ConfigError) as info:
        load_factors(str(path))

    for needle in needles:
        assert needle in str(info.value)


def test_npz_that_is_not_an_archive(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.npz", "w\n1\n")

    with pytest.raises(ConfigError, match=r"not a readable \.npz"):
        load_factors(path)


# -- converting step times ------------------------------------------------------------------------


def test_long_step_times_are_sorted_into_a_matrix(tmp_path: Path) -> None:
    path = _write(tmp_path, "long.csv", "# measured\nWorker,Seconds,Step\n10,4,2\n2,1,1\n10,2,1\n2,3,2\n")

    T = read_step_times(path)

    # steps 1, 2 (numeric order), workers 2, 10 (numeric, not text, order)
    assert T.tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_matrix_step_times(tmp_path: Path) -> None:
    path = _write(tmp_path, "matrix.csv", "r0,r1,r2\n0.1,0.2,0.3\n0.2,0.2,0.4\n")

    assert read_step_times(path).tolist() == [[0.1, 0.2, 0.3], [0.2, 0.2, 0.4]]


@pytest.mark.parametrize(("text", "needles"), [
    ("step,worker,seconds\n0,0,1\n0,0,2\n", ["line 3", "already given on line 2", "aggregate"]),
    ("step,worker,seconds\n0,0,1\n0,1,2\n1,0,2\n", ["no time for step '1', worker '1'", "1 (step, worker)"]),
    ("step,worker,seconds\n0,0,1,5\n", ["line 2 has 4 fields", "need 3"]),
    ("step,worker,seconds\n0,0,-2\n", ["line 2, column 3", "step time '-2'"]),
    ("step,worker,seconds\n", ["a header but no measurements"]),
])
def test_bad_step_times(tmp_path: Path, text: str, needles: list[str]) -> None:
    path = _write(tmp_path, "bad.csv", text)

    with pytest.raises(ConfigError) as info:
        read_step_times(path)

    for needle in needles:
        assert needle in str(info.value)


def test_converted_file_replays_as_a_trace(tmp_path: Path) -> None:
    source = _write(tmp_path, "long.csv", "step,worker,seconds\n0,0,1.0\n0,1,2.0\n1,0,1.5\n1,1,1.0\n")
    dest = tmp_path / "factors.csv"

    F = convert_step_times(source, dest, note="two workers, two steps")

    text = dest.read_text(encoding="utf-8")
    assert text.startswith("# two workers, two steps\n# per-step time of each worker from long.csv")
    assert "(1.25 s)" in text  # the median it divided by
    assert F.tolist() == [[0.8, 1.6], [1.2, 0.8]]
    assert np.allclose(load_factors(str(dest)), F)


def test_cli_convert_and_describe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _write(tmp_path, "m.csv", "a,b\n2,4\n4,2\n")
    dest = str(tmp_path / "f.csv")

    rc = traces_cli.main(["convert", source, dest])
    shown = traces_cli.main(["describe", "bytedance-ar"])
    bad = traces_cli.main(["describe", str(tmp_path / "missing.csv")])

    out, err = capsys.readouterr()
    assert (rc, shown, bad) == (0, 0, 2)
    assert f"wrote {dest}: 2 steps x 2 workers" in out
    assert "44 steps x 4 workers" in out
    assert "error: trace file" in err and "missing.csv" in err
    assert np.allclose(load_factors(dest), [[2 / 3, 4 / 3], [4 / 3, 2 / 3]], rtol=1e-5)  # 6 digits
