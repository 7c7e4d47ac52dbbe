"""The examples a user starts from: the notebook-style script (examples/train_in_python.py, run as a user runs
it) and the PyTorch model (examples/torch_model.py, where PyTorch is installed: it is not a dependency)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flexgc.api import train
from flexgc.common.codes import parse_code
from flexgc.common.models import DataSpec, synthetic_partition

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def test_train_in_python_trains_logs_evaluates_and_loads_back(tmp_path: Path) -> None:
    pytest.importorskip("sklearn", reason="scikit-learn (the optional extra flexgc[sklearn]) is not installed")
    pytest.importorskip("tensorboardX", reason="tensorboardX (the optional extra flexgc[tensorboard]) is not installed")
    from flexgc.tensorboard import read_scalars

    done = subprocess.run([sys.executable, str(ROOT / "examples" / "train_in_python.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=240, cwd=tmp_path)

    assert done.returncode == 0, done.stderr[-3000:]
    assert "30 of 30 iterations exact" in done.stdout and "W1 (64, 32), W2 (32, 10)" in done.stdout
    assert done.stdout.count("validation accuracy") == 7            # every 5 iterations, and the closing line
    scalars = read_scalars(tmp_path / "tensorboard")
    assert [step for step, _ in scalars["validation/accuracy"]] == [4, 9, 14, 19, 24, 29]
    assert scalars["validation/accuracy"][-1][1] > 0.8              # it learned the digits
    assert len(scalars["train/loss"]) == 30 and (tmp_path / "run" / "params.npy").exists()


def test_the_pytorch_model_trains_exactly_and_comes_back_as_a_module(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="PyTorch is not a dependency of flexgc (its wheel is gigabytes); "
                                                "pip install torch to run this test")
    from examples.torch_model import build

    model = build(features=6, classes=3, hidden=5, dtype="float64")
    options: dict[str, Any] = dict(workers=4, code="nested:levels=0,1,2", iterations=4, samples=240, features=6,
                                   classes=3, lr=0.5, join_timeout_s=1.0, out=str(tmp_path))
    # the gradient is the derivative of the summed loss (central differences, float64)
    X, y = np.random.default_rng(0).standard_normal((9, 6)), np.arange(9) % 3.0
    w = model.init_params(1)
    _, g = model.loss_and_grad(w, X, y)
    steps = 1e-6 * np.eye(model.d)
    fd = [(model.loss_and_grad(w + e, X, y)[0] - model.loss_and_grad(w - e, X, y)[0]) / 2e-6 for e in steps]
    assert np.allclose(fd, g, rtol=1e-6, atol=1e-8)

    run = train(model, dead=(0, 1), **options)                      # s_max = 2 workers never start

    k = parse_code("nested:levels=0,1,2", 4).k
    spec = DataSpec(model="softmax", samples=240, features=6, classes=3, partitions=k)  # the same rows and labels
    parts = [synthetic_partition(spec, j) for j in range(k)]
    reference = model.init_params(0)
    for _ in range(4):
        reference = reference - 0.5 * sum(model.loss_and_grad(reference, *p)[1] for p in parts) / 240
    assert run.params is not None and run.summary["exact_iterations"] == 4
    assert np.linalg.norm(run.params - reference) <= 1e-12 * np.linalg.norm(reference)
    module = run.unflatten()
    assert isinstance(module, torch.nn.Module)
    scores = module(torch.as_tensor(X)).detach().numpy()
    assert np.allclose(scores, model.predict(run.params, X), rtol=1e-12)
