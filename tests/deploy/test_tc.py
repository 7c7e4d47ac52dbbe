"""deploy/tc/*.sh for real: a veth pair between two network namespaces made (and removed) by the test.

The tbf rate limit must shape a real transfer; netem must either work or, on a kernel without
sch_netem, fail with exit code 3 and a message that names sch_netem. Needs root and `ip netns`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

TC_DIR = Path(__file__).resolve().parents[2] / "deploy" / "tc"
APPLY, CLEAR, STATUS = (str(TC_DIR / name) for name in ("apply.sh", "clear.sh", "status.sh"))

# Runs in the namespace of the receiver: accept one connection, read to EOF, answer b"ok".
_RECEIVER = """
import socket, sys
srv = socket.create_server((sys.argv[1], 0))
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
while conn.recv(1 << 20):
    pass
conn.sendall(b"ok")
conn.close()
"""


@dataclass(frozen=True)
class Link:
    """veth `sender_if` in namespace `sender` <-> `receiver_if` (address `receiver_ip`) in `receiver`."""

    sender: str
    receiver: str
    sender_if: str
    receiver_ip: str


def _run(*args: str, check: bool = True, timeout_s: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=timeout_s)


def _in_ns(ns: str, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return _run("ip", "netns", "exec", ns, *args, check=check)


def _skip_reason() -> str | None:
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "needs root to create network namespaces (run the suite as root, as CI does)"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "needs iproute2 (ip, tc): apt-get install iproute2"
    return None


@pytest.fixture
def link() -> Iterator[Link]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    tag = f"fgc-tctest-{os.getpid()}"
    sender, receiver = f"{tag}-a", f"{tag}-b"
    made: list[str] = []
    try:
        for ns in (sender, receiver):
            _run("ip", "netns", "add", ns)
            made.append(ns)
        _run("ip", "-n", sender, "link", "add", "fgc0", "type", "veth", "peer", "name", "fgc1",
             "netns", receiver)
        _run("ip", "-n", sender, "addr", "add", "10.203.0.1/30", "dev", "fgc0")
        _run("ip", "-n", receiver, "addr", "add", "10.203.0.2/30", "dev", "fgc1")
        for ns, dev in ((sender, "fgc0"), (receiver, "fgc1")):
            _run("ip", "-n", ns, "link", "set", dev, "up")
        yield Link(sender, receiver, "fgc0", "10.203.0.2")
    finally:  # deleting a namespace deletes its veth end, and with it the peer
        for ns in reversed(made):
            _run("ip", "netns", "del", ns, check=False)


def _transfer_s(link: Link, n_bytes: int) -> float:
    """Seconds to send n_bytes over the link (sender -> receiver) and get the receiver's answer."""
    receiver = subprocess.Popen(["ip", "netns", "exec", link.receiver, sys.executable, "-c", _RECEIVER,
                                 link.receiver_ip], stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None
        port = int(receiver.stdout.readline())
        sender = (
            "import socket, sys, time\n"
            f"s = socket.create_connection(({link.receiver_ip!r}, {port}), timeout=20)\n"
            "t0 = time.perf_counter()\n"
            f"s.sendall(bytes({n_bytes}))\n"
            "s.shutdown(socket.SHUT_WR)\n"
            "assert s.recv(2) == b'ok'\n"
            "print(time.perf_counter() - t0)\n"
        )
        out = _in_ns(link.sender, sys.executable, "-c", sender, check=True)
        return float(out.stdout)
    finally:
        receiver.wait(timeout=20)


@pytest.mark.netns
def test_rate_limit_shapes_a_real_transfer(link: Link) -> None:
    # Prepare: 4 MiB at 20 Mbit/s takes 1.68 s on the wire
    n_bytes, rate_bit_s = 4 << 20, 20e6
    unshaped_s = _transfer_s(link, n_bytes)

    # Execute
    applied = _in_ns(link.sender, APPLY, "--interface", link.sender_if, "--rate", "20mbit")
    shaped_s = _transfer_s(link, n_bytes)
    status = _in_ns(link.sender, STATUS, "--interface", link.sender_if)

    # Assert
    assert applied.returncode == 0, applied.stderr
    assert "tbf 1: root" in applied.stdout and "rate 20Mbit" in applied.stdout
    assert status.returncode == 0 and "fgc0: shaped" in status.stdout and "rate 20Mbit" in status.stdout
    expected_s = n_bytes * 8 / rate_bit_s
    assert unshaped_s < 0.5 * expected_s
    assert 0.8 * expected_s < shaped_s < 1.5 * expected_s, f"shaped {shaped_s:.2f} s, want {expected_s:.2f} s"


@pytest.mark.netns
def test_netem_applies_or_fails_clearly_without_sch_netem(link: Link) -> None:
    # Prepare: an earlier rate limit that apply.sh has to replace
    _in_ns(link.sender, APPLY, "--interface", link.sender_if, "--rate", "50mbit", check=True)

    # Execute
    applied = _in_ns(link.sender, APPLY, "--interface", link.sender_if, "--delay", "20ms", "--jitter", "2ms",
                     "--loss", "0.1%", "--rate", "20mbit")
    qdiscs = _in_ns(link.sender, "tc", "qdisc", "show", "dev", link.sender_if, check=True).stdout

    # Assert
    if applied.returncode == 0:  # a kernel with sch_netem: netem at the root, tbf below it
        assert "netem 1: root" in qdiscs and "delay 20ms" in qdiscs and "tbf 10: parent 1:1" in qdiscs
    else:
        assert applied.returncode == 3, applied.stderr
        assert "no sch_netem" in applied.stderr and "modprobe sch_netem" in applied.stderr
        assert "left with the kernel's default qdisc" in applied.stderr
        assert "tbf" not in qdiscs and "netem" not in qdiscs


@pytest.mark.netns
def test_clear_restores_the_default_and_is_idempotent(link: Link) -> None:
    # Prepare
    _in_ns(link.sender, APPLY, "--interface", link.sender_if, "--rate", "10mbit", check=True)

    # Execute
    first = _in_ns(link.sender, CLEAR, "--interface", link.sender_if)
    second = _in_ns(link.sender, CLEAR, "--interface", link.sender_if)
    status = _in_ns(link.sender, STATUS, "--interface", link.sender_if)

    # Assert
    assert first.returncode == 0 and "removing root qdisc: qdisc tbf 1: root" in first.stderr
    assert second.returncode == 0 and "removing" not in second.stderr
    assert "not shaped" in status.stdout


@pytest.mark.netns
def test_refuses_without_root_or_net_admin(link: Link) -> None:
    # Prepare: an unprivileged user, and root with CAP_NET_ADMIN dropped from its bounding set
    as_nobody = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all")
    without_cap = ("setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin")
    args = (APPLY, "--interface", link.sender_if, "--rate", "10mbit")

    # Execute
    nobody = _in_ns(link.sender, *as_nobody, *args)
    capless_root = _in_ns(link.sender, *without_cap, *args)

    # Assert
    assert nobody.returncode == 4 and "needs root with CAP_NET_ADMIN" in nobody.stderr, nobody.stderr
    assert capless_root.returncode == 4, capless_root.stderr
    assert "without CAP_NET_ADMIN" in capless_root.stderr


def test_usage_errors_name_the_option() -> None:
    # needs no namespace: these fail before tc runs
    cases = {
        (): "nothing to apply",
        ("--jitter", "5ms"): "--jitter 5ms needs --delay",
        ("--delay", "5"): "--delay '5' is not valid",
        ("--loss", "150%"): "--loss 150% is above 100%",
        ("--rate", "fast"): "--rate 'fast' is not valid",
        ("--delay", "5ms", "--burst", "64kb"): "--burst 64kb needs --rate",
        ("--rate",): "--rate needs a value",
        ("--bogus",): "unknown argument '--bogus'",
    }
    for args, message in cases.items():
        result = _run(APPLY, *args, check=False)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)


def test_dry_run_prints_netem_with_tbf_child() -> None:
    # Prepare: --dry-run still checks that the interface exists
    if shutil.which("ip") is None or shutil.which("tc") is None:
        pytest.skip("needs iproute2 (ip, tc): apt-get install iproute2")

    # Execute
    result = _run(APPLY, "--interface", "lo", "--delay", "50ms", "--jitter", "5ms", "--loss", "1%",
                  "--rate", "1gbit", "--dry-run", check=False)

    # Assert: 1 Gbit/s -> a 10 ms bucket of 1250000 bytes
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == [
        "tc qdisc add dev lo root handle 1: netem limit 10000 delay 50ms 5ms loss 1%",
        "tc qdisc add dev lo parent 1:1 handle 10: tbf rate 1gbit burst 1250000 latency 100ms",
    ]


@pytest.mark.netns
def test_no_namespaces_left_behind() -> None:
    # runs last in this module: every fixture above removed what it made
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    names = _run("ip", "netns", "list").stdout.split()
    assert [ns for ns in names if ns.startswith(f"fgc-tctest-{os.getpid()}")] == []
