"""Models, optimizers and mini-batches in live jobs (a master and worker processes on loopback).

Each job's parameters after K iterations, with s_max dead workers, equal a centralized training of the
same model on the same data and batches: the decoded gradient is exact, so only rounding differs.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest

from flexgc.common.codes import parse_code
from flexgc.common.config import MasterConfig
from flexgc.common.models import batch_rows, build_model
from flexgc.common.optim import parse_optimizer
from flexgc.harness.local import LocalCluster
from flexgc.master.data import JobData
from tests.helpers import job_config, read_records, run_job, wait_for
from tests.jax_support import require_jax

pytestmark = pytest.mark.slow

DEAD = "/dead:workers=1+3"  # n = 4, nested:levels=0,1,2: s_max = 2 slots never answer


def centralized(cfg: MasterConfig) -> np.ndarray:
    """The same model trained in one process on the union of the iteration's batches: one loss_and_grad
    call over all the rows (one jit for JAX models), the mean gradient, then the optimizer, written out
    here (heavy-ball) or taken from optax itself."""
    data = JobData.from_config(cfg, parse_code(cfg.code, cfg.workers))
    spec = data.spec
    model = build_model(spec)
    parts = [data.partition(j) for j in range(spec.partitions)]
    opt = parse_optimizer(cfg.optimizer, cfg.lr, cfg.momentum)
    w = model.init_params(cfg.init_seed)
    if opt.family == "gd":
        v = np.zeros_like(w)
    else:
        import jax.numpy as jnp
        import optax

        kw = opt.kw
        lr = kw["lr"]
        if kw["schedule"] == "warmup-cosine":
            lr = optax.warmup_cosine_decay_schedule(0.0, kw["lr"], kw["warmup"], kw["steps"], kw["end_lr"])
        tx = optax.adam(lr, b1=kw["b1"], b2=kw["b2"], eps=kw["eps"])
        state = tx.init(jnp.asarray(w))
    for t in range(cfg.iterations):
        rows = [batch_rows(spec, j, t) for j in range(spec.partitions)]
        X = np.concatenate([X if r is None else X[r] for (X, _), r in zip(parts, rows)])
        y = np.concatenate([y if r is None else y[r] for (_, y), r in zip(parts, rows)])
        _, grad = model.loss_and_grad(w, X, y)
        g = np.asarray(grad, dtype=np.float64) / X.shape[0]
        if opt.family == "gd":
            v = opt.kw["momentum"] * v + g
            w = w - opt.kw["lr"] * v
        else:
            updates, state = tx.update(jnp.asarray(g), state, jnp.asarray(w))
            w = np.asarray(optax.apply_updates(jnp.asarray(w), updates))
    return w


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize(("model", "optimizer", "batch", "tol"), [
    ("jax-mlp:hidden=16,dtype=float64", "gd", 40, 1e-9),
    ("jax-mlp:hidden=16", "adam:lr=0.01", 0, 1e-5),
    ("jax-cnn:channels=4,hidden=16,dtype=float64", "adam:lr=0.01,schedule=warmup-cosine,warmup=2,steps=8", 0, 1e-9),
    ("jax-cnn:channels=4,hidden=16", "gd", 40, 1e-5),
])
def test_jax_networks_on_digits_with_smax_dead_workers_equal_centralized_training(
        tmp_path: Path, model: str, optimizer: str, batch: int, tol: float) -> None:
    require_jax()
    dtype = "float64" if "float64" in model else "float32"
    cfg = job_config(tmp_path, model=model, data="sklearn:digits", optimizer=optimizer, lr=0.5, momentum=0.5,
                     batch_size=batch, batch_seed=3, init_seed=2, iterations=4, dtype=dtype,
                     delay="shifted-exp:a=1,mu=2,unit_s=0.01" + DEAD)

    summary, records, params = run_job(cfg, timeout_s=240)

    assert summary["exact_iterations"] == cfg.iterations
    assert all(r["level"] >= 1 and set(r["stragglers"]) == {1, 3} for r in records)  # any-span: level 1 can do
    reference = centralized(cfg)
    assert _rel(params, reference) <= tol
    assert _rel(params, build_model(JobData.from_config(cfg, parse_code(cfg.code, 4)).spec).init_params(2)) > 1e-3


def test_a_user_model_by_import_path_runs_end_to_end(tmp_path: Path) -> None:
    cfg = job_config(tmp_path, model="examples.numpy_model:build,delta=0.3", init_seed=5, iterations=5,
                     batch_size=20, verify=True, delay="shifted-exp:a=1,mu=2,unit_s=0.01/dead:workers=2")

    summary, records, params = run_job(cfg, model_modules="examples")

    assert summary["exact_iterations"] == 5 and summary["model"] == "examples.numpy_model:build,delta=0.3"
    assert all(r["verify_rel_err"] <= 1e-12 for r in records)   # every decoded batch gradient checked directly
    assert _rel(params, centralized(cfg)) <= 1e-9


def test_a_user_jax_module_by_import_path_runs_end_to_end(tmp_path: Path) -> None:
    require_jax()
    cfg = job_config(tmp_path, model="examples.jax_model:build,width=8,dtype=float64", data="sklearn:digits",
                     optimizer="adam:lr=0.01", iterations=3, delay="none" + DEAD)

    summary, _, params = run_job(cfg, model_modules="examples")

    assert summary["exact_iterations"] == 3
    assert _rel(params, centralized(cfg)) <= 1e-9


def test_a_worker_refuses_a_model_module_it_does_not_allow(tmp_path: Path) -> None:
    cfg = job_config(tmp_path, model="examples.numpy_model:build", iterations=2, join_timeout_s=60)
    with LocalCluster(cfg) as cluster:
        cluster.start_master()
        worker = cluster.start_worker(0)          # no --model-modules
        worker.join(60)
        assert worker.exitcode == 2


def test_adam_with_a_schedule_and_batches_resumes_exactly_after_the_master_is_killed(tmp_path: Path) -> None:
    require_jax()
    port = _free_port()
    cfg = job_config(tmp_path, model="softmax", classes=3, optimizer="adam:lr=0.05,schedule=warmup-cosine,"
                     "warmup=3,steps=20,end_lr=0.001", batch_size=20, batch_seed=9, iterations=18,
                     checkpoint_every=3, port=port, delay="shifted-exp:a=1,mu=4,unit_s=0.04")
    out = tmp_path
    with LocalCluster(cfg) as cluster:
        cluster.start_master()
        cluster.start_workers(reconnect_max_s=0.2)
        wait_for(lambda: len(read_records(out)) >= 8, 90, "8 iterations")
        assert cluster.master is not None
        cluster.master.kill()
        cluster.master.join(10)
        with np.load(out / "checkpoint.npz") as ckpt:
            resumed_from = int(ckpt["iteration"])
            count = ckpt["opt_0"]                     # optax's step counter travels with the state
            assert str(ckpt["optimizer"]).startswith("adam:")
        assert resumed_from >= 6 and resumed_from % 3 == 0 and int(count) == resumed_from
        cluster.start_master()                      # same port and run directory; workers reconnect alone
        assert cluster.wait_master(120) == 0
    iterations = [r["iteration"] for r in read_records(out) if "iteration" in r]   # (the log marks the resume)
    assert iterations == list(range(cfg.iterations))
    assert _rel(np.load(out / "params.npy"), centralized(cfg)) <= 1e-9


def test_snapshots_keep_the_parameters_of_every_kth_iteration(tmp_path: Path) -> None:
    cfg = job_config(tmp_path, iterations=4, snapshot_every=2)

    _, _, params = run_job(cfg)

    snaps = sorted(p.name for p in (tmp_path / "snapshots").iterdir())
    assert snaps == ["params-000002.npy", "params-000004.npy"]
    assert np.array_equal(np.load(tmp_path / "snapshots" / "params-000004.npy"), params)
    assert json.loads((tmp_path / "summary.json").read_text())["exact_iterations"] == 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

