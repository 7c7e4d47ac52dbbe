"""A multi-host flexgc cluster on one Linux machine: the services of a compose file, each node in its own
network namespace (`flexgc.harness.topology`), started with the `command` and `environment` that Docker
Compose resolves for it (`flexgc.harness.compose`), so the compose file's configuration is exercised for
real where no container engine runs.

A service with `deploy.replicas: N` (or `scale: N`) becomes N nodes named as Compose numbers its
containers (`worker-1`, ..., `worker-N`); a node that sets neither FLEXGC_WORKER_ID nor FLEXGC_SLOT gets
its node name as worker id (Compose gives each container its own hostname; namespaces share the host's)
and the next slot in node order, so that a run is repeatable.

A worker's FLEXGC_TC_* variables shape its uplink with deploy/tc/apply.sh before it starts, as the image's
entrypoint does. Where the kernel has no sch_netem, `start_worker(proxy_delay_ms=...)` puts the userspace
delay proxy (`flexgc.harness.delayproxy`) in the worker's namespace between it and the master.

Cleanup: `NetnsCluster` is a context manager; leaving it (also on an exception or Ctrl-C) stops every
process, deletes every namespace (which deletes its links) and every /etc/netns directory it made. An
atexit hook does the same for a cluster that was never closed, and the state file (`topology`) lets
``flexgc netns down`` remove what a killed run left behind. Needs root, iproute2 and Docker Compose v2.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import random
import re
import shlex
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from flexgc.harness import compose, tc
from flexgc.harness.errors import ComposeError, HarnessError, HarnessUnavailableError
from flexgc.harness.processes import PopenChild, stop_all
from flexgc.harness.topology import (
    DEFAULT_PREFIX,
    Direction,
    NodeInfo,
    Topology,
    _ns_exec,
    _process_start,
    probe,
    wait_until,
)
from flexgc.master.accounting import read_run_log

_log = logging.getLogger(__name__)

_LIVE: set[NetnsCluster] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _close_live_clusters() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for cluster in live:
        with contextlib.suppress(Exception):
            cluster.close()


class _Proc(PopenChild):
    """A process started in a node's namespace, with its log file."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        super().__init__(name, popen)
        self.log_path = log_path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _tc_candidates(files: Sequence[Path]) -> list[Path]:
    """Where the deploy/tc scripts are, seen from the compose files: the project directory's deploy/tc
    (a root compose.yaml) or tc/ beside the file (deploy/docker-compose.yml)."""
    project = files[0].resolve().parent
    return [project / "deploy" / "tc", project / "tc"]


class NetnsCluster:
    """Master and workers from a compose file, each node in its own namespace. Use as a context manager.

    compose: compose file(s), later ones overriding earlier ones (required: an installed flexgc has no
    files of its own to fall back on). services: which services to run (default: every `master` and
    `worker` service). variables: the environment Compose interpolates with (default os.environ);
    env_file: instead of the project directory's `.env`. env: environment overrides per service or node
    {name: {K: V}}; worker_env: overrides for every worker. tc_dir: the deploy/tc scripts (default: found
    from the compose file). The master's FLEXGC_OUT is `<run_dir>/out`, which must not hold an earlier
    job's output unless `resume` (the master would resume from its checkpoint).
    """

    def __init__(self, compose_files: str | Path | Sequence[str | Path], *,
                 services: Sequence[str] | None = None, variables: Mapping[str, str] | None = None,
                 env_file: str | Path | None = None, env: Mapping[str, Mapping[str, str]] | None = None,
                 worker_env: Mapping[str, str] | None = None, run_dir: str | Path | None = None,
                 prefix: str = DEFAULT_PREFIX, python: str = sys.executable, resume: bool = False,
                 tc_dir: str | Path | None = None) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9]{0,7}", prefix):
            raise ValueError(f"prefix={prefix!r}; need 1-8 lowercase letters/digits, starting with a letter")
        files = [Path(compose_files)] if isinstance(compose_files, str | Path) else [Path(f) for f in compose_files]
        self.variables = dict(os.environ if variables is None else variables)
        specs = compose.load_services(files, self.variables, env_file)
        wanted = list(services) if services is not None else [n for n, s in specs.items()
                                                               if s.role in ("master", "worker")]
        unknown = [n for n in wanted if n not in specs]
        if unknown:
            raise ComposeError(f"services {unknown} not in the compose file; it has {', '.join(specs)}")
        masters = [n for n in wanted if specs[n].role == "master"]
        if len(masters) != 1 or specs[masters[0]].replicas not in (None, 1):
            raise ComposeError(f"need exactly one master service (one replica) among {wanted}; found {masters}")
        self.specs = {n: specs[n] for n in wanted}
        self.env = {n: dict(v) for n, v in (env or {}).items()}
        self.worker_env = dict(worker_env or {})
        self.python = python
        self.resume = resume
        self.tc_dir = Path(tc_dir) if tc_dir is not None else None
        self._tc_candidates = _tc_candidates(files)
        rng = random.SystemRandom()
        self.tag = prefix + f"{rng.randrange(16**6):06x}"
        self.run_dir = Path(run_dir) if run_dir is not None else Path(tempfile.gettempdir()) / f"flexgc-{self.tag}"
        self.master_name = masters[0]
        self.topology = Topology(self.tag, f"10.{rng.randrange(64, 255)}.{rng.randrange(0, 256)}",
                                 f"{self.tag}-br", owner_pid=os.getpid(), owner_start=_process_start(os.getpid()),
                                 run_dir=str(self.run_dir))
        self._service_of: dict[str, str] = {}  # node -> service
        self.topology.add_node(self.master_name, "master")
        self._service_of[self.master_name] = self.master_name
        for name in sorted(n for n in wanted if n != self.master_name):
            spec = self.specs[name]
            nodes = [name] if spec.replicas is None else [f"{name}-{i}" for i in range(1, spec.replicas + 1)]
            for node in nodes:
                self.topology.add_node(node, spec.role)
                self._service_of[node] = name
        unknown = [n for n in self.env if n not in self._service_of and n not in self.specs]
        if unknown:
            raise ComposeError(f"env overrides for {unknown}: no such service or node; have "
                               f"{', '.join(sorted({*self.specs, *self._service_of}))}")
        self.procs: dict[str, _Proc] = {}
        self.proxies: dict[str, _Proc] = {}
        self._all: list[_Proc] = []
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
        """Check the machine, then build the namespaces (the state file first)."""
        caps = probe()
        if caps.reason is not None:
            raise HarnessUnavailableError(caps.reason)
        self.topology.tc_dir = str(self.tc_dir or tc.find_tc_dir(self._tc_candidates))
        out = self.out_dir
        if not self.resume and any((out / f).exists() for f in ("checkpoint.npz", "run.jsonl")):
            raise HarnessError(f"{out} holds an earlier job's output, which the master would resume from; use a "
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
            master = [p for p in self._all if p.name == self.master_name]
            stop_all([p for p in self._all if p.name != self.master_name])
            stop_all(master)
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
        """The worker node whose FLEXGC_SLOT is `slot`."""
        for node in self.workers:
            if self.environment(node.name).get("FLEXGC_SLOT") == str(slot):
                return node
        raise HarnessError(f"no worker node with FLEXGC_SLOT={slot}")

    @property
    def out_dir(self) -> Path:
        return Path(self.environment(self.master_name)["FLEXGC_OUT"])

    def environment(self, name: str) -> dict[str, str]:
        """A node's environment: compose file, harness defaults, then overrides (service, then node)."""
        self.topology.node(name)
        service = self._service_of[name]
        spec = self.specs[service]
        env = dict(spec.environment)
        if spec.role == "master":
            env["FLEXGC_OUT"] = str(self.run_dir / "out")
        if spec.role == "worker":
            if "FLEXGC_WORKER_ID" not in env:
                env["FLEXGC_WORKER_ID"] = name
            if "FLEXGC_SLOT" not in env:
                env["FLEXGC_SLOT"] = str([w.name for w in self.workers].index(name))
            env.update(self.worker_env)
        env.update(self.env.get(service, {}))
        if name != service:
            env.update(self.env.get(name, {}))
        return env

    # processes -----------------------------------------------------------------------------------
    def popen(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
              log_name: str | None = None) -> _Proc:
        """Start argv inside the node's namespace, in its own session, output to <run_dir>/logs."""
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
        proc = _Proc(name, popen, log_path)
        self._all.append(proc)
        return proc

    def exec(self, name: str, argv: Sequence[str], timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a command inside the node's namespace and wait for it."""
        return _ns_exec(self.topology.node(name).ns, *argv, check=False, timeout_s=timeout_s)

    def _flexgc(self, name: str) -> list[str]:
        return [self.python, "-m", "flexgc", *self.specs[self._service_of[name]].command]

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
        """Start the master; once it listens and answers the health check by name from a worker's
        namespace (compose's `depends_on: service_healthy`), its port."""
        env = self.environment(self.master_name)
        proc = self.popen(self.master_name, self._flexgc(self.master_name), env)
        self.procs[self.master_name] = proc

        def listening() -> int | None:
            if proc.returncode() is not None:
                raise HarnessError(f"master exited with code {proc.returncode()} before listening; "
                                   f"log {proc.log_path}:\n{self.log_tail(self.master_name)}")
            for line in proc.log_text().splitlines():
                if line.startswith("{") and '"listening"' in line:
                    with contextlib.suppress(json.JSONDecodeError, KeyError, ValueError):
                        return int(json.loads(line)["port"])
            return None

        self.master_port = wait_until(listening, timeout_s, "master listening")
        if self.workers:
            probe_from = self.workers[0].name
            target = f"{self.master_name}:{self.master_port}"
            wait_until(lambda: self.exec(probe_from, [self.python, "-m", "flexgc", "health", "--target", target,
                                                      "--timeout-s", "2"]).returncode == 0,
                       timeout_s, f"master healthy at {target} from {probe_from}", interval_s=0.2)
        return self.master_port

    def start_worker(self, name: str, env: Mapping[str, str] | None = None, proxy_delay_ms: float | None = None,
                     proxy_down_delay_ms: float | None = None, timeout_s: float = 30.0) -> _Proc:
        """Start a worker node. FLEXGC_TC_RATE/_BURST/_DELAY/_JITTER/_LOSS in its environment shape its
        uplink with deploy/tc/apply.sh, as the image's entrypoint does. proxy_delay_ms: put a delay proxy
        (this one-way delay up, proxy_down_delay_ms or the same down) in its namespace before the master."""
        worker_env = {**self.environment(name), **(env or {})}
        shaping = tc.Shaping.from_env(worker_env)
        if shaping is not None:
            self.topology.shape(name, shaping, "up")
        if proxy_delay_ms is not None:
            port = self.start_proxy(name, worker_env.get("FLEXGC_MASTER", f"{self.master_name}:50051"),
                                    proxy_delay_ms, proxy_delay_ms if proxy_down_delay_ms is None
                                    else proxy_down_delay_ms, timeout_s)
            worker_env["FLEXGC_MASTER"] = f"127.0.0.1:{port}"
        if name in self.procs and self.procs[name].returncode() is None:
            raise HarnessError(f"{name} is already running (pid {self.procs[name].pid})")
        proc = self.popen(name, self._flexgc(name), worker_env)
        self.procs[name] = proc
        return proc

    def start_proxy(self, name: str, target: str, up_delay_ms: float, down_delay_ms: float,
                    timeout_s: float = 30.0) -> int:
        """A delay proxy inside the node's namespace on 127.0.0.1 (port returned) -> target."""
        argv = [self.python, "-m", "flexgc.harness.delayproxy", "--listen", "127.0.0.1:0", "--target", target,
                "--up-delay-ms", str(up_delay_ms), "--down-delay-ms", str(down_delay_ms)]
        proc = self.popen(name, argv, log_name=f"{name}-proxy")
        self.proxies[name] = proc

        def port() -> int | None:
            if proc.returncode() is not None:
                raise HarnessError(f"delay proxy for {name} exited with code {proc.returncode()}: "
                                   f"{proc.log_text()[-2000:]}")
            for line in proc.log_text().splitlines():
                if '"listening"' in line:
                    return int(json.loads(line)["port"])
            return None

        return wait_until(port, timeout_s, f"delay proxy in {name}")

    def signal(self, name: str, sig: int) -> None:
        """Send a signal to a node's process (its whole process group)."""
        self.procs[name].send(sig)

    def stop(self, name: str, grace_s: float = 5.0) -> int | None:
        """SIGTERM the node's process (SIGKILL after grace_s); returns its exit code."""
        proc = self.procs.get(name)
        return stop_all([proc], grace_s)[name] if proc is not None else None

    def wait(self, name: str, timeout_s: float) -> int:
        """Wait for a node's process to exit; its exit code (TimeoutError after timeout_s)."""
        rc = self.procs[name].wait(timeout_s)
        if rc is None:
            raise TimeoutError(f"{name} still running after {timeout_s} s; {self.diagnosis()}")
        return rc

    def wait_master(self, timeout_s: float) -> int:
        return self.wait(self.master_name, timeout_s)

    def statuses(self) -> dict[str, int | None]:
        """Each started process's exit code (None: still running), by log name."""
        return {p.log_path.stem: p.returncode() for p in [*self.procs.values(), *self.proxies.values()]}

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

    def log_tail(self, name: str, chars: int = 3000) -> str:
        proc = self.procs.get(name) or self.proxies.get(name)
        return proc.log_text()[-chars:] if proc is not None else ""

    # results -------------------------------------------------------------------------------------
    def run_log(self) -> list[dict[str, Any]]:
        """The master's iteration records so far (resume markers applied, events such as plan switches left
        out, a torn last line skipped)."""
        path = self.out_dir / "run.jsonl"
        return read_run_log(path) if path.exists() else []

    def summary(self) -> dict[str, Any]:
        return dict(json.loads((self.out_dir / "summary.json").read_text()))

    # links (delegates) ---------------------------------------------------------------------------
    def shape(self, name: str, shaping: tc.Shaping, direction: Direction = "up") -> None:
        self.topology.shape(name, shaping, direction)

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
