"""The Python API (flexgc/api.py): exactness through it, model objects, callbacks, evaluation, the real master
and workers in the user's process, reading a run back, and one option table shared with the command line."""

from __future__ import annotations

import _thread
import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import flexgc
from examples import numpy_model
from flexgc.api import CallbackError, Job, Worker, api_options, load_run, train
from flexgc.cli import build_parser
from flexgc.common.codes import parse_code
from flexgc.common.config import MASTER_OPTIONS, WORKER_OPTIONS, resolve_adapt
from flexgc.common.errors import ConfigError
from flexgc.common.models import DataSpec, synthetic_partition
from flexgc.master.adapt import AdaptPolicy, job_code
from flexgc.master.hooks import IterationInfo
from tests import api_models
from tests.helpers import centralized_params

pytestmark = pytest.mark.slow

SMALL: dict[str, Any] = dict(workers=4, code="nested:levels=0,1,2", iterations=4, samples=240, features=6, lr=0.5,
                             momentum=0.5, join_timeout_s=30.0, deadline_s=30.0)


def _relative_error(params: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(params - reference) / np.linalg.norm(reference))


# ------------------------------------------------------------------------------------------------ exactness


@pytest.mark.parametrize(("code", "n", "dead", "processes"), [
    ("nested:levels=0,1,2", 4, (0, 1), False),
    ("crc:s=2", 5, (1, 3), True),
])
def test_a_job_from_python_with_smax_dead_workers_equals_centralized_gd(
        tmp_path: Path, code: str, n: int, dead: tuple[int, ...], processes: bool) -> None:
    # the dead slots' workers never start: the master starts after the join timeout, once the live ones (as many
    # as an exact decode needs) have joined, which child processes may take seconds to do on a loaded machine
    options = {**SMALL, "code": code, "workers": n, "join_timeout_s": 15.0 if processes else 5.0, "out": str(tmp_path)}
    assert len(dead) == parse_code(code, n).s_max

    run = train(dead=dead, processes=processes, **options)

    assert run.summary["exact_iterations"] == options["iterations"]
    assert run.params is not None
    assert _relative_error(run.params, centralized_params(Job(**options).config)) <= 1e-12
    assert all(not {slot for slot, _, _ in r["rows_used"]} & set(dead) for r in run.records)
    assert np.array_equal(np.load(tmp_path / "params.npy"), run.params)


def test_a_job_without_out_returns_its_records_and_parameters() -> None:
    run = train(**SMALL)

    assert run.path is None and [r["iteration"] for r in run.records] == [0, 1, 2, 3]
    assert run.params is not None and _relative_error(run.params, centralized_params(Job(**SMALL).config)) <= 1e-12
    assert run.job["code"] == SMALL["code"] and run.summary["exact_iterations"] == 4


# ------------------------------------------------------------------------------------------------ model objects


def _centralized_huber(model: numpy_model.HuberRegression, options: dict[str, Any]) -> np.ndarray:
    # the job's own partitions: the default --adapt auto runs an exact code on k = 4n
    n, family = options["workers"], parse_code(options["code"], options["workers"]).family
    k = job_code(options["code"], n, AdaptPolicy(resolve_adapt(options.get("adapt", "auto"), family, n))).k
    spec = DataSpec(model="examples.numpy_model:build", samples=options["samples"], features=options["features"],
                    classes=1, partitions=k)
    parts = [synthetic_partition(spec, j) for j in range(k)]
    w, v = model.init_params(0), np.zeros(model.d)
    for _ in range(options["iterations"]):
        g = sum(model.loss_and_grad(w, X, y)[1] for X, y in parts) / options["samples"]
        v = options["momentum"] * v + g
        w = w - options["lr"] * v
    return w


def test_a_model_object_trains_in_process_and_is_the_runs_model(tmp_path: Path) -> None:
    model = numpy_model.build(features=6, classes=1, delta=0.5)   # no import path: in-process workers only

    run = train(model, out=str(tmp_path), **SMALL)

    assert run.params is not None
    assert _relative_error(run.params, _centralized_huber(model, SMALL)) <= 1e-12
    assert run.model is model and set(run.unflatten()) == {"w", "b"}
    assert json.loads((tmp_path / "job.json").read_text())["model"] == "flexgc.common.local_models:HuberRegression"
    with pytest.raises(ConfigError, match=r"pass it again: load_run\(path, model=your_model\)"):
        _ = load_run(tmp_path).model                               # another process would not have the object
    assert load_run(tmp_path, model=model).unflatten()["b"] == run.params[-1]


def test_a_module_level_model_object_trains_in_child_processes_by_its_derived_path(tmp_path: Path) -> None:
    job = Job(api_models.HUBER, out=str(tmp_path), **SMALL)
    assert job.config.model == "tests.api_models:HUBER"

    run = job.run_local(processes=True)                             # the workers import tests.api_models

    assert run.params is not None
    assert _relative_error(run.params, _centralized_huber(api_models.HUBER, SMALL)) <= 1e-12
    assert run.model is api_models.HUBER and load_run(tmp_path).model is api_models.HUBER


def test_a_model_object_without_an_import_path_cannot_go_to_other_processes() -> None:
    model = numpy_model.build(features=6, classes=1)

    with pytest.raises(ConfigError, match=r"this HuberRegression object \(class from module examples\.numpy_model\) "
                                          r"is not bound to a name at module level.*workers in child processes "
                                          r"cannot import it; create it at module level"):
        Job(model, **SMALL).run_local(processes=True)
    with pytest.raises(ConfigError, match="workers in other processes cannot import it"):
        Job(model, **SMALL).serve()


def test_a_toml_file_gives_options_and_keyword_arguments_beat_it(tmp_path: Path) -> None:
    (tmp_path / "job.toml").write_text('model = "softmax"\nclasses = 3\niterations = 7\n')
    (tmp_path / "worker.toml").write_text('master = "10.0.0.1:9"\nrows_per_chunk = 64\n')

    job = Job(config=str(tmp_path / "job.toml"), iterations=9)
    worker = Worker(config=str(tmp_path / "worker.toml"))

    assert (job.config.model, job.config.classes, job.config.iterations) == ("softmax", 3, 9)
    assert (worker.config.master, worker.config.rows_per_chunk) == ("10.0.0.1:9", 64)
    assert Job().config.model == "logistic" and Worker().config.master == "127.0.0.1:50051"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"model": 42}, "model: got int; allowed: a model spec"),
    ({"iteration": 3}, "iteration: not an option of flexgc.Job .flexgc master.; did you mean iterations"),
    ({"workers": 0}, "workers .*must be >= 1"),
    ({"code": "crc:s=9"}, "code="),
    ({"callbacks": [42]}, "callbacks: 42 is neither a function"),
])
def test_bad_arguments_are_refused_naming_the_field(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Job(**kwargs)


# ------------------------------------------------------------------------------------------------ callbacks


class _Recorder:
    def __init__(self, stop_at: int | None = None) -> None:
        self.infos: list[IterationInfo] = []
        self.params: list[np.ndarray] = []
        self.ended: list[flexgc.Run] = []
        self.closed = 0
        self.stop_at = stop_at

    def on_iteration(self, info: IterationInfo) -> bool:
        self.infos.append(info)
        self.params.append(info.params())
        return info.iteration == self.stop_at

    def on_end(self, run: flexgc.Run) -> None:
        self.ended.append(run)

    def close(self) -> None:
        self.closed += 1


def test_callbacks_see_every_iteration_and_can_stop_the_job(tmp_path: Path) -> None:
    recorder = _Recorder(stop_at=2)
    seen: list[int] = []

    run = train(callbacks=[recorder, lambda info: seen.append(info.iteration)], out=str(tmp_path),
                **{**SMALL, "iterations": 10})

    assert [i.iteration for i in recorder.infos] == seen == [0, 1, 2]
    assert run.summary["iterations"] == 3 and run.summary["stopped_by_callback"] is True
    assert recorder.ended == [run] and recorder.closed == 1
    first = recorder.infos[0]
    assert first.outcome == "EXACT" and first.iterations == 10 and first.n == 4 and first.latency_ms > 0
    assert first.level is not None and 0 <= first.level < 3 and len(first.load) == 4
    assert all(0.0 <= x <= 0.75 for x in first.load) and set(first.stragglers) <= {0, 1, 2, 3}
    assert [i.loss for i in recorder.infos] == [r["loss"] for r in run.records]
    assert run.params is not None and np.array_equal(recorder.params[-1], run.params)  # after the step: the final
    assert not np.array_equal(recorder.params[0], recorder.params[1])


def test_an_exception_in_a_callback_ends_the_job_with_one_line(tmp_path: Path) -> None:
    recorder = _Recorder()

    def explode(info: IterationInfo) -> None:
        if info.iteration == 1:
            raise ValueError("no good\nat all")

    started = time.monotonic()
    with pytest.raises(CallbackError) as caught:
        train(callbacks=[explode, recorder], out=str(tmp_path), **{**SMALL, "iterations": 50})
    elapsed = time.monotonic() - started

    assert str(caught.value) == ("callback test_an_exception_in_a_callback_ends_the_job_with_one_line.<locals>."
                                 "explode raised ValueError at iteration 1: no good at all")
    assert isinstance(caught.value.__cause__, ValueError)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["iterations"] == 2 and summary["stopped_by_callback"] is True  # the job's files are written
    assert recorder.closed == 1 and recorder.ended == []
    assert elapsed < SMALL["deadline_s"]        # it ended, workers included, without waiting for any deadline


def test_under_a_running_event_loop_the_job_runs_aside_and_stops_on_keyboard_interrupt(tmp_path: Path) -> None:
    from threadpoolctl import threadpool_info

    def interrupt(info: IterationInfo) -> None:  # the notebook's stop button: KeyboardInterrupt in the main thread
        if info.iteration == 1:
            _thread.interrupt_main()

    async def notebook_cell() -> flexgc.Run:  # a kernel's loop runs; train() blocks the cell like any call
        return train(callbacks=[interrupt], out=str(tmp_path), **{**SMALL, "iterations": 500})

    blas_before = [lib["num_threads"] for lib in threadpool_info()]
    loop = asyncio.new_event_loop()  # run_until_complete leaves SIGINT to Python: KeyboardInterrupt, as in Jupyter
    try:
        run = loop.run_until_complete(notebook_cell())
    finally:
        loop.close()

    assert run.interrupted and 2 <= run.summary["iterations"] < 500
    assert (tmp_path / "checkpoint.npz").exists()                # stopped like SIGINT stops flexgc master
    assert [lib["num_threads"] for lib in threadpool_info()] == blas_before  # the caller's BLAS threads are back


# ------------------------------------------------------------------------------------------------ evaluation


def test_validation_split_of_a_dataset_is_evaluated_and_read_back(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    X = rng.standard_normal((200, 5))
    y = (X @ rng.standard_normal(5) > 0).astype(float)
    np.savez(tmp_path / "data.npz", X=X, y=y)
    options: dict[str, Any] = {**SMALL, "data": str(tmp_path / "data.npz"), "val_fraction": 0.25, "eval_every": 2,
                               "iterations": 5, "out": str(tmp_path / "run")}

    run = train(**options)

    assert [e["iteration"] for e in run.evaluations] == [1, 3, 4]   # every 2 iterations, and after the last
    assert all(e["val_samples"] == 50 and 0.0 <= e["val_accuracy"] <= 1.0 for e in run.evaluations)
    assert run.summary["validation"] == run.evaluations[-1] and run.summary["samples"] == 150
    assert load_run(tmp_path / "run").evaluations == run.evaluations
    # the figures are those of the final parameters on the held-out rows
    from flexgc.master.data import split_validation

    _, _, held = split_validation(X, y, 0.25, seed=0)
    assert held is not None
    z = held[0] @ run.params
    loss = float(np.mean(np.logaddexp(0.0, z) - held[1] * z))
    assert run.evaluations[-1]["val_loss"] == pytest.approx(loss, rel=1e-12)
    assert run.evaluations[-1]["val_accuracy"] == pytest.approx(float(np.mean((z > 0) == held[1])))


# ------------------------------------------------------------------------------------------------ master and workers


def _flexgc(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "flexgc", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_the_real_master_runs_inside_python_with_workers_anywhere(tmp_path: Path) -> None:
    options = {**SMALL, "workers": 2, "code": "crc:s=1", "host": "127.0.0.1", "port": 0, "out": str(tmp_path)}
    workers: list[subprocess.Popen[str]] = []

    def start_workers(port: int) -> None:  # `flexgc worker` processes, as on other machines
        workers.extend(_flexgc("worker", "--master", f"127.0.0.1:{port}", "--worker-id", f"w{i}",
                               "--join-timeout-s", "60") for i in range(2))

    try:
        run = Job(**options).serve(on_port=start_workers)
        codes = [w.wait(60) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
            w.communicate()
    assert codes == [0, 0]                                          # the master told them the job ended
    assert run.params is not None
    assert _relative_error(run.params, centralized_params(Job(**options).config)) <= 1e-12


def test_a_real_worker_runs_inside_python(tmp_path: Path) -> None:
    options = {**SMALL, "workers": 2, "code": "crc:s=1", "out": str(tmp_path)}
    master = _flexgc("master", "--host", "127.0.0.1", "--port", "0",
                     *[f"--{k.replace('_', '-')}={v}" for k, v in options.items()])
    try:
        assert master.stdout is not None
        port = json.loads(master.stdout.readline())["port"]     # {"event": "listening", "port": ...}

        code = Worker(f"127.0.0.1:{port}", worker_id="py", slots=2, join_timeout_s=60).run()

        assert code == 0 and master.wait(60) == 0
    finally:
        if master.poll() is None:
            master.kill()
        master.communicate()
    params = np.load(tmp_path / "params.npy")
    assert _relative_error(params, centralized_params(Job(**options).config)) <= 1e-12


def test_worker_options_are_checked_like_the_command_line() -> None:
    with pytest.raises(ConfigError, match="master='nowhere'; expected HOST:PORT"):
        Worker("nowhere")
    with pytest.raises(ConfigError, match=r"rows_per_chunk .*must be >= 1"):
        Worker(rows_per_chunk=0)
    with pytest.raises(ConfigError, match="worker_options: slot is set by the local cluster"):
        Job(**SMALL).run_local(worker_options={"slot": 1})


# ------------------------------------------------------------------------------------------------ reading a run


def test_load_run_applies_resume_markers_to_records_and_evaluations(tmp_path: Path) -> None:
    lines: list[dict[str, Any]] = [
        {"iteration": 0, "loss": 1.0}, {"iteration": 1, "loss": 0.9}, {"iteration": 2, "loss": 0.8},
        {"event": "eval", "iteration": 2, "val_loss": 0.85}, {"event": "eval", "iteration": 0, "val_loss": 0.95},
        {"event": "resume", "from_iteration": 1}, {"iteration": 1, "loss": 0.7},
        {"event": "eval", "iteration": 1, "val_loss": 0.75}]
    (tmp_path / "run.jsonl").write_text("".join(json.dumps({"schema": "flexgc.run.v1", **r}) + "\n" for r in lines)
                                        + '{"torn')
    (tmp_path / "job.json").write_text(json.dumps({"model": "softmax", "features": 2, "classes": 3}))
    (tmp_path / "summary.json").write_text(json.dumps({"model": "softmax", "features": 2, "classes": 3}))
    np.save(tmp_path / "params.npy", np.arange(6.0))

    run = load_run(tmp_path)

    assert [(r["iteration"], r["loss"]) for r in run.records] == [(0, 1.0), (1, 0.7)]
    assert run.evaluations == [{"iteration": 0, "val_loss": 0.95}, {"iteration": 1, "val_loss": 0.75}]
    assert run.job["model"] == "softmax" and run.params is not None
    assert np.array_equal(run.unflatten()["W"], np.arange(6.0).reshape(2, 3))


def test_load_run_gives_a_jax_models_parameters_back_as_its_equinox_module(tmp_path: Path) -> None:
    eqx = pytest.importorskip("equinox", reason="JAX and Equinox (the optional extra flexgc[jax]) are not installed")
    import jax

    spec = "jax-mlp:hidden=4,dtype=float64"
    (tmp_path / "summary.json").write_text(json.dumps({"model": spec, "features": 5, "classes": 3}))
    d = 5 * 4 + 4 + 4 * 3 + 3
    params = np.random.default_rng(0).standard_normal(d)
    np.save(tmp_path / "params.npy", params)
    X = np.random.default_rng(1).standard_normal((6, 5))

    run = load_run(tmp_path)
    module = run.unflatten()

    assert run.model.d == d
    scores = np.asarray(jax.vmap(module)(X))
    assert isinstance(module, eqx.Module)
    np.testing.assert_allclose(scores, run.model.predict(params, X), rtol=1e-12)  # type: ignore[attr-defined]


def test_load_run_refuses_what_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a flexgc run"):
        load_run(tmp_path)


# ------------------------------------------------------------------------------------------------ one option table


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _cli_options(name: str) -> set[str]:
    skip = {"help", "config", "log_level", "log_format"}
    return {a.dest for a in _subparser(name)._actions if a.option_strings and a.dest not in skip}


def test_the_command_line_and_the_api_have_the_same_options() -> None:
    master = {o.name for o in MASTER_OPTIONS}
    worker = {o.name for o in WORKER_OPTIONS}

    assert _cli_options("master") == master == api_options(Job) == api_options(train)
    assert _cli_options("worker") == worker == api_options(Worker)
    assert _cli_options("demo") - {"no_progress"} <= api_options(train)  # the demo is a local cluster
