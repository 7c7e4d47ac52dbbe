"""Configuration: one option table per role, resolved once at the edge (CLI > environment > TOML > default)
into frozen dataclasses. Library code receives these objects and never reads the environment.

Environment variables are ``FLEXGC_<NAME>`` with the option's name upper-cased and dashes as
underscores (``--deadline-s`` -> ``FLEXGC_DEADLINE_S``); TOML keys are the names with underscores.
Every error names the field, the value and what is allowed.
"""

from __future__ import annotations

import argparse
import math
import socket
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from flexgc.common.errors import ConfigError
from flexgc.common.models import MODELS

DTYPES = ("float64", "float32")
ON_DEADLINE = ("fail", "approximate")


@dataclass(frozen=True, slots=True)
class Option:
    name: str                    # python name, e.g. "deadline_s"
    kind: type                   # int, float, str, bool
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    secret: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "FLEXGC_" + self.name.upper()


_TLS = [
    Option("tls_cert", str, None, "PEM certificate (master: server cert; worker: client cert for mTLS)"),
    Option("tls_key", str, None, "PEM private key for --tls-cert"),
    Option("tls_ca", str, None, "PEM CA bundle (master: require client certs signed by it; worker: trust it)"),
    Option("token", str, None, "shared join token; workers without it are rejected (never logged)",
           secret=True),
]

MASTER_OPTIONS: list[Option] = [
    Option("host", str, "0.0.0.0", "listen address"),
    Option("port", int, 50051, "gRPC port (0: pick a free one and report it)", minimum=0),
    Option("workers", int, 4, "number of worker slots n", minimum=1),
    Option("code", str, "nested:levels=0,1,2,3", "code spec, e.g. crc:s=2, nested:levels=0,1,2,3"),
    Option("iterations", int, 20, "stop after this many iterations", minimum=1),
    Option("target_loss", float, None, "stop early once the mean loss is at or below this"),
    Option("model", str, "logistic", "model", choices=MODELS),
    Option("data", str, "synthetic", "synthetic, PATH.npz (X, y), PATH.csv (last column y) or sklearn:NAME"),
    Option("samples", int, 20_000, "rows of the synthetic dataset", minimum=1),
    Option("features", int, 100, "features of the synthetic dataset", minimum=1),
    Option("classes", int, 2, "classes (softmax)", minimum=2),
    Option("data_seed", int, 0, "seed of the synthetic dataset", minimum=0),
    Option("dtype", str, "float64", "dtype of vectors on the wire", choices=DTYPES),
    Option("lr", float, 0.5, "learning rate", minimum=0.0),
    Option("momentum", float, 0.0, "heavy-ball momentum in [0, 1)", minimum=0.0),
    Option("deadline_s", float, 30.0, "per-iteration deadline when more than s_max workers straggle "
           "(0: wait forever)", minimum=0.0),
    Option("on_deadline", str, "fail", "what happens at the deadline", choices=ON_DEADLINE),
    Option("delay", str, "none", "injected delay spec shipped to workers, e.g. shifted-exp:a=1,mu=1,unit_s=0.1"),
    Option("delay_seed", int, 0, "seed of the delay realization (same seed: same delays for every code)",
           minimum=0),
    Option("out", str, None, "run directory: run.jsonl, summary.json, params.npy, checkpoint.npz"),
    Option("checkpoint_every", int, 10, "write a checkpoint every K iterations (0: only on SIGTERM)", minimum=0),
    Option("resume", bool, True, "resume from OUT/checkpoint.npz when it exists"),
    Option("metrics_port", int, 0, "Prometheus metrics port (0: off)", minimum=0),
    Option("join_timeout_s", float, 120.0, "how long to wait for the first n workers", minimum=0.0),
    Option("chunk_bytes", int, 1 << 20, "bytes per chunk on the wire", minimum=1024),
    Option("heartbeat_s", float, 2.0, "worker heartbeat interval", minimum=0.05),
    Option("verify", bool, False, "check every decoded gradient against a direct computation (needs the data "
           "on the master)"),
    Option("linger", bool, False, "after the job, keep serving health until SIGTERM"),
    Option("max_workers", int, 0, "refuse joins beyond this many connected workers (0: = workers)", minimum=0),
    Option("blas_threads", int, 1, "BLAS threads in this process (several processes share the cores)", minimum=1),
    *_TLS,
]

WORKER_OPTIONS: list[Option] = [
    Option("master", str, "127.0.0.1:50051", "master address HOST:PORT"),
    Option("worker_id", str, None, "stable identity; a reconnecting worker with the same id gets its slot back "
           "(default: hostname)"),
    Option("slot", int, -1, "slot to ask for (-1: any free)", minimum=-1),
    Option("delay", str, None, "override the master's injected delay spec for this worker"),
    Option("server_name", str, None, "TLS server name to verify (default: the host in --master)"),
    Option("reconnect_max_s", float, 5.0, "maximum reconnect backoff", minimum=0.01),
    Option("linger", bool, False, "after the master's Shutdown, stay idle until SIGTERM instead of exiting"),
    Option("rows_per_chunk", int, 4096, "rows per compute chunk (cancel is noticed between chunks)",
           minimum=1),
    Option("blas_threads", int, 1, "BLAS threads in this process (several workers share the cores)", minimum=1),
    *_TLS,
]


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    parser.add_argument("--config", metavar="FILE.toml", default=None,
                        help="TOML file with option values (keys as option names with underscores)")
    for opt in options:
        shown = "(secret)" if opt.secret else repr(opt.default)
        helptext = f"{opt.help} [env {opt.env}; default {shown}]"
        if opt.kind is bool:
            parser.add_argument(opt.flag, dest=opt.name, action=argparse.BooleanOptionalAction, default=None,
                                help=helptext)
        else:
            parser.add_argument(opt.flag, dest=opt.name, default=None, metavar=opt.name.upper(),
                                help=helptext)


def _convert(opt: Option, raw: Any, source: str) -> Any:
    where = f"{opt.name} (from {source})"
    if raw is None:
        return None
    try:
        if opt.kind is bool:
            if isinstance(raw, bool):
                value: Any = raw
            elif str(raw).strip().lower() in ("1", "true", "yes", "on"):
                value = True
            elif str(raw).strip().lower() in ("0", "false", "no", "off", ""):
                value = False
            else:
                raise ValueError
        elif opt.kind is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            value = int(raw)
        elif opt.kind is float:
            if isinstance(raw, bool):
                raise ValueError
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError
        else:
            if not isinstance(raw, str):  # e.g. `out = true` in TOML must not become the directory "True"
                raise ValueError
            value = raw
    except (TypeError, ValueError):
        kind = {bool: "true/false", int: "an integer", float: "a finite number", str: "a string"}[opt.kind]
        shown = "***" if opt.secret else repr(raw)
        allowed = f"; allowed: {', '.join(opt.choices)}" if opt.choices else ""
        raise ConfigError(f"{where}={shown}: must be {kind}{allowed}") from None
    if opt.choices is not None and value not in opt.choices:
        raise ConfigError(f"{where}={value!r}; allowed: {', '.join(opt.choices)}")
    if opt.minimum is not None and value < opt.minimum:
        raise ConfigError(f"{where}={value!r}; must be >= {opt.minimum:g}")
    return value


def resolve(options: Sequence[Option], cli: Mapping[str, Any], env: Mapping[str, str],
            config_file: str | None) -> dict[str, Any]:
    """Merge CLI > environment > TOML > defaults, converting and range-checking every value."""
    table: dict[str, Any] = {}
    config_file = config_file or env.get("FLEXGC_CONFIG")
    if config_file:
        try:
            table = tomllib.loads(Path(config_file).read_text())
        except OSError as exc:
            raise ConfigError(f"config={config_file!r}: cannot read ({exc.strerror})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config={config_file!r}: invalid TOML ({exc})") from None
        known = {o.name for o in options}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigError(f"config={config_file!r}: unknown key(s) {', '.join(unknown)}; allowed: "
                              f"{', '.join(sorted(known))}")
    values: dict[str, Any] = {}
    for opt in options:
        if cli.get(opt.name) is not None:
            values[opt.name] = _convert(opt, cli[opt.name], f"--{opt.name.replace('_', '-')}")
        elif opt.env in env:
            values[opt.name] = _convert(opt, env[opt.env], opt.env)
        elif opt.name in table:
            values[opt.name] = _convert(opt, table[opt.name], str(config_file))
        else:
            values[opt.name] = opt.default
    return values


@dataclass(frozen=True, slots=True)
class MasterConfig:
    host: str
    port: int
    workers: int
    code: str
    iterations: int
    target_loss: float | None
    model: str
    data: str
    samples: int
    features: int
    classes: int
    data_seed: int
    dtype: str
    lr: float
    momentum: float
    deadline_s: float
    on_deadline: str
    delay: str
    delay_seed: int
    out: str | None
    checkpoint_every: int
    resume: bool
    metrics_port: int
    join_timeout_s: float
    chunk_bytes: int
    heartbeat_s: float
    verify: bool
    linger: bool
    max_workers: int
    blas_threads: int
    tls_cert: str | None
    tls_key: str | None
    tls_ca: str | None
    token: str | None = field(repr=False)  # never printed

    def __post_init__(self) -> None:
        from flexgc.common.codes import parse_code
        from flexgc.common.delays import parse_delay

        if self.momentum >= 1.0:
            raise ConfigError(f"momentum={self.momentum}; must be in [0, 1)")
        if self.port > 65535 or self.metrics_port > 65535:
            raise ConfigError(f"port={self.port}, metrics_port={self.metrics_port}; must be <= 65535")
        if self.chunk_bytes > 4 << 20:
            raise ConfigError(f"chunk_bytes={self.chunk_bytes}; must be <= {4 << 20} (below the message limit)")
        if self.max_workers and self.max_workers < self.workers:
            raise ConfigError(f"max_workers={self.max_workers}; must be 0 or >= workers={self.workers}")
        if self.model == "logistic" and self.classes != 2:
            raise ConfigError(f"classes={self.classes}; logistic regression has 2 classes (use model=softmax)")
        try:
            parse_code(self.code, self.workers)
        except ConfigError as exc:  # say which code (possibly the default) met which worker count
            raise ConfigError(f"code={self.code!r} with workers={self.workers}: {exc}") from None
        parse_delay(self.delay, "delay")

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> MasterConfig:
        return cls(**{f.name: values[f.name] for f in fields(cls)})

    def redacted(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if out.get("token"):
            out["token"] = "***"
        return out


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    master: str
    worker_id: str | None
    slot: int
    delay: str | None
    server_name: str | None
    reconnect_max_s: float
    linger: bool
    rows_per_chunk: int
    blas_threads: int
    tls_cert: str | None
    tls_key: str | None
    tls_ca: str | None
    token: str | None = field(repr=False)  # never printed

    def __post_init__(self) -> None:
        from flexgc.common.delays import parse_delay

        host, sep, port = self.master.rpartition(":")
        if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise ConfigError(f"master={self.master!r}; expected HOST:PORT with a port in 1..65535")
        if self.delay is not None:
            parse_delay(self.delay, "delay")

    @property
    def identity(self) -> str:
        return self.worker_id or socket.gethostname()

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> WorkerConfig:
        return cls(**{f.name: values[f.name] for f in fields(cls)})


def master_config(**overrides: Any) -> MasterConfig:
    """Defaults plus overrides (for tests, the demo and benchmarks); validated like the CLI."""
    values = resolve(MASTER_OPTIONS, overrides, {}, None)
    return MasterConfig.from_values(values)


def worker_config(**overrides: Any) -> WorkerConfig:
    values = resolve(WORKER_OPTIONS, overrides, {}, None)
    return WorkerConfig.from_values(values)
