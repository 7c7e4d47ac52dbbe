"""`flexgc master`, `flexgc worker`, `flexgc health` and `flexgc demo`: a thin layer over the Python API
(`flexgc.api`: `Job.serve`, `Worker.run`, `Job.run_local`), whose options are these commands' options."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any

from flexgc.common.config import (
    ADAPT_MODES,
    MASTER_OPTIONS,
    WORKER_OPTIONS,
    MasterConfig,
    WorkerConfig,
    add_options,
    config_from,
)
from flexgc.common.errors import ConfigError


def register(sub: Any) -> None:
    p = sub.add_parser("master", help="run the master (coordinator) of a training job")
    add_options(p, MASTER_OPTIONS)
    p.set_defaults(handler=cmd_master)

    p = sub.add_parser("worker", help="run a worker that joins a master")
    add_options(p, WORKER_OPTIONS)
    p.set_defaults(handler=cmd_worker)

    p = sub.add_parser("health", help="gRPC health check of a master (exit 0 iff SERVING)")
    p.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT")
    p.add_argument("--service", default="", help="service name ('' = whole server)")
    p.add_argument("--timeout-s", type=float, default=2.0, help="how long to wait for the answer")
    p.add_argument("--tls-ca", default=os.environ.get("FLEXGC_TLS_CA"),
                   help="PEM CA bundle to trust the master's certificate [env FLEXGC_TLS_CA; default not set]")
    p.add_argument("--tls-cert", default=os.environ.get("FLEXGC_TLS_CERT"),
                   help="PEM client certificate for mutual TLS [env FLEXGC_TLS_CERT; default not set]")
    p.add_argument("--tls-key", default=os.environ.get("FLEXGC_TLS_KEY"),
                   help="PEM private key for --tls-cert [env FLEXGC_TLS_KEY; default not set]")
    p.set_defaults(handler=cmd_health)

    p = sub.add_parser("demo", help="start a master and n worker processes on loopback and run a short job")
    p.add_argument("--workers", type=int, default=8, help="number of workers n")
    p.add_argument("--code", default="nested:levels=0,1,2,3", help="code spec")
    p.add_argument("--iterations", type=int, default=30, help="iterations of the job")
    p.add_argument("--delay", default="shifted-exp:a=1,mu=1,p=0.03,unit_s=0.4",
                   help="injected delay spec (model A, 3%% unresponsive per iteration)")
    p.add_argument("--delay-seed", type=int, default=1, help="seed of the delay realization")
    p.add_argument("--out", default=None, help="run directory (default: runs/demo, or runs/demo-MODEL for another "
                   "--model, so that the demos of different jobs do not share one)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--model", default="logistic",
                   help="model spec (default logistic on synthetic data; jax-cnn / jax-mlp need flexgc[jax] and "
                        "train on sklearn:digits with adam:lr=3e-3 unless --data / --optimizer say otherwise)")
    p.add_argument("--data", default=None, help="data source (default: synthetic, or sklearn:digits for jax-*)")
    p.add_argument("--optimizer", default=None, help="optimizer spec (default: gd, or adam:lr=3e-3 for jax-*)")
    p.add_argument("--adapt", choices=ADAPT_MODES, default="auto", help="the master's --adapt (default: auto)")
    p.set_defaults(handler=cmd_demo)


def _master_config(args: argparse.Namespace) -> MasterConfig:
    return config_from(MasterConfig, MASTER_OPTIONS, vars(args), os.environ, args.config)


def cmd_master(args: argparse.Namespace) -> int:
    from flexgc.api import Job

    cfg = _master_config(args)

    def report(port: int) -> None:
        print(json.dumps({"event": "listening", "port": port}), flush=True)

    summary = Job.from_config(cfg).serve(on_port=report).summary
    print(json.dumps({"event": "summary", **summary}), flush=True)
    if summary.get("interrupted_by"):
        return 128 + int(signal.Signals[summary["interrupted_by"]])
    if summary.get("nothing_to_run"):
        return 0  # started again on a finished job (its own exit code was the job's): nothing failed now
    return 0 if summary.get("failed_iterations", 0) == 0 or cfg.on_deadline != "fail" else 1


def cmd_worker(args: argparse.Namespace) -> int:
    from flexgc.api import Worker

    cfg = config_from(WorkerConfig, WORKER_OPTIONS, vars(args), os.environ, args.config)
    return Worker.from_config(cfg).run()


def cmd_health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from flexgc.common import transport

    tls = transport.TlsConfig(args.tls_cert, args.tls_key, args.tls_ca)
    creds = transport.channel_credentials(tls)
    channel = grpc.secure_channel(args.target, creds) if creds else grpc.insecure_channel(args.target)
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout_s)
    except grpc.RpcError as exc:
        print(f"flexgc health: {args.target}: {exc.code().name}", file=sys.stderr)  # type: ignore[attr-defined]
        return 1
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from flexgc.demo import run_demo

    if args.workers < 2:
        raise ConfigError(f"workers={args.workers}; the demo needs >= 2")
    started = time.perf_counter()
    rc = run_demo(args)
    if rc < 128:  # an interrupted demo has said so already
        print(f"demo finished in {time.perf_counter() - started:.1f} s")
    return rc
