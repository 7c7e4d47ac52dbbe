"""`flexgc netns` in the one CLI: usage, and clear errors where it cannot run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flexgc.cli import main


def test_netns_is_a_flexgc_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["netns", "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    for command in ("up", "down", "list", "run", "shape", "partition", "heal", "probe"):
        assert re.search(rf"\n +{command} ", out), (command, out)
    assert main(["netns"]) == 2


def test_up_without_a_compose_file_says_how_to_give_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # an installed flexgc has no compose file of its own: it looks in the current directory only
    monkeypatch.chdir(tmp_path)
    assert main(["netns", "up"]) == 1
    assert "no compose file in" in capsys.readouterr().err
    assert main(["netns", "up", "-f", "missing.yml"]) == 1
    assert "missing.yml: no such compose file" in capsys.readouterr().err
