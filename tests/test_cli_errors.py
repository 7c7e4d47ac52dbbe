"""The entry point's error paths: a mistyped option shows the subcommand's usage, a closed stdout ends
quietly with 141 (no traceback)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from flexgc.cli import main


@pytest.mark.parametrize(("argv", "usage"), [
    (["master", "--workerz", "4"], "usage: flexgc master"),
    (["codes", "check", "--code", "crc:s=1", "--bogus"], "usage: flexgc codes check"),
    (["report", "runs/x", "-o", "y"], "usage: flexgc report"),
])
def test_unknown_option_shows_the_subcommands_usage(capsys: pytest.CaptureFixture[str], argv: list[str],
                                                    usage: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage), err
    assert f"error: unrecognized arguments: {argv[-2] if argv[-1] in ('4', 'y') else argv[-1]}" in err


def test_closed_stdout_ends_quietly_with_141() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte, like `| head` after its line
    try:
        proc = subprocess.run([sys.executable, "-m", "flexgc", "analyze", "--trials", "200", "--json"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    finally:
        os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
