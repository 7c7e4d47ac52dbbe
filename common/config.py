"""Configuration: one option table per role, resolved once at the edge (CLI > environment > TOML > default)
into frozen dataclasses. Library code receives these objects and never reads the environment.

Environment variables are ``FLEXGC_<NAME>`` with the option's name upper-cased and dashes as
underscores (``--deadline-s`` -> ``FLEXGC_DEADLINE_S``); TOML keys are the names with underscores.
Every error names the field, the value and what is allowed.
"""

from __future__ import annotations

import argparse
import inspect
import math
import socket
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar, get_args, get_type_hints

from flexgc.common.errors import ConfigError
from flexgc.common.models import MODELS, parse_model
from flexgc.common.optim import parse_optimizer

_C = TypeVar("_C")
DTYPES = ("float64", "float32")
ON_DEADLINE = ("fail", "approximate")
ADAPT_MODES = ("auto", "off", "speed", "elastic", "all")
AUTO_ADAPT_MAX_WORKERS = 256  # `auto` adapts up to this n (the planner's cost was measured to here: design §2.10)


def resolve_adapt(mode: str, code_family: str, n: int) -> str:
    """What `--adapt auto` means for this job: `all` for an exact code up to AUTO_ADAPT_MAX_WORKERS slots,
    `off` for ignore-s (approximate by design) and beyond; any other mode is itself."""
    if mode != "auto":
        return mode
    return "off" if code_family == "ignore" or n > AUTO_ADAPT_MAX_WORKERS else "all"


@dataclass(frozen=True, slots=True)
class Option:
    """One command-line / environment / TOML option, derived from a config dataclass field."""

    name: str                    # python name, e.g. "deadline_s"
    kind: type                   # int, float, str, bool
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    secret: bool = False
    env_name: str | None = None  # an environment variable of its own (default FLEXGC_<NAME>)

    @property
    def flag(self) -> str:
        """The command-line flag, e.g. --deadline-s."""
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        """The environment variable, e.g. FLEXGC_DEADLINE_S."""
        return self.env_name or "FLEXGC_" + self.name.upper()


def option(default: Any, help: str, *, choices: tuple[str, ...] | None = None, minimum: float | None = None,
           secret: bool = False, env: str | None = None) -> Any:
    """A config field declared once: its default, its help, and what values are allowed (`env`: its own
    environment variable, where FLEXGC_<NAME> would mean something else to another role)."""
    meta = {"help": help, "choices": choices, "minimum": minimum, "secret": secret, "env": env}
    return field(default=default, metadata=meta, repr=not secret)


def options_of(cls: type) -> list[Option]:
    """The options of a config dataclass, in declaration order (inherited fields last)."""
    hints = get_type_hints(cls)
    own = [f for f in fields(cls) if f.name in inspect.get_annotations(cls)]
    inherited = [f for f in fields(cls) if f not in own]
    out = []
    for f in own + inherited:
        kind = next(k for k in (bool, int, float, str) if k is hints[f.name] or k in get_args(hints[f.name]))
        m = f.metadata
        out.append(Option(f.name, kind, f.default, m["help"], m["choices"], m["minimum"], m["secret"], m["env"]))
    return out


@dataclass(frozen=True, slots=True)
class _Tls:
    """(m)TLS and the join token, for both roles."""

    tls_cert: str | None = option(None, "PEM certificate (master: server cert; worker: client cert for mTLS)")
    tls_key: str | None = option(None, "PEM private key for --tls-cert")
    tls_ca: str | None = option(None, "PEM CA bundle (master: require client certs signed by it; worker: trust it)")
    token: str | None = option(None, "shared join token; workers without it are rejected (never logged)",
                               secret=True)


@dataclass(frozen=True, slots=True)
class MasterConfig(_Tls):
    """The master's configuration (`flexgc master --help` lists every field)."""

    host: str = option("0.0.0.0", "listen address")
    port: int = option(50051, "gRPC port (0: pick a free one and report it)", minimum=0)
    workers: int = option(4, "number of worker slots n", minimum=1)
    code: str = option("auto", "code spec, e.g. crc:s=2, nested:levels=0,1,2,3; auto: nested levels 0..3 up to "
                       "n = 64, nested FRC up to s ~ n/8 beyond (docs/codes.md)")
    iterations: int = option(20, "stop after this many iterations", minimum=1)
    target_loss: float | None = option(None, "stop early once the mean loss is at or below this")
    model: str = option("logistic", f"model: {', '.join(MODELS)} (jax-*: extra flexgc[jax], e.g. jax-mlp:hidden=128, "
                        "jax-cnn:channels=32,hidden=64,dtype=float64) or a user model MODULE:FACTORY[,key=value...] "
                        "(docs/models.md)")
    data: str = option("synthetic", "synthetic, PATH.npz (X, y), PATH.csv (last column y) or sklearn:NAME")
    samples: int = option(20_000, "rows of the synthetic dataset", minimum=1)
    features: int = option(100, "features of the synthetic dataset", minimum=1)
    classes: int = option(2, "classes of the synthetic dataset (softmax, jax-*)", minimum=2)
    data_seed: int = option(0, "seed of the synthetic dataset", minimum=0)
    dtype: str = option("float64", "dtype of vectors on the wire", choices=DTYPES)
    lr: float = option(0.5, "learning rate", minimum=0.0)
    momentum: float = option(0.0, "heavy-ball momentum in [0, 1)", minimum=0.0)
    optimizer: str = option("gd", "optimizer spec: gd (heavy-ball with --lr, --momentum), sgd:lr=0.01,momentum=0.9, "
                            "adam:lr=1e-3, adamw:lr=1e-3,weight_decay=1e-4, with schedule=cosine|warmup-cosine|"
                            "exponential,steps=N (optax: extra flexgc[jax]; common/optim.py)")
    init_seed: int = option(0, "seed of the model's initial parameters", minimum=0)
    batch_size: int = option(0, "mini-batch rows per partition and iteration, drawn from a seeded schedule the "
                             "workers share (0: full batch)", minimum=0)
    batch_seed: int = option(0, "seed of the mini-batch schedule", minimum=0)
    val_fraction: float = option(0.0, "hold out this fraction of the data as a validation split, drawn with "
                                 "--data-seed (a dataset: its rows leave the training data; synthetic: as many "
                                 "extra rows of the same distribution); the model's loss and accuracy on it go to "
                                 "run.jsonl and summary.json (0: none)", minimum=0.0)
    eval_every: int = option(0, "evaluate on the validation split every K iterations, and after the last (0: only "
                             "after the last, when --val-fraction is set)", minimum=0)
    deadline_s: float = option(30.0, "per-iteration deadline when more than s_max workers straggle (0: wait "
                               "forever)", minimum=0.0)
    on_deadline: str = option("fail", "what happens at the deadline", choices=ON_DEADLINE)
    delay: str = option("none", "injected delay spec shipped to workers, e.g. shifted-exp:a=1,mu=1,unit_s=0.1")
    delay_seed: int = option(0, "seed of the delay realization (same seed: same delays for every code)",
                             minimum=0)
    out: str | None = option(None, "run directory: run.jsonl, summary.json, params.npy, checkpoint.npz")
    checkpoint_every: int = option(10, "write a checkpoint every K iterations (0: only on SIGTERM)", minimum=0)
    snapshot_every: int = option(0, "also keep the parameters after every K-th iteration in "
                                 "OUT/snapshots/params-ITERATION.npy (0: off)", minimum=0)
    new_run: bool = option(False, "when --out already holds a run, move its files aside (into "
                           "OUT/previous-<time>/) and start a new one; without it the master resumes a run of "
                           "the same job and refuses one of another job")
    metrics_port: int = option(0, "Prometheus metrics port (0: off)", minimum=0)
    tensorboard: str | None = option(None, "write TensorBoard event files to this directory: loss, latency, level, "
                                     "load, straggler scores, validation (extra flexgc[tensorboard])")
    join_timeout_s: float = option(120.0, "how long to wait for the first n workers", minimum=0.0)
    chunk_bytes: int = option(1 << 20, "bytes per chunk on the wire", minimum=1024)
    heartbeat_s: float = option(2.0, "worker heartbeat interval", minimum=0.05)
    verify: bool = option(False, "check every decoded gradient against a direct computation (needs the data on "
                          "the master)")
    linger: bool = option(False, "after the job, keep serving health until SIGTERM")
    max_workers: int = option(0, "with --adapt elastic|all (auto included): the job may grow to this many workers, "
                              "a worker that joins when every slot is held gets an empty slot and is taken into "
                              "the code at the next boundary; otherwise at most this many connected workers "
                              "(0: = workers)", minimum=0)
    blas_threads: int = option(1, "BLAS threads in this process (several processes share the cores)", minimum=1)
    adapt: str = option("auto", "adaptive placement (docs/design.md §2.10): speed = measure each worker's speed and "
                        "re-plan the code at iteration boundaries so load follows speed, exactly and with the same "
                        "tolerance; elastic = re-plan for the workers that remain when one is gone longer than "
                        "--replace-after-s (the tolerance is restored) and take a returning or new worker back "
                        "in; all = both; off = the static code; auto = all for an exact code up to 256 workers, "
                        "off for ignore-s and beyond", choices=ADAPT_MODES)
    replace_after_s: float = option(30.0, "with --adapt elastic|all: a slot whose worker has been gone this long is "
                                    "removed from the plan", minimum=0.0)
    replan_every: int = option(10, "with --adapt: check for a better plan every K iterations (and at once when "
                               "a worker's chronic speed changes by more than 1.5x)", minimum=1)
    adapt_split: int = option(4, "with --adapt: partitions per worker slot (k = M n, the grain a plan moves load "
                              "in; a code spec with split= keeps its own)", minimum=1)

    def __post_init__(self) -> None:
        from flexgc.common.codes import parse_code
        from flexgc.common.delays import parse_delay

        if self.momentum >= 1.0:
            raise ConfigError(f"momentum={self.momentum}; must be in [0, 1)")
        for name in ("port", "metrics_port"):
            if getattr(self, name) > 65535:
                raise ConfigError(f"{name}={getattr(self, name)}; must be <= 65535")
        if self.chunk_bytes > 4 << 20:
            raise ConfigError(f"chunk_bytes={self.chunk_bytes}; must be <= {4 << 20} (below the message limit)")
        if self.adapt_split > 64:
            raise ConfigError(f"adapt_split={self.adapt_split}; allowed 1..64")
        if self.max_workers and self.max_workers < self.workers:
            raise ConfigError(f"max_workers={self.max_workers}; must be 0 or >= workers={self.workers}")
        if not self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction={self.val_fraction}; must be in [0, 1)")
        if self.eval_every and not self.val_fraction:
            raise ConfigError(f"eval_every={self.eval_every} needs a validation split: set val_fraction (e.g. 0.2)")
        if self.model == "logistic" and self.classes != 2:
            raise ConfigError(f"classes={self.classes}; logistic regression has 2 classes (use model=softmax)")
        parse_model(self.model)
        parse_optimizer(self.optimizer, self.lr, self.momentum)
        try:
            code = parse_code(self.code, self.workers)
        except ConfigError as exc:  # name the code once (it may be the default); its errors name n
            message = str(exc).removeprefix("code: ").removesuffix(f" (in {self.code!r})")
            shown = "" if message.startswith(f"code={self.code!r}") else f"code={self.code!r}: "
            raise ConfigError(f"{shown}{message}") from None
        if self.adapt not in ("off", "auto") and code.family == "ignore":
            raise ConfigError(f"adapt={self.adapt!r} with code={self.code!r}: ignore-s is approximate by design and an "
                              f"adaptive plan keeps every gradient exact; allowed: an exact code (uncoded, nested, "
                              f"...) or adapt='off'")
        mode = resolve_adapt(self.adapt, code.family, self.workers)
        grows = self.max_workers > self.workers and mode in ("elastic", "all")
        if grows:
            # the job's first code (master/adapt.py job_code) runs on adapt_split times finer partitions
            k = code.k * (self.adapt_split if code.k == self.workers and "split=" not in self.code else 1)
            if self.max_workers > k:
                raise ConfigError(f"max_workers={self.max_workers}: the job's k={k} partitions are shared by at most "
                                  f"{k} workers; allowed: {self.workers}..{k} (or a larger adapt_split)")
        parse_delay(self.delay, "delay").check_slots(self.max_workers if grows else self.workers)

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> MasterConfig:
        """The config of resolved option values (every field present)."""
        return cls(**{f.name: values[f.name] for f in fields(cls)})

    def redacted(self) -> dict[str, Any]:
        """The fields as a dict with the token masked (for logs and summaries)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if out.get("token"):
            out["token"] = "***"
        return out


@dataclass(frozen=True, slots=True)
class WorkerConfig(_Tls):
    """A worker's configuration (`flexgc worker --help` lists every field)."""

    master: str = option("127.0.0.1:50051", "master address HOST:PORT")
    worker_id: str | None = option(None, "stable identity; a reconnecting worker with the same id gets its slot "
                                   "back (default: hostname)")
    slot: int = option(-1, "slot to ask for (-1: any free)", minimum=-1)
    node: str | None = option(None, "the machine this worker runs on, as the master records it and places slots by "
                              "(one machine's slots fail together; default: the hostname; in Kubernetes the node's "
                              "name, from the downward API's spec.nodeName)")
    # not FLEXGC_DELAY: that is the master's (the job's) delay, and an environment shared by master and workers
    # would make every worker override it while job.json and the summary record the master's
    delay: str | None = option(None, "override the master's injected delay spec for this worker (tests, "
                               "experiments; the job's record keeps the master's)", env="FLEXGC_WORKER_DELAY")
    server_name: str | None = option(None, "TLS server name to verify (default: the host in --master)")
    reconnect_max_s: float = option(5.0, "maximum reconnect backoff", minimum=0.01)
    join_timeout_s: float = option(0.0, "give up (exit 1) after this long without a successful join (0: retry "
                                   "forever)", minimum=0.0)
    linger: bool = option(False, "after the master's Shutdown, stay idle until SIGTERM instead of exiting")
    rows_per_chunk: int = option(4096, "rows per compute chunk (cancel is noticed between chunks)", minimum=1)
    slots: int = option(1, "worker slots in this process, each its own worker (id WORKER_ID-i when more than "
                        "one), sharing one event loop and the compute threads", minimum=1)
    compute_threads: int = option(0, "threads computing partial gradients for the slots of this process (0: "
                                  "min(slots, CPUs); a task with an injected --delay runs in a thread per slot "
                                  "instead, so one slot's delay never holds up another's)", minimum=0)
    model_modules: str | None = option(None, "comma-separated modules (and their submodules) a master may name "
                                       "in --model MODULE:FACTORY; the worker imports no other (default: none)")
    blas_threads: int = option(1, "BLAS threads in this process (several workers share the cores)", minimum=1)

    def __post_init__(self) -> None:
        from flexgc.common.delays import parse_delay

        host, sep, port = self.master.rpartition(":")
        if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise ConfigError(f"master={self.master!r}; expected HOST:PORT with a port in 1..65535")
        if self.delay is not None:
            parse_delay(self.delay, "delay")

    @property
    def identity(self) -> str:
        """The worker's stable id: --worker-id, or the hostname."""
        return self.worker_id or socket.gethostname()

    @property
    def machine(self) -> str:
        """The worker's failure domain: --node, or the hostname."""
        return self.node or socket.gethostname()

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> WorkerConfig:
        """The config of resolved option values (every field present)."""
        return cls(**{f.name: values[f.name] for f in fields(cls)})


MASTER_OPTIONS: list[Option] = options_of(MasterConfig)
WORKER_OPTIONS: list[Option] = options_of(WorkerConfig)


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    """One flag per option; its help names the environment variable, the default and the allowed values."""
    parser.add_argument("--config", metavar="FILE.toml", default=None,
                        help="TOML file with option values (keys as option names with underscores)")
    for opt in options:
        shown = "not set" if opt.default is None else repr(opt.default)
        allowed = f"; one of {', '.join(opt.choices)}" if opt.choices else ""
        helptext = f"{opt.help} [env {opt.env}; default {shown}{allowed}]".replace("%", "%%")
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


def config_from(cls: type[_C], options: Sequence[Option], cli: Mapping[str, Any], env: Mapping[str, str],
                config_file: str | None) -> _C:
    """`resolve`, then the config dataclass: an error of a check across fields (a code for n, a delay spec)
    names where its value came from when that was not the command line, as a single value's error does
    (`code (from FLEXGC_CODE)='crc:s=9': ...`)."""
    values = resolve(options, cli, env, config_file)
    try:
        return cls.from_values(values)  # type: ignore[attr-defined, no-any-return]
    except ConfigError as exc:
        message = str(exc)
        for opt in options:
            if cli.get(opt.name) is not None or not message.startswith((f"{opt.name}=", f"{opt.name} ")):
                continue
            source = opt.env if opt.env in env else (config_file or env.get("FLEXGC_CONFIG"))
            if source and values[opt.name] != opt.default:
                raise ConfigError(f"{opt.name} (from {source}){message[len(opt.name):]}") from None
        raise


def master_config(**overrides: Any) -> MasterConfig:
    """Defaults plus overrides (for tests, the demo and benchmarks); validated like the CLI."""
    values = resolve(MASTER_OPTIONS, overrides, {}, None)
    return MasterConfig.from_values(values)


def worker_config(**overrides: Any) -> WorkerConfig:
    """Defaults plus overrides (for tests and local clusters); validated like the CLI."""
    values = resolve(WORKER_OPTIONS, overrides, {}, None)
    return WorkerConfig.from_values(values)
