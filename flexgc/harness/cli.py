"""`flexgc netns`: run the services of a compose file, each node in its own network namespace, on one Linux
machine (root, iproute2, Docker Compose v2 to resolve the file; no container engine needed)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flexgc.common.errors import ConfigError
from flexgc.harness import compose, tc, topology
from flexgc.harness.cluster import NetnsCluster
from flexgc.harness.errors import HarnessError, exit_code
from flexgc.harness.processes import sigterm_as_interrupt

_USAGE = """\
Run flexgc's compose services, each in its own network namespace, on one Linux machine (root).

  up         create the namespaces, start the master and the workers from the compose file, wait for
             the job to end (or Ctrl-C), then remove everything; --detach leaves it running
  down       remove runs left behind (a tag, or every run of the prefix whose harness is gone)
  list       show runs, their namespaces and addresses
  run        run a command inside a node's namespace of a detached run
  shape      rate-limit (tbf) or delay (netem, where the kernel has it) a node's link, with deploy/tc
  partition  cut a node's link (bridge port down); heal: bring it back
  probe      what this machine supports (namespaces, tbf, netem)

The compose file is -f FILE, or compose.yaml in the current directory (as `docker compose`); run from
the repository root, that is the repository's compose.yaml. Exit codes: 0 done, 1 failed, 2 usage,
3 no sch_netem for a delay, 4 this machine cannot run namespaces (not root, no iproute2, ...).

Examples:
  flexgc netns up --var FLEXGC_ITERATIONS=10 --env worker-4:FLEXGC_TC_RATE=20mbit
  flexgc netns up --detach && flexgc netns list
  flexgc netns partition fgcn1a2b3c worker-2; flexgc netns heal fgcn1a2b3c worker-2
  flexgc netns run fgcn1a2b3c worker-1 -- flexgc health --target master:50051
  flexgc netns down            # every run whose harness has gone
"""


def _pairs(items: Iterable[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} {item!r}; expected KEY=VALUE")
        out[key] = value
    return out


def register(sub: Any) -> None:
    parser = sub.add_parser("netns", help="a cluster across network namespaces on one machine (root)",
                            description=_USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)
    nsub = parser.add_subparsers(dest="netns_command", metavar="COMMAND")

    p = nsub.add_parser("up", help="start a cluster from the compose file")
    p.add_argument("-f", "--file", action="append", default=None,
                   help="compose file; repeat for overrides (default: compose.yaml in the current directory)")
    p.add_argument("--env-file", default=None, help="instead of the .env beside the compose file")
    p.add_argument("--service", action="append", default=None, help="run only these services (repeatable)")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                   help="variable for the compose file's interpolation, over the shell's (repeatable)")
    p.add_argument("--env", action="append", default=[], metavar="NODE:NAME=VALUE",
                   help="environment override for one service or node, e.g. worker-4:FLEXGC_TC_RATE=20mbit")
    p.add_argument("--rate", action="append", default=[], metavar="NODE=RATE[:up|down|both]",
                   help="tbf rate limit on a node's link, e.g. worker-4=20mbit (default direction up)")
    p.add_argument("--proxy-delay-ms", action="append", default=[], metavar="NODE=MS",
                   help="put a userspace delay proxy (MS each way) between a worker and the master")
    p.add_argument("--tc-dir", default=None, help="the deploy/tc scripts (default: found from the compose file)")
    p.add_argument("--run-dir", default=None, help="logs and the master's output (default: a new temp dir)")
    p.add_argument("--prefix", default=topology.DEFAULT_PREFIX)
    p.add_argument("--timeout-s", type=float, default=3600.0, help="stop the job after this long")
    p.add_argument("--detach", action="store_true", help="leave the cluster running; `down TAG` removes it")
    p.set_defaults(handler=_guarded(_cmd_up))

    p = nsub.add_parser("down", help="remove runs left behind")
    p.add_argument("tag", nargs="?", default=None, help="one run's tag (default: all of --prefix)")
    p.add_argument("--prefix", default=topology.DEFAULT_PREFIX)
    p.add_argument("--force", action="store_true", help="also runs whose harness is still alive")
    p.set_defaults(handler=_guarded(_cmd_down))

    p = nsub.add_parser("list", help="show runs")
    p.add_argument("--prefix", default=topology.DEFAULT_PREFIX)
    p.set_defaults(handler=_guarded(_cmd_list))

    p = nsub.add_parser("run", help="run a command inside a node's namespace")
    p.add_argument("tag")
    p.add_argument("node")
    p.add_argument("argv", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    p.set_defaults(handler=_guarded(_cmd_run))

    p = nsub.add_parser("shape", help="shape a node's link (deploy/tc/apply.sh)")
    p.add_argument("tag")
    p.add_argument("node")
    for name, text in (("rate", "tbf rate, e.g. 20mbit"), ("burst", "tbf bucket, e.g. 64kb (default: 10 ms of rate)"),
                       ("delay", "netem delay, e.g. 50ms (needs sch_netem)"), ("jitter", "netem jitter, e.g. 5ms"),
                       ("loss", "netem loss, e.g. 1%%")):
        p.add_argument(f"--{name}", default=None, help=text)
    p.add_argument("--direction", default=None, choices=["up", "down", "both"],
                   help="up: what the node sends; down: what it receives (default up; --clear: both)")
    p.add_argument("--clear", action="store_true", help="remove the shaping instead")
    p.set_defaults(handler=_guarded(_cmd_shape))

    for name, text in (("partition", "cut a node's link"), ("heal", "restore a node's link")):
        p = nsub.add_parser(name, help=text)
        p.add_argument("tag")
        p.add_argument("node")
        p.set_defaults(handler=_guarded(_cmd_partition if name == "partition" else _cmd_heal))

    p = nsub.add_parser("probe", help="what this machine supports")
    p.set_defaults(handler=_guarded(_cmd_probe))


def _guarded(handler: Any) -> Any:
    """Harness errors become a message and deploy/tc's exit codes (3: no netem, 4: cannot run here)."""
    def run(args: argparse.Namespace) -> int:
        try:
            return int(handler(args))
        except HarnessError as exc:
            print(f"flexgc netns: {exc}", file=sys.stderr)
            return exit_code(exc)
    return run


def _cmd_up(args: argparse.Namespace) -> int:
    env: dict[str, dict[str, str]] = {}
    for item in args.env:
        node, sep, pair = item.partition(":")
        if not sep:
            raise ConfigError(f"--env {item!r}; expected NODE:NAME=VALUE")
        env.setdefault(node, {}).update(_pairs([pair], "--env"))
    variables = {**os.environ, **_pairs(args.var, "--var")}
    proxies = {k: float(v) for k, v in _pairs(args.proxy_delay_ms, "--proxy-delay-ms").items()}
    files = [Path(f) for f in args.file] if args.file else compose.default_files()
    cluster = NetnsCluster(files, services=args.service, variables=variables, env_file=args.env_file, env=env,
                           run_dir=args.run_dir, prefix=args.prefix, tc_dir=args.tc_dir)
    with sigterm_as_interrupt(), cluster:
        print(f"run {cluster.tag}: subnet {cluster.topology.subnet}.0/24, run dir {cluster.run_dir}", flush=True)
        for spec in args.rate:
            node, _, rest = spec.partition("=")
            rate, _, direction = rest.partition(":")
            cluster.shape(node, tc.Shaping(rate=rate), direction or "up")  # type: ignore[arg-type]
        cluster.start_master()
        for worker in cluster.workers:
            cluster.start_worker(worker.name, proxy_delay_ms=proxies.get(worker.name))
        for node in cluster.topology.nodes.values():
            print(f"  {node.name:<12} {node.address:<15} ns {node.ns}", flush=True)
        if args.detach:
            cluster.detach()
            print(f"detached: flexgc netns down {cluster.tag}", flush=True)
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


def _cmd_down(args: argparse.Namespace) -> int:
    removed = topology.down(args.prefix, args.tag, args.force)
    print(f"removed {len(removed)} run(s): {' '.join(removed) or '-'}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    for tag, topo in topology.runs(args.prefix).items():
        if topo is None:
            print(f"{tag}: namespaces without a state file (`flexgc netns down {tag}` removes them)")
            continue
        owner = "detached" if topo.detached else (
            f"harness pid {topo.owner_pid}" + ("" if topology._owner_alive(topo) else " (gone)"))
        print(f"{tag}: {topo.subnet}.0/24, {owner}, run dir {topo.run_dir}")
        for node in topo.nodes.values():
            print(f"  {node.name:<12} {node.address:<15} ns {node.ns}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise ConfigError("netns run: give a command after --")
    ns = topology.Topology.load(args.tag).node(args.node).ns
    return subprocess.call(["ip", "netns", "exec", ns, *argv])


def _cmd_shape(args: argparse.Namespace) -> int:
    topo = topology.Topology.load(args.tag)
    if args.clear:
        topo.unshape(args.node, args.direction or "both")
        return 0
    shaping = tc.Shaping(rate=args.rate, burst=args.burst, delay=args.delay, jitter=args.jitter, loss=args.loss)
    topo.shape(args.node, shaping, args.direction or "up")
    return 0


def _cmd_partition(args: argparse.Namespace) -> int:
    topology.Topology.load(args.tag).partition(args.node)
    return 0


def _cmd_heal(args: argparse.Namespace) -> int:
    topology.Topology.load(args.tag).heal(args.node)
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    caps = topology.probe()
    print(f"namespaces, veth, bridge, tbf: {'yes' if caps.reason is None else 'no: ' + caps.reason}")
    print(f"netem (delay/jitter/loss): {'yes' if caps.netem else 'no: ' + str(caps.netem_reason)}")
    return 0 if caps.reason is None else 4
