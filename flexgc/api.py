"""flexgc as a library: train from a script or a notebook, watch each iteration, read a run back.

    import flexgc

    run = flexgc.train(model, workers=8, code="nested:levels=0,1,2,3", iterations=30, out="runs/nb",
                       val_fraction=0.2, eval_every=5, callbacks=[flexgc.TensorBoard("runs/tb")])
    run.summary["final_loss"], run.evaluations[-1]["val_accuracy"], run.params

`Job` holds one job's options, exactly the options of `flexgc master` (the one table of
`flexgc.common.config.MasterConfig`: the command line, the environment, TOML files and these keyword
arguments are resolved and checked by the same code), and runs it as

- a local cluster, `Job.run_local()`: the master and n workers on loopback, the workers in this process
  (threads; a model object works as it is) or as child processes (`processes=True`, like `flexgc demo`);
- the real master in this process, `Job.serve()`: what `flexgc master` runs (the command calls it), with
  workers started anywhere (`flexgc worker`, or `Worker(...).run()` in another Python process).

`train(...)` is `Job(...).run_local()`. `Worker` is `flexgc worker`'s API. Callbacks (`Callback`, or a
plain function of an `IterationInfo`) run on the master after every iteration's step; returning True
stops the job after that iteration, and an exception in one ends the job (the workers are told to stop,
the run's files are written) and is raised as `CallbackError`, one line naming the callback, the
iteration and the error. `load_run(DIR)` reads a run directory back as a `Run`. docs/api.md describes
all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import inspect
import logging
import os
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

# gRPC core's own log lines (a refused connect while a worker retries) repeat what flexgc reports in one line;
# GRPC_VERBOSITY in the environment brings them back (read once, when grpc is first imported)
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from flexgc.common import local_models
from flexgc.common.config import (
    MASTER_OPTIONS,
    WORKER_OPTIONS,
    MasterConfig,
    Option,
    WorkerConfig,
    resolve,
)
from flexgc.common.errors import ConfigError, FlexgcError
from flexgc.common.models import DataSpec, Model, build_model, is_model_object, object_spec, parse_model
from flexgc.master.hooks import IterationInfo

_log = logging.getLogger(__name__)
JOIN_STOP_S = 30.0  # after the master ended, how long in-process workers may take to notice and exit

__all__ = ["Callback", "CallbackError", "IterationInfo", "Job", "Run", "Worker", "load_run", "train"]


class CallbackError(FlexgcError):
    """A callback raised: the job ended after that iteration (its files written, the workers told to stop);
    the message names the callback, the iteration and the error, and the error is the __cause__."""


@runtime_checkable
class Callback(Protocol):
    """What a callback object may define (each optional; a plain function is an `on_iteration`).

    on_iteration(info): after every iteration's step, on the master's event loop (the next iteration
    starts when it returns, so keep it short); return True to stop the job after this iteration.
    on_end(run): once, after the job ended (finished, stopped or interrupted), with its `Run`.
    close(): always last, also when the job failed (release files, flush writers).
    """

    def on_iteration(self, info: IterationInfo) -> bool | None:
        """After iteration `info.iteration`'s step; True stops the job."""
        ...


# ---------------------------------------------------------------------------------------------------------
# options: the one table of flexgc master / flexgc worker


def _options(options: Sequence[Option], given: Mapping[str, Any], config: str | None, what: str) -> dict[str, Any]:
    """Resolve keyword options like the command line resolves flags (no environment: a library does not
    read it); an unknown name is refused naming the closest ones."""
    known = {o.name for o in options}
    for name in given:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ConfigError(f"{name}: not an option of {what}; {hint}allowed: {', '.join(sorted(known))}")
    return resolve(options, given, {}, config)


def _signature(options: Sequence[Option], first: list[inspect.Parameter],
               last: list[inspect.Parameter]) -> inspect.Signature:
    """The signature help() and notebooks show: every option as a keyword argument with its default."""
    params = [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=o.default,
                                annotation=o.kind if o.default is not None else f"{o.kind.__name__} | None")
              for o in options if o.name not in {p.name for p in first}]
    return inspect.Signature([*first, *params, *last])


def options_help(options: Sequence[Option]) -> str:
    """One line per option (name, default, help), for docstrings."""
    return "\n".join(f"    {o.name} = {o.default!r}: {o.help}" for o in options)


# ---------------------------------------------------------------------------------------------------------
# the model: a spec, or an object


def _model_spec(model: Any) -> tuple[str, Any]:
    """(spec, object): a spec string as it is; a model object by its import path when it has one, else by a
    name in this process's registry (`flexgc.common.local_models`: usable by in-process workers only)."""
    if isinstance(model, str):
        return parse_model(model).text, None
    if not is_model_object(model):
        raise ConfigError(f"model: got {type(model).__name__}; allowed: a model spec (e.g. 'logistic', "
                          f"'jax-mlp:hidden=64', 'module:factory,key=value') or an object with d, "
                          f"init_params(seed) and loss_and_grad(params, X, y)")
    path = object_spec(model)
    if path is not None:
        return path, model
    return f"{local_models.__name__}:{type(model).__name__}", model


def _needs_import_path(spec: str, model: Any, where: str) -> None:
    """ConfigError saying what to do when a model object must be imported by workers in other processes
    and has no import path."""
    if model is None or not spec.startswith(local_models.__name__ + ":"):
        return
    cls = type(model)
    home = "__main__ (a script or a notebook)" if cls.__module__ in ("__main__", "__mp_main__") else \
        f"module {cls.__module__}"
    raise ConfigError(
        f"model: this {cls.__name__} object (class from {home}) is not bound to a name at module level of an "
        f"importable module, so workers {where} cannot import it; create it at module level in a module they can "
        f"import (e.g. MODEL = {cls.__name__}(...) in mymodels.py) and start the workers with --model-modules "
        f"mymodels, give a factory spec 'module:factory,key=value', or train on an in-process local cluster "
        f"(run_local(processes=False))")


def _model_modules(spec: str, worker_values: Mapping[str, Any]) -> str | None:
    """A local worker's --model-modules: what it was given plus the job's own model module."""
    module = parse_model(spec).module
    given = worker_values.get("model_modules")
    if module is None:
        return given  # type: ignore[no-any-return]
    return module if not given else f"{given},{module}"


@contextlib.contextmanager
def _registered(spec: str, model: Any) -> Iterator[str]:
    """While the job runs, an in-process model object is found by its spec (`local_models`)."""
    if model is None or not spec.startswith(local_models.__name__ + ":"):
        yield spec
        return
    name = local_models.register(model)
    try:
        yield name
    finally:
        local_models.unregister(name)


# ---------------------------------------------------------------------------------------------------------
# the result


class Run:
    """A job's results, as `load_run` reads them from its run directory (or, for a job without `out`, as the
    job returned them).

    path: the run directory (None without `out`); job: its identity (job.json: code, n, model, data, seeds,
    ...); summary: summary.json (empty while the job runs); params: the final parameters (params.npy; the
    checkpoint's when there is no params.npy yet), (d,) float64, or None; records: the run log's iteration
    records (schema flexgc.run.v1, `flexgc.master.accounting`), resume markers applied; evaluations: the
    validation figures (`iteration`: the last step the parameters include, `val_loss`, `val_accuracy` for a
    classifier, `val_samples`, `eval_ms`), in order; plans: the adaptive plan switches. The run log is read
    when `records`, `evaluations` or `plans` is first asked for.
    """

    def __init__(self, path: Path | None, job: dict[str, Any], summary: dict[str, Any], params: np.ndarray | None,
                 model_object: Any = None,
                 log: tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]] | None = None) -> None:
        self.path, self.job, self.summary, self.params = path, job, summary, params
        self.model_object = model_object  # the model object the job trained, when it was given as one
        self._log = log

    def _read(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        if self._log is None:
            self._log = _read_run_log(self.path / "run.jsonl") if self.path is not None else ([], [], [])
        return self._log

    @property
    def records(self) -> list[dict[str, Any]]:
        """The iteration records, resume markers applied."""
        return self._read()[0]

    @property
    def evaluations(self) -> list[dict[str, Any]]:
        """The validation figures, in order (a resume drops those of the iterations it runs again)."""
        return self._read()[1]

    @property
    def plans(self) -> list[dict[str, Any]]:
        """The adaptive plan switches (``plan`` events of the run log)."""
        return self._read()[2]

    def __repr__(self) -> str:
        s = self.summary
        parts = [f"path={str(self.path)!r}" if self.path else "path=None",
                 f"iterations={s.get('iterations', len(self.records))}"]
        for key in ("exact_iterations", "approximate_iterations", "failed_iterations", "final_loss"):
            if s.get(key) is not None:
                parts.append(f"{key.removesuffix('_iterations')}={s[key]}")
        last = s.get("validation") or (self.evaluations[-1] if self.evaluations else {})
        parts += [f"{k}={last[k]:.4g}" for k in ("val_loss", "val_accuracy") if k in last]
        return f"Run({', '.join(parts)})"

    @property
    def interrupted(self) -> bool:
        """Whether the job was interrupted (SIGINT/SIGTERM, or KeyboardInterrupt) before its end."""
        return bool(self.summary.get("interrupted"))

    @property
    def model(self) -> Model:
        """The trained model's object: the one the job was given, or rebuilt from the job's model spec."""
        if self.model_object is not None:
            return self.model_object  # type: ignore[no-any-return]
        spec = self.summary.get("model") or self.job.get("model")
        if not spec:
            raise ConfigError(f"run {self.path}: neither summary.json nor job.json names the model")
        features = self.summary.get("features", self.job.get("features"))
        classes = self.summary.get("classes", self.job.get("classes", 2))
        if features is None:
            raise ConfigError(f"run {self.path}: summary.json has no features (a run of an older flexgc); pass "
                              f"model=... to load_run")
        if spec.startswith(local_models.__name__ + ":"):
            raise ConfigError(f"run {self.path}: the model was an object handed to flexgc in another process "
                              f"({spec}); pass it again: load_run(path, model=your_model)")
        return build_model(DataSpec(model=spec, samples=1, features=int(features), classes=int(classes)))

    def unflatten(self, params: np.ndarray | None = None) -> Any:
        """The parameters (default: the final ones) in the model's own form: the model's ``unflatten``
        (numpy models: a dict of arrays, e.g. {"W": (features, classes)} for softmax; JAX models: the
        Equinox module; the PyTorch example: the torch module)."""
        params = self.params if params is None else params
        if params is None:
            raise ConfigError(f"run {self.path}: no parameters (params.npy or checkpoint.npz) yet")
        return unflatten(self.model, params)


def unflatten(model: Model, params: np.ndarray) -> Any:
    """`params` (d,) in `model`'s own form, by its ``unflatten(params)``; ConfigError when it has none."""
    method = getattr(model, "unflatten", None)
    if method is None:
        raise ConfigError(f"model {type(model).__name__} has no unflatten(params); its parameters are the flat "
                          f"vector (run.params)")
    if np.shape(params) != (model.d,):
        raise ConfigError(f"params: shape {np.shape(params)}; model {type(model).__name__} has d={model.d}")
    return method(np.asarray(params, dtype=np.float64))


def load_run(path: str | Path, model: Any = None) -> Run:
    """Read a run directory (a master's `out`): its identity, the summary and the parameters now, the run
    log (iteration records with resume markers applied, evaluations) when first asked for. `model`: the
    model object, when the job was given one that cannot be rebuilt from its spec (an in-process object)."""
    p = Path(path)
    if not p.is_dir() or not any((p / f).exists() for f in ("job.json", "run.jsonl", "summary.json")):
        raise ConfigError(f"run directory {str(p)!r}: not a flexgc run (no job.json, run.jsonl or summary.json); "
                          f"give a master's --out")
    if model is not None and not is_model_object(model):
        raise ConfigError(f"model: got {type(model).__name__}; allowed: an object with d, init_params(seed) and "
                          f"loss_and_grad(params, X, y)")
    params = None
    if (p / "params.npy").exists():
        params = np.load(p / "params.npy", allow_pickle=False)
    elif (p / "checkpoint.npz").exists():
        with np.load(p / "checkpoint.npz", allow_pickle=False) as f:
            params = f["params"].copy()
    return Run(p, _read_json(p / "job.json"), _read_json(p / "summary.json"), params, model)


def _read_run_log(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(iteration records, evaluations, plan switches) of a run.jsonl, a resume marker applied to all three."""
    import json

    from flexgc.master.accounting import apply_record

    records: list[dict[str, Any]] = []
    evaluations: list[dict[str, Any]] = []
    plans: list[dict[str, Any]] = []
    if not path.exists():
        return records, evaluations, plans
    text = path.read_text()
    for line in text[: text.rfind("\n") + 1].splitlines():  # a torn last line (still being written) waits
        if not line.strip():
            continue
        rec = json.loads(line)
        event = rec.get("event")
        if event == "resume":  # the resumed master runs these iterations again: their evaluations too
            evaluations[:] = [e for e in evaluations if e["iteration"] < rec["from_iteration"]]
            plans[:] = [e for e in plans if e.get("iteration", 0) < rec["from_iteration"]]
        elif event == "eval":
            evaluations.append({k: v for k, v in rec.items() if k not in ("schema", "event", "time_unix")})
        elif event == "plan":
            plans.append(rec)
        apply_record(records, rec)
    return records, evaluations, plans


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc})") from None
    return value if isinstance(value, dict) else {}


# ---------------------------------------------------------------------------------------------------------
# callbacks on the master


class _Hooks:
    """The job's callbacks as the trainer's one `on_iteration` hook; an exception stops the job and is kept
    (raised by the API once the job has ended); also collects what a job without `out` returns."""

    def __init__(self, callbacks: Sequence[Any]) -> None:
        self.callbacks = list(callbacks)
        self.iteration_fns: list[tuple[str, Callable[[IterationInfo], Any]]] = []
        for cb in self.callbacks:
            fn = getattr(cb, "on_iteration", None)
            if fn is None and callable(cb):
                fn = cb
            if fn is None and not hasattr(cb, "on_end"):
                raise ConfigError(f"callbacks: {cb!r} is neither a function of an IterationInfo nor an object "
                                  f"with on_iteration(info) or on_end(run)")
            if fn is not None:
                self.iteration_fns.append((_name(cb), fn))
        self.error: CallbackError | None = None
        self.records: list[dict[str, Any]] = []
        self.evaluations: list[dict[str, Any]] = []

    def on_iteration(self, info: IterationInfo) -> bool:
        if info.validation is not None:
            self.evaluations.append({"iteration": info.iteration, **info.validation})
        stop = False
        for name, fn in self.iteration_fns:
            try:
                stop = bool(fn(info)) or stop
            except Exception as exc:
                message = " ".join(str(exc).split()) or "(no message)"
                self.error = CallbackError(f"callback {name} raised {type(exc).__name__} at iteration "
                                           f"{info.iteration}: {message}")
                self.error.__cause__ = exc
                _log.error("%s; the job stops", self.error)
                return True
        return stop

    def on_record(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def end(self, run: Run) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, "on_end", None)
            if fn is None:
                continue
            try:
                fn(run)
            except Exception as exc:
                raise CallbackError(f"callback {_name(cb)} raised {type(exc).__name__} in on_end: {exc}") from exc

    def close(self) -> None:
        for cb in self.callbacks:
            close = getattr(cb, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:  # the job's own outcome matters more; say it and go on
                    _log.warning("callback %s: close raised %s: %s", _name(cb), type(exc).__name__, exc)


def _name(cb: Any) -> str:
    return getattr(cb, "__qualname__", None) or type(cb).__name__


# ---------------------------------------------------------------------------------------------------------
# running a coroutine from sync code: in this thread, or in a thread of its own under a running loop


class _Loop:
    """Runs one coroutine on an event loop of its own and can stop it from any thread: `stop` is the
    asyncio.Event the coroutine is given."""

    def __init__(self, make: Callable[[asyncio.Event], Coroutine[Any, Any, Any]]) -> None:
        self._make = make
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._stopping = threading.Event()

    async def main(self) -> Any:
        self._event = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        if self._stopping.is_set():
            self._event.set()
        return await self._make(self._event)

    def stop(self) -> None:
        """Set the coroutine's stop event (safe from any thread, before or while it runs)."""
        self._stopping.set()
        loop, event = self._loop, self._event
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: the coroutine is over
                loop.call_soon_threadsafe(event.set)

    def run(self) -> Any:
        """Run it to the end: in this thread when no event loop runs here (the main thread: the master's
        SIGINT/SIGTERM handling applies), else in a thread of its own (a notebook's running loop), stopped
        on KeyboardInterrupt."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.main())
        result: list[Any] = []
        error: list[BaseException] = []
        finished = threading.Event()  # not Thread.join: a KeyboardInterrupt inside it can leave the thread looking
                                      # finished while it still runs (CPython gh-90882)

        def target() -> None:
            try:
                result.append(asyncio.run(self.main()))
            except BaseException as exc:
                error.append(exc)
            finally:
                finished.set()

        threading.Thread(target=target, name="flexgc-loop", daemon=True).start()
        try:
            while not finished.wait(0.5):
                pass
        except KeyboardInterrupt:
            self.stop()
            finished.wait()
        if error:
            raise error[0]
        return result[0]


@contextlib.contextmanager
def _blas_limits_restored() -> Iterator[None]:
    """The master and the workers limit BLAS threads for this process (docs/style.md §7); a library call
    gives the caller's limits back afterwards."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=None):
        yield


# ---------------------------------------------------------------------------------------------------------
# Job and Worker


class Job:
    """One training job: a model and every option of ``flexgc master`` as keyword arguments.

    model: a model spec ('logistic', 'jax-cnn:channels=8', 'module:factory,key=value', ...) or an object
    with ``d``, ``init_params(seed)`` and ``loss_and_grad(params, X, y)`` (docs/models.md); None: the
    `config` file's, else logistic. Keyword arguments beat the file, as flags beat it; callbacks:
    functions of an `IterationInfo` or `Callback` objects (`TensorBoard`); config: a TOML file of option
    values (like ``--config``). Options are checked here, as the command line checks them: a bad value
    raises ConfigError naming the option and what is allowed. ``tensorboard=DIR`` adds a `TensorBoard`
    callback. The options (``help(flexgc.Job)`` lists them with their defaults):
    """

    def __init__(self, model: Any = None, *, callbacks: Sequence[Any] = (), config: str | None = None,
                 **options: Any) -> None:
        self.model_object = None
        self.given = dict(options)
        if model is not None:  # None: the option's value from `config`, or its default (logistic)
            self.given["model"], self.model_object = _model_spec(model)
        self.config: MasterConfig = MasterConfig.from_values(
            _options(MASTER_OPTIONS, self.given, config, "flexgc.Job (flexgc master)"))
        self.callbacks = list(callbacks)
        _Hooks(self.callbacks)  # check them now, not at the first iteration

    @classmethod
    def from_config(cls, cfg: MasterConfig, model: Any = None, callbacks: Sequence[Any] = ()) -> Job:
        """A job of a resolved config (the command line's); `model`: the object behind cfg.model, if any."""
        job = cls.__new__(cls)
        job.model_object, job.given, job.config, job.callbacks = model, {}, cfg, list(callbacks)
        return job

    def __repr__(self) -> str:
        cfg = self.config
        return (f"Job(model={cfg.model!r}, workers={cfg.workers}, code={cfg.code!r}, iterations={cfg.iterations}, "
                f"out={cfg.out!r})")

    def _hooks(self) -> _Hooks:
        callbacks = list(self.callbacks)
        if self.config.tensorboard:
            from flexgc.tensorboard import TensorBoard

            callbacks.append(TensorBoard(self.config.tensorboard))
        return _Hooks(callbacks)

    def serve(self, on_port: Callable[[int], None] | None = None) -> Run:
        """Run the real master in this process (``flexgc master``) until the job ends; workers join from
        anywhere (``flexgc worker --master HOST:PORT``, or `Worker`). `on_port(port)` is called once it
        listens. Returns the `Run`; raises ConfigError for what the options cannot do, StorageError when the
        run directory cannot be written, CallbackError when a callback raised."""
        _needs_import_path(self.config.model, self.model_object, "in other processes")
        return self._run(self.config, on_port)

    def run_local(self, *, processes: bool = False, dead: Sequence[int] = (),
                  worker_options: Mapping[str, Any] | None = None) -> Run:
        """Run the job on a local cluster: the master in this process and a worker for every slot but
        `dead` (slots whose worker never starts), on loopback (host 127.0.0.1 and a free port unless the
        options say otherwise). `processes`: the workers as child processes (like ``flexgc demo``; a model
        object then needs an import path) instead of threads of this process. `worker_options`: options of
        ``flexgc worker`` for every worker (e.g. rows_per_chunk, delay)."""
        cfg = self.config
        local: dict[str, Any] = {k: v for k, v in (("host", "127.0.0.1"), ("port", 0)) if k not in self.given}
        cfg = replace(cfg, **local) if local else cfg
        bad = sorted({int(s) for s in dead} - set(range(cfg.workers)))
        if bad:
            raise ConfigError(f"dead={list(dead)}: slot(s) {bad} do not exist; allowed: 0..{cfg.workers - 1}")
        given = dict(worker_options or {})
        for name in ("master", "slot", "worker_id", "token"):
            if name in given:
                raise ConfigError(f"worker_options: {name} is set by the local cluster; leave it out")
        if processes:
            _needs_import_path(cfg.model, self.model_object, "in child processes")
        with _registered(cfg.model, self.model_object) as spec:
            cfg = replace(cfg, model=spec)
            given["model_modules"] = _model_modules(spec, given)
            WorkerConfig.from_values(_options(WORKER_OPTIONS, {**given, "master": "127.0.0.1:1"}, None,
                                              "worker_options (flexgc worker)"))  # checked before the master starts
            live = [slot for slot in range(cfg.workers) if slot not in set(dead)]
            return self._run(cfg, None, _LocalWorkers(given, live, cfg.token, processes))

    def _run(self, cfg: MasterConfig, on_port: Callable[[int], None] | None,
             workers: _LocalWorkers | None = None) -> Run:
        from flexgc.master.server import serve

        hooks = self._hooks()

        async def main(stop: asyncio.Event) -> dict[str, Any]:
            def started(port: int) -> None:
                if workers is not None:
                    workers.start(port)
                if on_port is not None:
                    on_port(port)

            summary: dict[str, Any] | None = None
            try:
                summary = await serve(cfg, on_port=started, stop=stop, on_record=hooks.on_record,
                                      on_iteration=hooks.on_iteration)
                return summary
            finally:
                if workers is not None:  # told by a master that finished, they end by themselves
                    await workers.stop(10.0 if summary is not None and not summary.get("interrupted") else 0.0)

        try:
            with _blas_limits_restored():
                summary = _Loop(main).run()
            if hooks.error is not None:
                raise hooks.error
            run = self._result(cfg, summary, hooks)
            hooks.end(run)
            return run
        finally:
            hooks.close()

    def _result(self, cfg: MasterConfig, summary: dict[str, Any], hooks: _Hooks) -> Run:
        params = summary.pop("params", None)
        if cfg.out:
            run = load_run(cfg.out, self.model_object)
            run.summary, run.params = summary, params  # as the job ended (summary.json holds the same)
            return run
        from flexgc.master.accounting import apply_record
        from flexgc.master.rundir import IDENTITY_FIELDS

        records: list[dict[str, Any]] = []
        for rec in hooks.records:
            apply_record(records, rec)
        evaluations = list(hooks.evaluations)
        final = summary.get("validation")
        if final is not None and (not evaluations or evaluations[-1]["iteration"] != final["iteration"]):
            evaluations.append(final)
        job = {name: getattr(cfg, name) for name in IDENTITY_FIELDS}
        return Run(None, job, summary, params, self.model_object, (records, evaluations, []))


class _LocalWorkers:
    """The workers of a local cluster, started once the master listens and stopped after it ended: tasks on
    the master's own event loop (`flexgc.worker.client.run_worker`, each slot computing in a thread of its
    own; grpc.aio wants one event loop per process), or child processes."""

    def __init__(self, options: Mapping[str, Any], slots: Sequence[int], token: str | None, processes: bool) -> None:
        self.options, self.slots, self.token, self.processes = dict(options), list(slots), token, processes
        self._task: asyncio.Future[list[int]] | None = None
        self._stop: asyncio.Event | None = None
        self._children: list[Any] = []

    def start(self, port: int) -> None:
        """Start a worker for every slot (on the running loop, or as processes)."""
        from flexgc.harness.local import worker_process_main, worker_values

        per_slot = [worker_values(f"127.0.0.1:{port}", slot, token=self.token, **self.options) for slot in self.slots]
        if self.processes:
            from flexgc.harness.processes import SpawnedChild

            self._children = [SpawnedChild(worker_process_main, (values, "WARNING"), f"flexgc-worker-{values['slot']}")
                              for values in per_slot]
            return
        from flexgc.worker.client import run_worker

        self._stop = asyncio.Event()
        self._task = asyncio.gather(*(run_worker(WorkerConfig.from_values(v), self._stop) for v in per_slot))

    async def stop(self, wait_s: float) -> None:
        """Give them `wait_s` to end by themselves, then stop them (SIGTERM for child processes)."""
        if self._children:
            from flexgc.harness.processes import stop_all

            await asyncio.get_running_loop().run_in_executor(None, lambda: stop_all(self._children, exit_wait_s=wait_s))
        if self._task is None or self._stop is None:
            return
        await asyncio.wait({self._task}, timeout=wait_s)
        self._stop.set()
        try:
            await asyncio.wait_for(self._task, JOIN_STOP_S)
        except TimeoutError:
            _log.warning("in-process workers still running %.0f s after they were told to stop", JOIN_STOP_S)
        except Exception as exc:  # the job's own outcome is what the caller wants; say it and go on
            _log.warning("in-process workers ended with %s: %s", type(exc).__name__, exc)


class Worker:
    """A worker (``flexgc worker``) in this process: every option of ``flexgc worker`` as keyword arguments
    (``help(flexgc.Worker)`` lists them); ``run()`` joins the master and works until the job ends. Options:
    """

    def __init__(self, master: str | None = None, *, config: str | None = None, **options: Any) -> None:
        given = {**options, "master": master} if master is not None else options  # None: config's, or the default
        self.config: WorkerConfig = WorkerConfig.from_values(
            _options(WORKER_OPTIONS, given, config, "flexgc.Worker (flexgc worker)"))

    @classmethod
    def from_config(cls, cfg: WorkerConfig) -> Worker:
        """A worker of a resolved config (the command line's)."""
        worker = cls.__new__(cls)
        worker.config = cfg
        return worker

    def __repr__(self) -> str:
        return f"Worker(master={self.config.master!r}, worker_id={self.config.identity!r}, slots={self.config.slots})"

    def run(self) -> int:
        """Join and work until the master ends the job; the exit code (0: the job ended or stopped; 1: no join
        within join_timeout_s; 2: refused, e.g. a wrong token or a model this worker may not import)."""
        from flexgc.worker.client import run_workers

        with _blas_limits_restored():
            return int(_Loop(lambda stop: run_workers(self.config, stop)).run())


def train(model: Any = None, *, callbacks: Sequence[Any] = (), processes: bool = False,
          dead: Sequence[int] = (), worker_options: Mapping[str, Any] | None = None, config: str | None = None,
          **options: Any) -> Run:
    """Train `model` on a local cluster and return the `Run`: ``Job(model, callbacks=..., **options)``
    ``.run_local(processes=..., dead=..., worker_options=...)``. Options: those of ``flexgc master``
    (``help(flexgc.Job)``)."""
    job = Job(model, callbacks=callbacks, config=config, **options)
    return job.run_local(processes=processes, dead=dead, worker_options=worker_options)


# help() and notebooks show every option with its default (the one table: flexgc.common.config)
_MODEL = inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
_KW = inspect.Parameter.KEYWORD_ONLY
_CALLBACKS = inspect.Parameter("callbacks", _KW, default=())
_CONFIG = inspect.Parameter("config", _KW, default=None)
Job.__signature__ = _signature(MASTER_OPTIONS, [_MODEL], [_CALLBACKS, _CONFIG])  # type: ignore[attr-defined]
Job.__doc__ = f"{Job.__doc__}\n{options_help(MASTER_OPTIONS)}\n"
train.__signature__ = _signature(  # type: ignore[attr-defined]
    MASTER_OPTIONS, [_MODEL], [_CALLBACKS, inspect.Parameter("processes", _KW, default=False),
                               inspect.Parameter("dead", _KW, default=()),
                               inspect.Parameter("worker_options", _KW, default=None), _CONFIG])
Worker.__signature__ = _signature(  # type: ignore[attr-defined]
    WORKER_OPTIONS, [inspect.Parameter("master", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)],
    [_CONFIG])
Worker.__doc__ = f"{Worker.__doc__}\n{options_help(WORKER_OPTIONS)}\n"


def api_options(target: Callable[..., Any]) -> set[str]:
    """The options of ``flexgc master`` / ``flexgc worker`` that `target` (Job, train or Worker) takes: its
    parameters but its own (callbacks, config, processes, dead, worker_options)."""
    own = {"callbacks", "config", "processes", "dead", "worker_options"}
    return set(inspect.signature(target).parameters) - own

