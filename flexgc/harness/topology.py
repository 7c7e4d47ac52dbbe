"""Network namespaces for a multi-host cluster on one Linux machine: one namespace per service, joined by a
bridge, with a state file so that what a killed run left behind can be found and removed.

Layout of one run, named ``<tag>`` (prefix plus random hex, unique per run)::

    <tag>-br         bridge namespace: bridge br0 and one port p<i> per node (no address)
    <tag>-master     eth0 10.A.B.10/24   (veth peer of p0)        /etc/netns/<tag>-master/hosts
    <tag>-worker-1   eth0 10.A.B.11/24   (veth peer of p1)        /etc/netns/<tag>-worker-1/hosts
    ...

The /24 is picked at random per run and exists only on links inside these namespaces; every namespace's
hosts file maps each node name (``master``, ``worker-1``, ...) to its address, so ``FLEXGC_MASTER=
master:50051`` resolves inside the worker namespaces.

Links: ``up`` shapes what a node sends (its eth0), ``down`` what it receives (its bridge port), both
through the deploy/tc scripts (`flexgc.harness.tc`); `partition`/`heal` take a node's bridge port down and
up (a cut cable: both ends lose carrier, TCP connections stay open). Needs root and iproute2.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeVar

from flexgc.harness import tc
from flexgc.harness.errors import HarnessError, HarnessUnavailableError

_log = logging.getLogger(__name__)

DEFAULT_PREFIX = "fgcn"
STATE_DIR = Path("/run/flexgc-netns")
NETNS_ETC = Path("/etc/netns")
BRIDGE = "br0"
NODE_IF = "eth0"
Direction = Literal["up", "down", "both"]
_T = TypeVar("_T")

# -- commands --------------------------------------------------------------------------------------------

def _run(*args: str, check: bool = True, timeout_s: float = 20.0) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"`{shlex.join(args)}` did not finish within {timeout_s} s") from None
    except FileNotFoundError:
        raise HarnessUnavailableError(f"`{args[0]}` not found: install iproute2 (apt-get install iproute2)") from None
    if check and result.returncode != 0:
        raise HarnessError(f"`{shlex.join(args)}` failed with exit code {result.returncode}: "
                         f"{(result.stderr or result.stdout).strip()}")
    return result


def _ns_exec(ns: str, *args: str, check: bool = True, timeout_s: float = 20.0) -> subprocess.CompletedProcess[str]:
    return _run("ip", "netns", "exec", ns, *args, check=check, timeout_s=timeout_s)


def wait_until(condition: Callable[[], _T | None], timeout_s: float, what: str, interval_s: float = 0.05) -> _T:
    """Poll `condition` until it returns a truthy value (returned) or `timeout_s` passes (TimeoutError)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout_s} s")
        time.sleep(min(interval_s, max(0.0, deadline - time.monotonic())))


# -- capabilities ----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Capabilities:
    """What this machine can do. `reason` is None when namespaces, veth, bridges and tbf work."""

    reason: str | None
    netem: bool
    netem_reason: str | None


@cache
def probe() -> Capabilities:
    """Create a scratch namespace and try each feature once (cached per process)."""
    if not sys.platform.startswith("linux"):
        return Capabilities("network namespaces need Linux", False, "needs Linux")
    if os.geteuid() != 0:
        return Capabilities("needs root to create network namespaces (run as root, as CI does)", False,
                            "needs root")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return Capabilities(f"`{tool}` not found: install iproute2 (apt-get install iproute2)", False,
                                "needs iproute2")
    ns = f"{DEFAULT_PREFIX}probe{os.getpid()}x{random.randrange(16**4):04x}"
    made = False
    try:
        result = _run("ip", "netns", "add", ns, check=False)
        if result.returncode != 0:
            return Capabilities(f"`ip netns add` failed: {result.stderr.strip()}", False, "no namespaces")
        made = True
        steps = [
            (("ip", "-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1"), "veth pairs"),
            (("ip", "-n", ns, "link", "add", BRIDGE, "type", "bridge"), "bridges"),
            (("ip", "-n", ns, "link", "set", "v0", "up"), "links"),
            (("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "v0", "root", "tbf", "rate", "10mbit",
              "burst", "32kb", "latency", "50ms"), "tc tbf"),
        ]
        for args, feature in steps:
            result = _run(*args, check=False)
            if result.returncode != 0:
                return Capabilities(f"{feature} do not work here: `{shlex.join(args)}`: {result.stderr.strip()}",
                                    False, "harness unavailable")
        netem = _run("ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", "v0", "root", "netem", "delay",
                     "1ms", check=False)
        if netem.returncode == 0:
            return Capabilities(None, True, None)
        return Capabilities(None, False, "the kernel has no sch_netem (tc: "
                            f"{netem.stderr.strip() or 'netem refused'}): tc cannot add delay, jitter or loss "
                            "here; rates (tbf) work, and flexgc.harness.delayproxy injects latency in userspace")
    except HarnessError as exc:
        return Capabilities(str(exc), False, "harness unavailable")
    finally:
        if made:
            _run("ip", "netns", "del", ns, check=False)


# -- topology --------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One service's namespace, address and the bridge port that leads to it."""

    name: str
    role: str
    index: int
    ns: str
    address: str
    port_if: str


@dataclass
class Topology:
    """The namespaces and links of one run; serializable, so a detached run can be driven by its tag."""

    tag: str
    subnet: str                     # "10.A.B" (a /24)
    bridge_ns: str
    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    owner_pid: int = 0
    owner_start: str = ""
    run_dir: str = ""
    tc_dir: str = ""                # deploy/tc: apply.sh and clear.sh
    detached: bool = False

    # state file ----------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return STATE_DIR / f"{self.tag}.json"

    def save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        data = asdict(self)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.state_path)

    @classmethod
    def load(cls, tag: str) -> Topology:
        path = STATE_DIR / f"{tag}.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise HarnessError(f"no state for run {tag!r} ({path}: {exc}); see `flexgc netns list`") from None
        nodes = {k: NodeInfo(**v) for k, v in data.pop("nodes").items()}
        return cls(nodes=nodes, **data)

    @property
    def namespaces(self) -> list[str]:
        return [self.bridge_ns, *(n.ns for n in self.nodes.values())]

    def node(self, name: str) -> NodeInfo:
        try:
            return self.nodes[name]
        except KeyError:
            raise HarnessError(f"no service {name!r} in run {self.tag}; have {', '.join(self.nodes)}") from None

    # building ------------------------------------------------------------------------------------
    def add_node(self, name: str, role: str) -> NodeInfo:
        index = len(self.nodes)
        if index > 200:
            raise HarnessError("at most 200 services per run")
        node = NodeInfo(name, role, index, f"{self.tag}-{name}", f"{self.subnet}.{10 + index}", f"p{index}")
        self.nodes[name] = node
        return node

    def build(self) -> None:
        """Create the bridge namespace, one namespace per node, the veth pairs and the hosts files."""
        self.save()  # first, so that `down` finds the run even if we die half-way
        _run("ip", "netns", "add", self.bridge_ns)
        _run("ip", "-n", self.bridge_ns, "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "-n", self.bridge_ns, "link", "set", BRIDGE, "up")
        _run("ip", "-n", self.bridge_ns, "link", "set", "lo", "up")
        hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" + "".join(
            f"{n.address}\t{n.name}\n" for n in self.nodes.values())
        for node in self.nodes.values():
            _run("ip", "netns", "add", node.ns)
            _run("ip", "-n", self.bridge_ns, "link", "add", node.port_if, "type", "veth", "peer", "name", NODE_IF,
                 "netns", node.ns)
            _run("ip", "-n", self.bridge_ns, "link", "set", node.port_if, "master", BRIDGE)
            _run("ip", "-n", self.bridge_ns, "link", "set", node.port_if, "up")
            _run("ip", "-n", node.ns, "addr", "add", f"{node.address}/24", "dev", NODE_IF)
            _run("ip", "-n", node.ns, "link", "set", NODE_IF, "up")
            _run("ip", "-n", node.ns, "link", "set", "lo", "up")
            etc = NETNS_ETC / node.ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(hosts)
        _log.info("built tag=%s subnet=%s.0/24 nodes=%s", self.tag, self.subnet, ",".join(self.nodes))

    def teardown(self) -> list[str]:
        """Kill what runs in our namespaces, delete them and their /etc/netns dirs; returns the errors."""
        errors: list[str] = []
        existing = set(list_namespaces())
        for ns in self.namespaces:
            if ns in existing:
                _kill_namespace_processes(ns)
                result = _run("ip", "netns", "del", ns, check=False)
                if result.returncode != 0:
                    errors.append(f"ip netns del {ns}: {result.stderr.strip()}")
            etc = NETNS_ETC / ns
            if etc.exists():
                shutil.rmtree(etc, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()
        with contextlib.suppress(OSError):  # /etc/netns too, when no other namespace uses it
            NETNS_ETC.rmdir()
        _log.info("removed tag=%s namespaces=%d errors=%d", self.tag, len(self.namespaces), len(errors))
        return errors

    # links ---------------------------------------------------------------------------------------
    def _devices(self, name: str, direction: Direction) -> list[tuple[str, str]]:
        """(namespace, device) pairs: `up` = what the node sends (its eth0); `down` = what it receives."""
        if direction not in ("up", "down", "both"):
            raise ValueError(f"direction={direction!r}; allowed: up, down, both")
        node = self.node(name)
        out = []
        if direction in ("up", "both"):
            out.append((node.ns, NODE_IF))
        if direction in ("down", "both"):
            out.append((self.bridge_ns, node.port_if))
        return out

    def shape(self, name: str, shaping: tc.Shaping, direction: Direction = "up") -> None:
        """Replace the root qdisc of a node's link by `shaping`, with deploy/tc/apply.sh (the entrypoint's
        script). Delay, jitter and loss need sch_netem (`NetemUnavailableError` otherwise)."""
        tc_dir = self._tc_dir()
        for ns, dev in self._devices(name, direction):
            report = tc.apply(tc_dir, ns, dev, shaping)
            _log.info("shaped node=%s dev=%s %s", name, dev, " ".join(report.split()[:12]))

    def unshape(self, name: str, direction: Direction = "both") -> None:
        """Back to the kernel's default qdisc (deploy/tc/clear.sh)."""
        tc_dir = self._tc_dir()
        for ns, dev in self._devices(name, direction):
            tc.clear(tc_dir, ns, dev)

    def _tc_dir(self) -> Path:
        if not self.tc_dir:
            raise HarnessError(f"run {self.tag} was made without the tc scripts (deploy/tc); pass tc_dir")
        return Path(self.tc_dir)

    def qdisc_stats(self, name: str, direction: Literal["up", "down"] = "up") -> list[dict[str, Any]]:
        """`tc -s -j qdisc show` of the node's link in one direction (bytes, packets, drops, overlimits...)."""
        ((ns, dev),) = self._devices(name, direction)
        return list(json.loads(_ns_exec(ns, "tc", "-s", "-j", "qdisc", "show", "dev", dev).stdout or "[]"))

    def link_stats(self, name: str) -> dict[str, int]:
        """Bytes and packets the node's eth0 sent (tx) and received (rx), and its drops."""
        node = self.node(name)
        (info,) = json.loads(_run("ip", "-n", node.ns, "-s", "-j", "link", "show", "dev", NODE_IF).stdout)
        st = info["stats64"]
        return {"tx_bytes": st["tx"]["bytes"], "rx_bytes": st["rx"]["bytes"], "tx_packets": st["tx"]["packets"],
                "rx_packets": st["rx"]["packets"], "tx_dropped": st["tx"]["dropped"],
                "rx_dropped": st["rx"]["dropped"]}

    def partition(self, name: str) -> None:
        """Cut a node off: its bridge port goes down (both ends lose carrier; sockets stay open)."""
        node = self.node(name)
        _run("ip", "-n", self.bridge_ns, "link", "set", node.port_if, "down")
        _log.info("partitioned node=%s", name)

    def heal(self, name: str) -> None:
        """Reconnect a node cut off by `partition`."""
        node = self.node(name)
        _run("ip", "-n", self.bridge_ns, "link", "set", node.port_if, "up")
        _log.info("healed node=%s", name)


def list_namespaces() -> list[str]:
    result = _run("ip", "-j", "netns", "list", check=False)
    if result.returncode != 0 or not result.stdout.strip():
        return []
    return [entry["name"] for entry in json.loads(result.stdout)]


def _kill_namespace_processes(ns: str, grace_s: float = 3.0) -> None:
    """SIGTERM, then SIGKILL, every process whose network namespace is `ns`."""
    def pids() -> list[int]:
        result = _run("ip", "netns", "pids", ns, check=False)
        return [int(p) for p in result.stdout.split() if p.isdigit() and int(p) != os.getpid()]

    for sig in (signal.SIGCONT, signal.SIGTERM):
        for pid in pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    deadline = time.monotonic() + grace_s
    while pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    left = pids()
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if left:
        _log.warning("killed ns=%s pids=%s (did not stop on SIGTERM within %.1f s)", ns, left, grace_s)


def _process_start(pid: int) -> str:
    """The start time of a process (field 22 of /proc/PID/stat), to tell a live owner from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def _owner_alive(topo: Topology) -> bool:
    return bool(topo.owner_pid) and _process_start(topo.owner_pid) == topo.owner_start


def runs(prefix: str = DEFAULT_PREFIX) -> dict[str, Topology | None]:
    """Runs with this prefix: from state files, plus namespaces without one (value None)."""
    found: dict[str, Topology | None] = {}
    if STATE_DIR.is_dir():
        for path in sorted(STATE_DIR.glob(f"{prefix}*.json")):
            with contextlib.suppress(HarnessError, TypeError):
                found[path.stem] = Topology.load(path.stem)
    for ns in list_namespaces():
        if ns.startswith(prefix):
            tag = ns.split("-", 1)[0]
            found.setdefault(tag, None)
    return found


def down(prefix: str = DEFAULT_PREFIX, tag: str | None = None, force: bool = False) -> list[str]:
    """Remove runs left behind: `tag` exactly, or every run with `prefix` whose harness is gone (detached
    runs too; `force`: also runs whose harness is still alive). Returns the tags removed."""
    removed = []
    for run_tag, topo in runs(prefix).items():
        if tag is not None and run_tag != tag:
            continue
        if topo is not None and tag is None and not force and not topo.detached and _owner_alive(topo):
            _log.info("skipped tag=%s reason=harness pid %d still running (use force)", run_tag, topo.owner_pid)
            continue
        if topo is None:  # namespaces without a state file: remove by name
            topo = Topology(run_tag, "", f"{run_tag}-br")
            for ns in list_namespaces():
                if (ns == run_tag or ns.startswith(run_tag + "-")) and ns != topo.bridge_ns:
                    topo.nodes[ns] = NodeInfo(ns, "other", len(topo.nodes), ns, "", "")
        for error in topo.teardown():
            _log.warning("cleanup error tag=%s error=%s", run_tag, error)
        removed.append(run_tag)
    return removed
