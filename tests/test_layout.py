"""The import tree: one name per module, followed by every tool from a checkout as from a wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("folder", ["common", "master", "worker"])
def test_subpackage_is_the_top_level_folder(folder: str) -> None:
    # Prepare
    link = ROOT / "flexgc" / folder

    # Execute
    module = __import__(f"flexgc.{folder}", fromlist=["_"])

    # Assert
    assert link.is_symlink() and link.resolve() == ROOT / folder
    assert Path(module.__file__ or "").resolve().parent == ROOT / folder


def test_mypy_sees_through_flexgc_common_imports(tmp_path: Path) -> None:
    # Prepare: a real type error behind an import of flexgc.common (it used to become Any)
    probe = tmp_path / "probe.py"
    probe.write_text("from flexgc.common.codes import parse_code\n\nn: str = parse_code('crc:s=1', 4).n\n")

    # Execute
    run = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "--ignore-missing-imports",
                          str(probe)], cwd=ROOT, capture_output=True, text=True, timeout=120)

    # Assert
    assert run.returncode == 1, run.stdout + run.stderr
    assert 'expression has type "int", variable has type "str"' in run.stdout


@pytest.mark.slow
def test_wheel_holds_one_package_flexgc(tmp_path: Path) -> None:
    # Execute
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                         capture_output=True, text=True, timeout=300)

    # Assert
    assert run.returncode == 0, run.stderr[-2000:]
    (wheel,) = tmp_path.glob("flexgc-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"flexgc"}
    for sub in ("common/codes.py", "master/coordinator.py", "worker/client.py", "v1/coordinator_pb2.py"):
        assert f"flexgc/{sub}" in names
    assert "BuildBackendWarning" not in run.stderr  # e.g. the licence-table deprecation
