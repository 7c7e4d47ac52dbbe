"""A multi-host flexgc cluster on one Linux machine: one network namespace per service, joined by a bridge.

The services are the ones in ``deploy/docker-compose.yml``: each one's ``command`` and ``environment`` are
read from the compose file (with Compose's ``${VAR:-default}`` interpolation and override files), so the
compose file's configuration is exercised for real where no container engine runs. Layout of one run,
named ``<tag>`` (prefix plus random hex, unique per run)::

    <tag>-br       bridge namespace: bridge br0 and one port p<i> per service (no address)
    <tag>-master   eth0 10.A.B.10/24   (veth peer of p0)        /etc/netns/<tag>-master/hosts
    <tag>-worker-0 eth0 10.A.B.11/24   (veth peer of p1)        /etc/netns/<tag>-worker-0/hosts
    ...

The /24 is picked at random per run and exists only on links inside these namespaces; every namespace's
hosts file maps each service name (``master``, ``worker-0``, ...) to its address, so ``FLEXGC_MASTER=
master:50051`` resolves inside the worker namespaces. Processes run with ``ip netns exec``.

Link shaping (`Topology.shape`): ``up`` shapes what a service sends (its eth0), ``down`` what it receives
(its bridge port). Rates use ``tbf`` (or ``htb``); delay, jitter and loss use ``netem`` when the kernel
has ``sch_netem`` (`probe().netem`), otherwise `NetemUnavailable` says so and names the alternative: the
userspace delay proxy (`flexgc.delayproxy`), which `NetnsCluster.start_worker(proxy_delay_ms=...)`
starts in a worker's namespace between the worker and the master. `partition`/`heal` take a service's
bridge port down and up (a cut cable: both ends lose carrier, TCP connections stay open).

Cleanup: `NetnsCluster` is a context manager; leaving it (also on an exception or Ctrl-C) stops every
process, deletes every namespace (which deletes its links) and every /etc/netns directory it made. An
atexit hook does the same for a cluster that was never closed, and a state file under /run/flexgc-netns
lets ``python -m flexgc.netns down`` remove what a killed run left behind. Needs root and iproute2.

    python -m flexgc.netns --help
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import logging
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeVar

_log = logging.getLogger(__name__)

DEFAULT_PREFIX = "fgcn"
STATE_DIR = Path("/run/flexgc-netns")
NETNS_ETC = Path("/etc/netns")
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_COMPOSE = REPO_ROOT / "deploy" / "docker-compose.yml"
BRIDGE = "br0"
NODE_IF = "eth0"
Direction = Literal["up", "down", "both"]
_T = TypeVar("_T")


class NetnsError(RuntimeError):
    """A harness step failed (the message names the command and its error)."""


class NetnsUnavailable(NetnsError):
    """This machine cannot run the harness (not Linux, not root, no iproute2, namespaces refused)."""


class NetemUnavailable(NetnsError):
    """The kernel has no sch_netem: tc cannot add delay, jitter or loss."""


class ComposeError(ValueError):
    """The compose file cannot be used (names the file, service and key)."""


# -- commands --------------------------------------------------------------------------------------------

def _run(*args: str, check: bool = True, timeout_s: float = 20.0) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise NetnsError(f"`{shlex.join(args)}` did not finish within {timeout_s} s") from None
    except FileNotFoundError:
        raise NetnsUnavailable(f"`{args[0]}` not found: install iproute2 (apt-get install iproute2)") from None
    if check and result.returncode != 0:
        raise NetnsError(f"`{shlex.join(args)}` failed with exit code {result.returncode}: "
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
    """What this machine can do. `reason` is None when namespaces, veth, bridges and tbf/htb work."""

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
            (("ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", "v0", "root", "handle", "1:", "htb"),
             "tc htb"),
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
                            "here; rates (tbf/htb) work, and flexgc.delayproxy injects latency in userspace")
    except NetnsError as exc:
        return Capabilities(str(exc), False, "harness unavailable")
    finally:
        if made:
            _run("ip", "netns", "del", ns, check=False)


# -- compose ---------------------------------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def interpolate(text: str, variables: Mapping[str, str], where: str = "value") -> str:
    """Compose-style interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error},
    ${VAR?error}, ${VAR:+alternative}, ${VAR+alternative}; defaults may nest (${A:-${B:-x}})."""
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c != "$":
            out.append(c)
            i += 1
        elif text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            depth, j = 0, i + 1
            while j < len(text):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            else:
                raise ComposeError(f"{where}: unterminated '${{' in {text!r}")
            out.append(_expand(text[i + 2:j], variables, where))
            i = j + 1
        else:
            m = _NAME.match(text, i + 1)
            if m is None:
                raise ComposeError(f"{where}: invalid '$' in {text!r} (write $$ for a literal $)")
            out.append(variables.get(m.group(), ""))
            i = m.end()
    return "".join(out)


def _expand(body: str, variables: Mapping[str, str], where: str) -> str:
    m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", body, re.S)
    if m is None:
        raise ComposeError(f"{where}: invalid interpolation '${{{body}}}'")
    name, op, arg = m.group(1), m.group(2), m.group(3) or ""
    value = variables.get(name)
    if op is None:
        return value or ""
    missing = value is None or (op.startswith(":") and value == "")
    if op.endswith("-"):
        return interpolate(arg, variables, where) if missing else str(value)
    if op.endswith("+"):
        return "" if missing else interpolate(arg, variables, where)
    if missing:
        raise ComposeError(f"{where}: required variable {name} is not set: {interpolate(arg, variables, where)}")
    return str(value)


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One compose service as the harness runs it: `flexgc <command...>` with `environment`."""

    name: str
    command: tuple[str, ...]
    environment: Mapping[str, str]

    @property
    def role(self) -> str:
        return self.command[0] if self.command and self.command[0] in ("master", "worker") else "other"


def _env_mapping(raw: Any, where: str) -> dict[str, str | None]:
    if raw is None:
        return {}
    if isinstance(raw, list):
        out: dict[str, str | None] = {}
        for item in raw:
            key, sep, value = str(item).partition("=")
            out[key] = value if sep else None
        return out
    if not isinstance(raw, dict):
        raise ComposeError(f"{where}.environment: expected a mapping or a list, got {type(raw).__name__}")
    return {str(k): None if v is None else ("true" if v is True else "false" if v is False else str(v))
            for k, v in raw.items()}


def load_compose(paths: str | Path | Sequence[str | Path] = DEFAULT_COMPOSE,
                 variables: Mapping[str, str] | None = None) -> dict[str, ServiceSpec]:
    """Read services' command and environment from compose files (later files override earlier ones, as
    with `docker compose -f a.yml -f b.yml`), interpolated with `variables` (default: os.environ).

    An environment key without a value is passed through from `variables` only when set there (Compose
    semantics). A command starting with `flexgc` is taken as is; otherwise it is the image's arguments
    to `flexgc` (the image's entrypoint runs `flexgc "$@"`).
    """
    import yaml  # PyYAML: SafeLoader handles anchors and `<<` merge keys

    variables = dict(os.environ if variables is None else variables)
    files = [paths] if isinstance(paths, str | Path) else list(paths)
    if not files:
        raise ComposeError("no compose file given")
    merged: dict[str, dict[str, Any]] = {}
    for path in files:
        try:
            doc = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ComposeError(f"{path}: cannot read ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise ComposeError(f"{path}: invalid YAML ({exc})") from None
        services = (doc or {}).get("services")
        if not isinstance(services, dict):
            raise ComposeError(f"{path}: no `services:` mapping")
        for name, svc in services.items():
            svc = svc or {}
            where = f"{path}: services.{name}"
            entry = merged.setdefault(str(name), {"command": None, "environment": {}})
            if "command" in svc:
                cmd = svc["command"]
                if isinstance(cmd, str):
                    cmd = shlex.split(interpolate(cmd, variables, f"{where}.command"))
                elif isinstance(cmd, list):
                    cmd = [interpolate(str(a), variables, f"{where}.command") for a in cmd]
                else:
                    raise ComposeError(f"{where}.command: expected a string or a list")
                entry["command"] = cmd
            env = _env_mapping(svc.get("environment"), where)
            for key, value in env.items():
                entry["environment"][key] = (None if value is None
                                             else interpolate(value, variables, f"{where}.environment.{key}"))
    out: dict[str, ServiceSpec] = {}
    for name, entry in merged.items():
        command = list(entry["command"] or [])
        if command[:1] == ["flexgc"]:
            command = command[1:]
        environment = {k: v if v is not None else variables[k] for k, v in entry["environment"].items()
                       if v is not None or k in variables}
        out[name] = ServiceSpec(name, tuple(command), environment)
    return out


# -- rates -----------------------------------------------------------------------------------------------

_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]i?)?(bit|bps)?", re.I)


def parse_rate(rate: str | float) -> int:
    """A tc rate in bits per second: 20mbit, 1gbit, 500kbit, 10mbps (= megabytes/s), or a number (bit/s)."""
    if isinstance(rate, int | float):
        bits = float(rate)
    else:
        m = _RATE.fullmatch(rate.strip())
        if m is None or (m.group(2) and not m.group(3)):
            raise ValueError(f"rate={rate!r}; expected e.g. 20mbit, 500kbit, 1gbit, 10mbps or bits per second")
        unit = (m.group(2) or "").lower()
        base = 1024 if unit.endswith("i") else 1000
        bits = float(m.group(1)) * base ** ("kmgt".index(unit[0]) + 1 if unit else 0)
        if (m.group(3) or "bit").lower() == "bps":
            bits *= 8
    if not 1000 <= bits <= 1e12:
        raise ValueError(f"rate={rate!r}; need 1kbit..1tbit")
    return int(bits)


def parse_size(size: str | int) -> int:
    """A tc size in bytes: 65536, 64k / 64kb (KiB, as tc), 1m / 1mb, or 512kbit."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"(\d+)\s*([kmg]?)(b|bit)?", size.strip().lower())
    if m is None:
        raise ValueError(f"size={size!r}; expected e.g. 65536, 64kb, 1mb or 512kbit")
    value = int(m.group(1)) * 1024 ** ("_kmg".index(m.group(2)) if m.group(2) else 0)
    return value // 8 if m.group(3) == "bit" else value


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
            raise NetnsError(f"no state for run {tag!r} ({path}: {exc}); see `python -m flexgc.netns list`") from None
        nodes = {k: NodeInfo(**v) for k, v in data.pop("nodes").items()}
        return cls(nodes=nodes, **data)

    @property
    def namespaces(self) -> list[str]:
        return [self.bridge_ns, *(n.ns for n in self.nodes.values())]

    def node(self, name: str) -> NodeInfo:
        try:
            return self.nodes[name]
        except KeyError:
            raise NetnsError(f"no service {name!r} in run {self.tag}; have {', '.join(self.nodes)}") from None

    # building ------------------------------------------------------------------------------------
    def add_node(self, name: str, role: str) -> NodeInfo:
        index = len(self.nodes)
        if index > 200:
            raise NetnsError("at most 200 services per run")
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

    def shape(self, name: str, *, rate: str | float | None = None, burst: str | int | None = None,
              queue_latency_ms: float = 100.0, delay_ms: float | None = None, jitter_ms: float | None = None,
              loss_pct: float | None = None, direction: Direction = "up", kind: Literal["tbf", "htb"] = "tbf") -> None:
        """Replace the root qdisc of a node's link: a rate limit (tbf or htb) and/or netem delay/jitter/loss.

        burst: tbf/htb bucket in bytes (default max(32 KiB, 10 ms of rate)); queue_latency_ms: longest wait
        in the tbf queue before a packet is dropped. netem needs sch_netem (`NetemUnavailable` otherwise).
        """
        if kind not in ("tbf", "htb"):
            raise ValueError(f"kind={kind!r}; allowed: tbf, htb")
        wants_netem = any(v is not None for v in (delay_ms, jitter_ms, loss_pct))
        if rate is None and not wants_netem:
            raise ValueError("nothing to shape: give rate and/or delay_ms/jitter_ms/loss_pct")
        if jitter_ms is not None and delay_ms is None:
            raise ValueError("jitter_ms needs delay_ms")
        if wants_netem:
            caps = probe()
            if not caps.netem:
                raise NetemUnavailable(f"cannot add delay/jitter/loss on {name}: {caps.netem_reason}")
        bits = parse_rate(rate) if rate is not None else None
        burst_b = parse_size(burst) if burst is not None else max(32 << 10, (bits or 0) // 8 // 100)
        for ns, dev in self._devices(name, direction):
            _ns_exec(ns, "tc", "qdisc", "del", "dev", dev, "root", check=False)
            parent = ["root", "handle", "1:"]
            if wants_netem:
                args = ["netem", "limit", "100000"]
                if delay_ms is not None:
                    args += ["delay", f"{delay_ms}ms"] + ([f"{jitter_ms}ms"] if jitter_ms is not None else [])
                if loss_pct is not None:
                    args += ["loss", f"{loss_pct}%"]
                _ns_exec(ns, "tc", "qdisc", "add", "dev", dev, *parent, *args)
                parent = ["parent", "1:1", "handle", "10:"]
            if bits is None:
                continue
            if kind == "tbf":
                _ns_exec(ns, "tc", "qdisc", "add", "dev", dev, *parent, "tbf", "rate", f"{bits}bit", "burst",
                         str(burst_b), "latency", f"{queue_latency_ms}ms")
            else:
                handle = parent[-1]
                _ns_exec(ns, "tc", "qdisc", "add", "dev", dev, *parent, "htb", "default", "1")
                _ns_exec(ns, "tc", "class", "add", "dev", dev, "parent", handle, "classid", f"{handle}1", "htb",
                         "rate", f"{bits}bit", "ceil", f"{bits}bit", "burst", str(burst_b))
            _log.info("shaped node=%s dev=%s kind=%s rate_bit_s=%d burst_bytes=%d", name, dev, kind, bits, burst_b)

    def unshape(self, name: str, direction: Direction = "both") -> None:
        for ns, dev in self._devices(name, direction):
            _ns_exec(ns, "tc", "qdisc", "del", "dev", dev, "root", check=False)

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
        node = self.node(name)
        _run("ip", "-n", self.bridge_ns, "link", "set", node.port_if, "up")
        _log.info("healed node=%s", name)

    def is_partitioned(self, name: str) -> bool:
        node = self.node(name)
        (info,) = json.loads(_run("ip", "-n", self.bridge_ns, "-j", "link", "show", "dev", node.port_if).stdout)
        return "UP" not in info.get("flags", [])


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
            with contextlib.suppress(NetnsError, TypeError):
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


# -- the cluster -----------------------------------------------------------------------------------------

_LIVE: set[NetnsCluster] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _close_live_clusters() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for cluster in live:
        with contextlib.suppress(Exception):
            cluster.close()


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path


class NetnsCluster:
    """Master and workers from a compose file, each in its own namespace. Use as a context manager.

    compose: compose file(s), later ones overriding earlier ones. services: which services to run
    (default: every `master` and `worker` service). variables: the environment the compose file is
    interpolated with (default os.environ). env: per-service environment overrides {service: {K: V}};
    worker_env: overrides for every worker. The master's FLEXGC_OUT defaults to `<run_dir>/out`, which
    must not hold an earlier job's output unless `resume` (the master would resume from its checkpoint).
    """

    def __init__(self, compose: str | Path | Sequence[str | Path] = DEFAULT_COMPOSE, *,
                 services: Sequence[str] | None = None, variables: Mapping[str, str] | None = None,
                 env: Mapping[str, Mapping[str, str]] | None = None, worker_env: Mapping[str, str] | None = None,
                 run_dir: str | Path | None = None, prefix: str = DEFAULT_PREFIX,
                 python: str = sys.executable, resume: bool = False) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9]{0,7}", prefix):
            raise ValueError(f"prefix={prefix!r}; need 1-8 lowercase letters/digits, starting with a letter")
        self.variables = dict(os.environ if variables is None else variables)
        specs = load_compose(compose, self.variables)
        wanted = list(services) if services is not None else [n for n, s in specs.items()
                                                               if s.role in ("master", "worker")]
        unknown = [n for n in wanted if n not in specs]
        if unknown:
            raise ComposeError(f"services {unknown} not in the compose file; it has {', '.join(specs)}")
        masters = [n for n in wanted if specs[n].role == "master"]
        if len(masters) != 1:
            raise ComposeError(f"need exactly one master service among {wanted}; found {masters}")
        self.specs = {n: specs[n] for n in wanted}
        self.env = {n: dict(v) for n, v in (env or {}).items()}
        self.worker_env = dict(worker_env or {})
        self.python = python
        self.resume = resume
        self.tag = prefix + f"{random.SystemRandom().randrange(16**6):06x}"
        self.run_dir = Path(run_dir) if run_dir is not None else Path(tempfile.gettempdir()) / f"flexgc-{self.tag}"
        self.master_name = masters[0]
        rng = random.SystemRandom()
        self.topology = Topology(self.tag, f"10.{rng.randrange(64, 255)}.{rng.randrange(0, 256)}",
                                 f"{self.tag}-br", owner_pid=os.getpid(), owner_start=_process_start(os.getpid()),
                                 run_dir=str(self.run_dir))
        for name in [self.master_name, *(n for n in wanted if n != self.master_name)]:
            self.topology.add_node(name, self.specs[name].role)
        self.procs: dict[str, _Proc] = {}
        self.proxies: dict[str, _Proc] = {}
        self.master_port: int | None = None
        self._closed = False
        self._built = False

    # lifecycle -----------------------------------------------------------------------------------
    def __enter__(self) -> NetnsCluster:
        try:
            self.create()
        except BaseException:
            self.close()  # __exit__ does not run when __enter__ raises
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self) -> None:
        caps = probe()
        if caps.reason is not None:
            raise NetnsUnavailable(caps.reason)
        out = self.out_dir
        if not self.resume and any((out / f).exists() for f in ("checkpoint.npz", "run.jsonl")):
            raise NetnsError(f"{out} holds an earlier job's output, which the master would resume from; use a "
                             "new run dir, delete it, or pass resume=True")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with _LIVE_LOCK:
            _LIVE.add(self)
        self._built = True
        self.topology.build()

    def close(self) -> None:
        """Stop every process (workers and proxies first), then remove the namespaces; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            for name in [n for n in self.procs if n != self.master_name]:
                self.stop(name)
            for name in list(self.proxies):
                self._stop_proc(self.proxies.pop(name))
            if self.master_name in self.procs:
                self.stop(self.master_name)
        finally:
            if self._built:
                for error in self.topology.teardown():
                    _log.warning("cleanup error tag=%s error=%s", self.tag, error)
            with _LIVE_LOCK:
                _LIVE.discard(self)

    def detach(self) -> None:
        """Leave namespaces and processes running after this object goes (`down` removes them)."""
        self.topology.detached = True
        self.topology.save()
        self._closed = True
        with _LIVE_LOCK:
            _LIVE.discard(self)

    # names ---------------------------------------------------------------------------------------
    @property
    def master(self) -> NodeInfo:
        return self.topology.node(self.master_name)

    @property
    def workers(self) -> list[NodeInfo]:
        return [n for n in self.topology.nodes.values() if n.role == "worker"]

    def worker(self, slot: int) -> NodeInfo:
        """The worker service whose FLEXGC_SLOT is `slot`."""
        for node in self.workers:
            if self.environment(node.name).get("FLEXGC_SLOT") == str(slot):
                return node
        raise NetnsError(f"no worker service with FLEXGC_SLOT={slot}")

    @property
    def out_dir(self) -> Path:
        return Path(self.environment(self.master_name)["FLEXGC_OUT"])

    def environment(self, name: str) -> dict[str, str]:
        """The service's environment: compose file, then harness defaults, then overrides."""
        spec = self.specs[name]
        env = dict(spec.environment)
        if spec.role == "master":
            env["FLEXGC_OUT"] = str(self.run_dir / "out")
        if spec.role == "worker":
            env.update(self.worker_env)
        env.update(self.env.get(name, {}))
        return env

    # processes -----------------------------------------------------------------------------------
    def popen(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
              log_name: str | None = None) -> _Proc:
        """Start argv inside the service's namespace, in its own session, output to <run_dir>/logs."""
        node = self.topology.node(name)
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("FLEXGC_")}
        child_env.update(env or {})
        child_env.setdefault("PYTHONUNBUFFERED", "1")
        logs = self.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{log_name or name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(["ip", "netns", "exec", node.ns, *argv], env=child_env, stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                     cwd=self.run_dir)
        _log.info("started node=%s pid=%d argv=%s", name, popen.pid, shlex.join(argv))
        return _Proc(name, popen, log_path)

    def exec(self, name: str, argv: Sequence[str], timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a command inside the service's namespace and wait for it."""
        return _ns_exec(self.topology.node(name).ns, *argv, check=False, timeout_s=timeout_s)

    def _flexgc(self, name: str) -> list[str]:
        return [self.python, "-m", "flexgc", *self.specs[name].command]

    def start(self, timeout_s: float = 60.0) -> None:
        """The master (until it serves, reachable by name from a worker namespace), then every worker."""
        n = self.environment(self.master_name).get("FLEXGC_WORKERS")
        if n is not None and n != str(len(self.workers)):
            _log.warning("mismatch FLEXGC_WORKERS=%s workers=%d: the master waits for the missing ones until "
                         "its join timeout", n, len(self.workers))
        self.start_master(timeout_s)
        for node in self.workers:
            self.start_worker(node.name)

    def start_master(self, timeout_s: float = 60.0) -> int:
        env = self.environment(self.master_name)
        proc = self.popen(self.master_name, self._flexgc(self.master_name), env)
        self.procs[self.master_name] = proc

        def listening() -> int | None:
            if proc.popen.poll() is not None:
                raise NetnsError(f"master exited with code {proc.popen.returncode} before listening; "
                                 f"log {proc.log_path}:\n{self.log_tail(self.master_name)}")
            for line in proc.log_path.read_text(errors="replace").splitlines():
                if line.startswith("{") and '"listening"' in line:
                    with contextlib.suppress(json.JSONDecodeError, KeyError, ValueError):
                        return int(json.loads(line)["port"])
            return None

        self.master_port = wait_until(listening, timeout_s, "master listening")
        if self.workers:  # as compose's `depends_on: service_healthy`, through the network and by name
            probe_from = self.workers[0].name
            target = f"{self.master_name}:{self.master_port}"
            wait_until(lambda: self.exec(probe_from, [self.python, "-m", "flexgc", "health", "--target", target,
                                                      "--timeout-s", "2"]).returncode == 0,
                       timeout_s, f"master healthy at {target} from {probe_from}", interval_s=0.2)
        return self.master_port

    def start_worker(self, name: str, env: Mapping[str, str] | None = None, proxy_delay_ms: float | None = None,
                     proxy_down_delay_ms: float | None = None, timeout_s: float = 30.0) -> _Proc:
        """Start a worker service. FLEXGC_TC_RATE/_BURST/_DELAY/_JITTER/_LOSS in its environment shape its
        uplink as the image's entrypoint would. proxy_delay_ms: put a delay proxy (this one-way delay up,
        proxy_down_delay_ms or the same down) in the worker's namespace between it and the master."""
        worker_env = {**self.environment(name), **(env or {})}
        self._apply_tc_env(name, worker_env)
        if proxy_delay_ms is not None:
            port = self.start_proxy(name, worker_env.get("FLEXGC_MASTER", f"{self.master_name}:50051"),
                                    proxy_delay_ms, proxy_delay_ms if proxy_down_delay_ms is None
                                    else proxy_down_delay_ms, timeout_s)
            worker_env["FLEXGC_MASTER"] = f"127.0.0.1:{port}"
        if name in self.procs and self.procs[name].popen.poll() is None:
            raise NetnsError(f"{name} is already running (pid {self.procs[name].popen.pid})")
        proc = self.popen(name, self._flexgc(name), worker_env)
        self.procs[name] = proc
        return proc

    def _apply_tc_env(self, name: str, env: Mapping[str, str]) -> None:
        def get(key: str) -> str | None:
            return env.get(f"FLEXGC_TC_{key}") or None

        def ms(text: str | None) -> float | None:
            if text is None:
                return None
            m = re.fullmatch(r"(\d+(?:\.\d+)?)(us|ms|s)?", text.strip())
            if m is None:
                raise ComposeError(f"{name}: FLEXGC_TC time {text!r}; expected e.g. 50ms, 200us, 1s")
            return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, None: 1.0}[m.group(2)]

        rate, delay, jitter, loss = get("RATE"), get("DELAY"), get("JITTER"), get("LOSS")
        if not (rate or delay or jitter or loss):
            return
        burst = get("BURST")
        self.topology.shape(name, rate=rate, burst=parse_size(burst) if burst else None,
                            delay_ms=ms(delay), jitter_ms=ms(jitter),
                            loss_pct=float(loss.rstrip("%")) if loss else None, direction="up")

    def start_proxy(self, name: str, target: str, up_delay_ms: float, down_delay_ms: float,
                    timeout_s: float = 30.0) -> int:
        """A `flexgc.delayproxy` inside the service's namespace on 127.0.0.1 (port returned) -> target."""
        argv = [self.python, "-m", "flexgc.delayproxy", "--listen", "127.0.0.1:0", "--target", target,
                "--up-delay-ms", str(up_delay_ms), "--down-delay-ms", str(down_delay_ms)]
        proc = self.popen(name, argv, log_name=f"{name}-proxy")
        self.proxies[name] = proc

        def port() -> int | None:
            if proc.popen.poll() is not None:
                raise NetnsError(f"delay proxy for {name} exited with code {proc.popen.returncode}: "
                                 f"{proc.log_path.read_text(errors='replace')[-2000:]}")
            for line in proc.log_path.read_text(errors="replace").splitlines():
                if '"listening"' in line:
                    return int(json.loads(line)["port"])
            return None

        return wait_until(port, timeout_s, f"delay proxy in {name}")

    def signal(self, name: str, sig: int) -> None:
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, sig)

    def stop(self, name: str, grace_s: float = 5.0) -> int | None:
        """SIGTERM the service's process (SIGKILL after grace_s); returns its exit code."""
        proc = self.procs.get(name)
        return self._stop_proc(proc, grace_s) if proc is not None else None

    @staticmethod
    def _stop_proc(proc: _Proc, grace_s: float = 5.0) -> int | None:
        p = proc.popen
        if p.poll() is None:
            for sig in (signal.SIGCONT, signal.SIGTERM):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, sig)
            try:
                p.wait(grace_s)
            except subprocess.TimeoutExpired:
                _log.warning("killing node=%s pid=%d (no exit %.1f s after SIGTERM)", proc.name, p.pid, grace_s)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        return p.returncode

    def wait(self, name: str, timeout_s: float) -> int:
        """Wait for a service's process to exit; its exit code (TimeoutError after timeout_s)."""
        try:
            return self.procs[name].popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{name} still running after {timeout_s} s; {self.diagnosis()}") from None

    def statuses(self) -> dict[str, int | None]:
        """Each started process's exit code (None: still running)."""
        return {p.log_path.stem: p.popen.poll() for p in [*self.procs.values(), *self.proxies.values()]}

    def diagnosis(self, chars: int = 1500) -> str:
        """Exit codes of every process, the master's log tail, and that of every process that failed."""
        statuses = self.statuses()
        failed = [n for n, rc in statuses.items() if rc not in (None, 0)]
        parts = [f"exit codes {statuses}", f"--- master log:\n{self.log_tail(self.master_name, chars)}"]
        parts += [f"--- {n} log:\n{self._log_path_tail(n, chars)}" for n in failed if n != self.master_name]
        return "\n".join(parts)

    def _log_path_tail(self, stem: str, chars: int) -> str:
        path = self.run_dir / "logs" / f"{stem}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def wait_master(self, timeout_s: float) -> int:
        return self.wait(self.master_name, timeout_s)

    def returncode(self, name: str) -> int | None:
        return self.procs[name].popen.poll()

    def log_tail(self, name: str, chars: int = 3000) -> str:
        proc = self.procs.get(name) or self.proxies.get(name)
        if proc is None or not proc.log_path.exists():
            return ""
        return proc.log_path.read_text(errors="replace")[-chars:]

    # results -------------------------------------------------------------------------------------
    def run_log(self) -> list[dict[str, Any]]:
        """The master's run.jsonl so far (a torn last line is skipped)."""
        path = self.out_dir / "run.jsonl"
        records = []
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    records.append(json.loads(line))
        return records

    def summary(self) -> dict[str, Any]:
        return dict(json.loads((self.out_dir / "summary.json").read_text()))

    # links (delegates) ---------------------------------------------------------------------------
    def shape(self, name: str, **kwargs: Any) -> None:
        self.topology.shape(name, **kwargs)

    def unshape(self, name: str, direction: Direction = "both") -> None:
        self.topology.unshape(name, direction)

    def partition(self, name: str) -> None:
        self.topology.partition(name)

    def heal(self, name: str) -> None:
        self.topology.heal(name)

    def qdisc_stats(self, name: str, direction: Literal["up", "down"] = "up") -> list[dict[str, Any]]:
        return self.topology.qdisc_stats(name, direction)

    def link_stats(self, name: str) -> dict[str, int]:
        return self.topology.link_stats(name)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """In the main thread: SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt, so `with` blocks clean up
    (SIGINT too, since a shell starts background jobs with SIGINT ignored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# -- command line ----------------------------------------------------------------------------------------

_USAGE = """\
Run flexgc's compose services, each in its own network namespace, on one Linux machine (root).

  up         create the namespaces, start the master and the workers from the compose file, wait for
             the job to end (or Ctrl-C), then remove everything; --detach leaves it running
  down       remove runs left behind (a tag, or every run of the prefix whose harness is gone)
  list       show runs, their namespaces and addresses
  run        run a command inside a service's namespace of a detached run
  shape      rate-limit (tbf/htb) or delay (netem, where the kernel has it) a service's link
  partition  cut a service's link (bridge port down); heal: bring it back
  probe      what this machine supports (namespaces, tbf/htb, netem)

Examples:
  python -m flexgc.netns up --var FLEXGC_ITERATIONS=10 --env worker-3:FLEXGC_TC_RATE=20mbit
  python -m flexgc.netns up --detach && python -m flexgc.netns list
  python -m flexgc.netns partition fgcn1a2b3c worker-2; python -m flexgc.netns heal fgcn1a2b3c worker-2
  python -m flexgc.netns run fgcn1a2b3c worker-0 -- python -m flexgc health --target master:50051
  python -m flexgc.netns down            # every run whose harness has gone
"""


# as deploy/tc: 3 = no sch_netem, 4 = cannot do namespaces here (not root, ...); 1 = anything else
_EXIT_CODES: dict[type[Exception], int] = {NetemUnavailable: 3, NetnsUnavailable: 4}


def _pairs(items: Iterable[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"netns: {what} {item!r}; expected KEY=VALUE")
        out[key] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flexgc.netns", description=_USAGE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("up", help="start a cluster from the compose file")
    p.add_argument("-f", "--file", action="append", default=None,
                   help=f"compose file; repeat for overrides (default {DEFAULT_COMPOSE})")
    p.add_argument("--service", action="append", default=None, help="run only these services (repeatable)")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                   help="variable for the compose file's ${NAME:-default} interpolation (repeatable)")
    p.add_argument("--env", action="append", default=[], metavar="SERVICE:NAME=VALUE",
                   help="environment override for one service (repeatable)")
    p.add_argument("--rate", action="append", default=[], metavar="SERVICE=RATE[:up|down|both]",
                   help="tbf rate limit on a service's link, e.g. worker-3=20mbit (default direction up)")
    p.add_argument("--proxy-delay-ms", action="append", default=[], metavar="SERVICE=MS",
                   help="put a userspace delay proxy (MS each way) between a worker and the master")
    p.add_argument("--run-dir", default=None, help="logs and the master's output (default: a new temp dir)")
    p.add_argument("--prefix", default=DEFAULT_PREFIX)
    p.add_argument("--timeout-s", type=float, default=3600.0, help="stop the job after this long")
    p.add_argument("--detach", action="store_true", help="leave the cluster running; `down TAG` removes it")

    p = sub.add_parser("down", help="remove runs left behind")
    p.add_argument("tag", nargs="?", default=None, help="one run's tag (default: all of --prefix)")
    p.add_argument("--prefix", default=DEFAULT_PREFIX)
    p.add_argument("--force", action="store_true", help="also runs whose harness is still alive")

    p = sub.add_parser("list", help="show runs")
    p.add_argument("--prefix", default=DEFAULT_PREFIX)

    p = sub.add_parser("run", help="run a command inside a service's namespace")
    p.add_argument("tag")
    p.add_argument("service")
    p.add_argument("argv", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")

    p = sub.add_parser("shape", help="shape a service's link")
    p.add_argument("tag")
    p.add_argument("service")
    p.add_argument("--rate", default=None, help="e.g. 20mbit")
    p.add_argument("--burst", default=None, help="bucket in bytes (default max(32 KiB, 10 ms of rate))")
    p.add_argument("--kind", default="tbf", choices=["tbf", "htb"])
    p.add_argument("--delay-ms", type=float, default=None, help="netem delay (needs sch_netem)")
    p.add_argument("--jitter-ms", type=float, default=None)
    p.add_argument("--loss-pct", type=float, default=None)
    p.add_argument("--direction", default=None, choices=["up", "down", "both"],
                   help="up: what the service sends; down: what it receives (default up; --clear: both)")
    p.add_argument("--clear", action="store_true", help="remove the shaping instead")

    for name, text in (("partition", "cut a service's link"), ("heal", "restore a service's link")):
        p = sub.add_parser(name, help=text)
        p.add_argument("tag")
        p.add_argument("service")

    sub.add_parser("probe", help="what this machine supports")
    return parser


def _cmd_up(args: argparse.Namespace) -> int:
    env: dict[str, dict[str, str]] = {}
    for item in args.env:
        service, sep, pair = item.partition(":")
        if not sep:
            raise SystemExit(f"netns: --env {item!r}; expected SERVICE:NAME=VALUE")
        env.setdefault(service, {}).update(_pairs([pair], "--env"))
    variables = {**os.environ, **_pairs(args.var, "--var")}
    proxies = {k: float(v) for k, v in _pairs(args.proxy_delay_ms, "--proxy-delay-ms").items()}
    cluster = NetnsCluster(args.file or DEFAULT_COMPOSE, services=args.service, variables=variables, env=env,
                           run_dir=args.run_dir, prefix=args.prefix)
    with sigterm_as_interrupt(), cluster:
        print(f"run {cluster.tag}: subnet {cluster.topology.subnet}.0/24, run dir {cluster.run_dir}", flush=True)
        for spec in args.rate:
            service, _, rest = spec.partition("=")
            rate, _, direction = rest.partition(":")
            cluster.shape(service, rate=rate, direction=direction or "up")
        cluster.start_master()
        for node in cluster.workers:
            cluster.start_worker(node.name, proxy_delay_ms=proxies.get(node.name))
        for node in cluster.topology.nodes.values():
            print(f"  {node.name:<12} {node.address:<15} ns {node.ns}", flush=True)
        if args.detach:
            cluster.detach()
            print(f"detached: python -m flexgc.netns down {cluster.tag}", flush=True)
            return 0
        try:
            rc = cluster.wait_master(args.timeout_s)
        except TimeoutError:
            print(f"job still running after {args.timeout_s} s: stopping it", file=sys.stderr)
            return 124
        summary = cluster.out_dir / "summary.json"
        if summary.exists():
            print(summary.read_text(), flush=True)
        print(f"master exited with code {rc}; logs in {cluster.run_dir / 'logs'}", flush=True)
        return rc


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "up":
            return _cmd_up(args)
        if args.command == "down":
            removed = down(args.prefix, args.tag, args.force)
            print(f"removed {len(removed)} run(s): {' '.join(removed) or '-'}")
            return 0
        if args.command == "list":
            for tag, topo in runs(args.prefix).items():
                if topo is None:
                    print(f"{tag}: namespaces without a state file (`down {tag}` removes them)")
                    continue
                owner = "detached" if topo.detached else (
                    f"harness pid {topo.owner_pid}" + ("" if _owner_alive(topo) else " (gone)"))
                print(f"{tag}: {topo.subnet}.0/24, {owner}, run dir {topo.run_dir}")
                for node in topo.nodes.values():
                    print(f"  {node.name:<12} {node.address:<15} ns {node.ns}")
            return 0
        if args.command == "probe":
            caps = probe()
            print(f"namespaces, veth, bridge, tbf/htb: {'yes' if caps.reason is None else 'no: ' + caps.reason}")
            print(f"netem (delay/jitter/loss): {'yes' if caps.netem else 'no: ' + str(caps.netem_reason)}")
            return 0 if caps.reason is None else 1
        topo = Topology.load(args.tag)
        if args.command == "run":
            argv_ = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            if not argv_:
                parser.error("run: give a command after --")
            return subprocess.call(["ip", "netns", "exec", topo.node(args.service).ns, *argv_])
        if args.command == "shape":
            if args.clear:
                topo.unshape(args.service, args.direction or "both")
            else:
                topo.shape(args.service, rate=args.rate, burst=args.burst, kind=args.kind, delay_ms=args.delay_ms,
                           jitter_ms=args.jitter_ms, loss_pct=args.loss_pct, direction=args.direction or "up")
            return 0
        if args.command == "partition":
            topo.partition(args.service)
            return 0
        if args.command == "heal":
            topo.heal(args.service)
            return 0
    except (NetnsError, ComposeError, ValueError) as exc:
        print(f"netns: {exc}", file=sys.stderr)
        return _EXIT_CODES.get(type(exc), 1)
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
