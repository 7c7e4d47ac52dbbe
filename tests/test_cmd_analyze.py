"""`flexgc analyze` and `flexgc codes check|table`, run in-process through `flexgc.cli.main`."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import pytest

from flexgc import cmd_analyze
from flexgc.cli import main
from flexgc.common.errors import CodeConstructionError


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# -- analyze ------------------------------------------------------------------------------------


def test_analyze_defaults_show_the_nested_vs_crc_comparison(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "analyze", "--trials", "20000")

    assert rc == 0
    assert "n=10" in out and "shifted-exp:a=1,mu=1,p=0" in out and "trials=20000" in out
    for spec in cmd_analyze.DEFAULT_CODES:
        assert any(line.startswith(spec + " ") for line in out.splitlines()), spec
    row = next(line for line in out.splitlines() if line.startswith("crc:s=3,decoder=per-level "))
    assert "0.8383" in row  # the closed form column


def test_analyze_json_reproduces_crc_closed_forms(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "analyze", "--workers", "10", "--code", "crc:s=1,decoder=per-level",
                     "--code", "nested:levels=0,1,2,3,decoder=per-level", "--delay", "shifted-exp:a=1,mu=1,p=0",
                     "--trials", "50000", "--seed", "3", "--json")

    assert rc == 0
    payload = json.loads(out)
    assert payload["workers"] == 10 and payload["trials"] == 50000 and payload["seed"] == 3
    crc, nested = payload["results"]
    assert crc["closed_form"] == pytest.approx(0.5858, abs=5e-5)
    assert abs(crc["mean"] / crc["closed_form"] - 1) < 0.005
    assert nested["closed_form"] is None
    assert nested["mean"] == pytest.approx(0.385, abs=0.004)
    assert len(nested["layer_use"]) == 4 and nested["policy"] == "per-level"


def test_analyze_json_has_no_infinities(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "analyze", "--code", "crc:s=1", "--delay", "shifted-exp/dead:workers=0+1+2",
                     "--trials", "200", "--json")

    assert rc == 0
    result = json.loads(out)["results"][0]
    assert "Infinity" not in out and "NaN" not in out
    assert result["mean"] is None and result["p_fail"] == 1.0


@pytest.mark.parametrize(("argv", "needles"), [
    (["--code", "crc:s=12"], ["code", "s=12", "n=10"]),
    (["--code", "nested:levels=3,1"], ["levels=3,1", "increasing"]),
    (["--code", "warp:s=1"], ["'warp'", "nested"]),
    (["--delay", "shifted-exp:mu=-1"], ["delay", "mu=-1", "> 0"]),
    (["--delay", "gamma"], ["delay", "'gamma'", "shifted-exp"]),  # (lognormal is a delay model now)
    (["--delay", "shifted-exp/dead:workers=12"], ["delay", "slot 12", "0..9"]),
    (["--trials", "0"], ["trials=0"]),
    (["--workers", "0"], ["workers=0"]),
])
def test_analyze_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str],
                                      needles: list[str]) -> None:
    rc, out, err = run(capsys, "analyze", "--trials", "100", *argv)  # a later --trials wins

    assert rc == 2
    assert out == ""
    for needle in needles:
        assert needle in err


def test_analyze_plot_writes_png(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "latency.png"

    rc, out, _ = run(capsys, "analyze", "--code", "crc:s=2", "--code", "nested:smax=2", "--trials", "500",
                     "--plot", str(path), "--dead-pattern", "spread")

    assert rc == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot written to {path}" in out


def test_analyze_plot_without_matplotlib_names_the_extra(capsys: pytest.CaptureFixture[str], tmp_path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails

    rc, _, err = run(capsys, "analyze", "--code", "crc:s=1", "--trials", "100", "--plot", str(tmp_path / "x.png"))

    assert rc == 2
    assert "matplotlib" in err and "plot" in err and "flexgc[plot]" in err


# -- codes check --------------------------------------------------------------------------------


def test_codes_check_exhaustive(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "codes", "check", "--workers", "10", "--code", "crc:s=2", "--code",
                     "nested:levels=0,1,3,decoder=per-level", "--code", "ignore:s=2", "--json")

    assert rc == 0
    payload = json.loads(out)
    assert payload["ok"] is True
    crc, nested, ignore = payload["codes"]
    assert crc["exhaustive"] and crc["patterns_checked"] == 1 + 10 + 45
    assert nested["patterns_checked"] == sum(math.comb(10, r) for r in range(4))
    assert crc["worst_residual"] <= 1e-9 and crc["worst_rel_err_float64"] <= 1e-10
    assert 1 <= crc["worst_cond"] < 1e3 and 0 < crc["worst_rel_err_float32"] <= 1e-5
    assert ignore["approximate_decodes"] == 55  # every pattern with a straggler is rescaled


def test_codes_check_counts_only_slots_that_hold_data(capsys: pytest.CaptureFixture[str]) -> None:
    # grow=2 on 8 workers: 6 slots hold data, 2 are empty; an empty slot is never one of the code's stragglers.
    rc, out, _ = run(capsys, "codes", "check", "--workers", "8", "--code", "nested:levels=0,1,2,grow=2")

    assert rc == 0
    assert f"all {1 + 6 + math.comb(6, 2)} sets of <= 2 stragglers among 6 slots holding data (2 empty)" in out
    rc, out, _ = run(capsys, "codes", "check", "--workers", "8", "--code", "nested:levels=0,1,2,grow=2", "--json")
    report = json.loads(out)["codes"][0]
    assert rc == 0 and report["empty_slots"] == 2 and report["patterns_checked"] == 22 and report["ok"]


def test_codes_check_sampled_table(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "codes", "check", "--workers", "12", "--code", "nested:smax=3",
                     "--max-exhaustive", "50", "--samples", "40")

    assert rc == 0
    assert "sampled:" in out and "ok" in out
    assert f"of {sum(math.comb(12, r) for r in range(4))} sets" in out


def test_codes_check_exit_1_on_failure(capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cmd_analyze.REL_ERR_MAX, "float32", 1e-12)  # no float32 decode is that exact

    rc, out, err = run(capsys, "codes", "check", "--workers", "6", "--code", "crc:s=1")

    assert rc == 1
    assert "FAIL" in out and "float32 relative error" in err


def test_codes_check_bad_code_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "codes", "check", "--workers", "6", "--code", "nested-frc:groups=1,4")

    assert rc == 2 and "groups=1,4" in err and "divisor chain" in err


# -- codes table --------------------------------------------------------------------------------


def test_codes_table_markdown(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "codes", "table", "--markdown", "--workers-list", "8,16", "--tolerances", "1,2,8")

    assert rc == 0
    lines = out.splitlines()
    assert lines[0].startswith("| n | s | CRC(s) construction | CRC(s) worst cond") and lines[1].startswith("| --- |")
    rows = [line.strip("| ").split(" | ") for line in lines[2:]]
    assert [(r[0], r[1]) for r in rows] == [("8", "1"), ("8", "2"), ("16", "1"), ("16", "2"),
                                            ("16", "8")]  # s >= n skipped
    n8s1 = rows[0]
    assert n8s1[2] == "cyclic-mds" and float(n8s1[3]) < 10 and n8s1[8] == "exhaustive (8)"
    assert rows[-1][8] == "exhaustive (12870)"
    for row in rows:  # every set checked includes the construction's own validation sets
        assert float(row[3]) >= float(row[4]) * 0.999
        assert float(row[5]) >= float(row[3]) * 0.999  # nested includes level s
        assert float(row[7].split()[0]) < 4 and "frc" in row[7]


def test_codes_table_shows_refusals(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    real = cmd_analyze.parse_code

    def refuse_nested(spec: str, n: int, **kw: Any) -> Any:
        if spec.startswith("nested"):
            raise CodeConstructionError(
                f"crc s=5 at n={n}: the best real construction found (cyclic-mds) has worst cond(B_F)=1.11e+06 "
                "> max_cond=1e+06; use s with n-s odd (cyclic-MDS, well conditioned; nearest: none) or raise "
                "max_cond")
        return real(spec, n, **kw)

    monkeypatch.setattr(cmd_analyze, "parse_code", refuse_nested)

    rc, out, _ = run(capsys, "codes", "table", "--workers-list", "8", "--tolerances", "1")

    assert rc == 0
    assert "refused: level s=5 (cyclic-mds) cond 1.11e+06 > 1e+06" in out


def test_codes_table_bad_list_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "codes", "table", "--tolerances", "1,x")

    assert rc == 2 and "tolerances='1,x'" in err
