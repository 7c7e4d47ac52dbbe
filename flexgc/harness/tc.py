"""Link shaping through the `deploy/tc` scripts: the same `apply.sh` and `clear.sh` that the image's
entrypoint runs for `FLEXGC_TC_*`, here run inside a namespace (`ip netns exec NS apply.sh ...`).

There is no second implementation of tc units or qdiscs: the script validates the values (its exit code 2
and message come back as a `HarnessError`), builds the qdiscs (tbf for a rate; netem for delay, jitter and
loss, with tbf as its child when both are given) and says when the kernel lacks sch_netem (exit code 3,
`NetemUnavailableError`).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from flexgc.harness.errors import HarnessError, HarnessUnavailableError, NetemUnavailableError

# where the image's Dockerfile installs deploy/tc
IMAGE_TC_DIR = Path("/opt/flexgc/tc")


@dataclass(frozen=True, slots=True)
class Shaping:
    """What apply.sh puts on an interface, in its own units: rate `20mbit`, burst `64kb`, delay and
    jitter `50ms`, loss `1%`, queue_latency `100ms` (tbf's longest queueing). None: not set."""

    rate: str | None = None
    burst: str | None = None
    delay: str | None = None
    jitter: str | None = None
    loss: str | None = None
    queue_latency: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Shaping | None:
        """From the entrypoint's FLEXGC_TC_RATE / _BURST / _DELAY / _JITTER / _LOSS (empty = unset)."""
        names = ("rate", "burst", "delay", "jitter", "loss")  # as deploy/entrypoint.sh reads them
        shaping = cls(**{name: env.get(f"FLEXGC_TC_{name.upper()}") or None for name in names})
        return shaping if shaping.args() else None

    def args(self) -> list[str]:
        out: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out += [f"--{f.name.replace('_', '-')}", str(value)]
        return out


def find_tc_dir(candidates: Sequence[Path]) -> Path:
    """The first of `candidates`, then the image's /opt/flexgc/tc, that holds apply.sh and clear.sh."""
    looked = [*candidates, IMAGE_TC_DIR]
    for directory in looked:
        if all(os.access(directory / s, os.X_OK) for s in ("apply.sh", "clear.sh")):
            return directory.resolve()
    raise HarnessError(f"the tc scripts (apply.sh, clear.sh) are not in {', '.join(map(str, looked))}; they are "
                       "the repository's deploy/tc: pass its path (--tc-dir)")


def _run_script(ns: str, script: Path, args: Sequence[str], timeout_s: float = 30.0) -> str:
    argv = ["ip", "netns", "exec", ns, str(script), *args]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"`{shlex.join(argv)}` did not finish within {timeout_s} s") from None
    except FileNotFoundError:
        raise HarnessUnavailableError("`ip` not found: install iproute2 (apt-get install iproute2)") from None
    message = (result.stderr or result.stdout).strip()
    if result.returncode == 3:
        raise NetemUnavailableError(message)
    if result.returncode in (4, 6):
        raise HarnessUnavailableError(message)
    if result.returncode != 0:
        raise HarnessError(f"`{shlex.join(argv)}` exited {result.returncode}: {message}")
    return result.stdout


def apply(tc_dir: Path, ns: str, device: str, shaping: Shaping) -> str:
    """Replace the root qdisc of `device` in namespace `ns` by `shaping` (apply.sh); its report."""
    return _run_script(ns, tc_dir / "apply.sh", ["--interface", device, *shaping.args()])


def clear(tc_dir: Path, ns: str, device: str) -> None:
    """Back to the kernel's default qdisc (clear.sh; a no-op when nothing is shaped)."""
    _run_script(ns, tc_dir / "clear.sh", ["--interface", device])
