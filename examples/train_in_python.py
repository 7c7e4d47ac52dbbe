"""Train from Python, as in a notebook: build a model object, train it with a nested gradient code on a local
cluster, log to TensorBoard, evaluate on a validation split every 5 iterations, and load the parameters back.

    python examples/train_in_python.py [OUT]        # default OUT: runs/train-in-python
    tensorboard --logdir OUT/tensorboard             # to look at it (TensorBoard is not needed to write it)

It needs the extras ``sklearn`` (the digits data) and ``tensorboard`` (tensorboardX, for the event files):
``pip install 'flexgc[sklearn,tensorboard]'``. The model is a plain object defined right here: it has no
import path, so its workers run in this process (threads); docs/api.md says what a model for workers in
other processes needs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import flexgc


class TwoLayerNet:
    """features -> tanh(hidden) -> softmax(classes) in numpy; cross-entropy summed over the rows.

    The interface (docs/models.md): d, init_params(seed), loss_and_grad(params, X, y) -> (summed loss,
    summed gradient); predict and unflatten are optional (validation accuracy, reading the run back)."""

    row_chunks = True          # a sum over rows: a worker may compute a partition in row chunks
    labels = "multiclass"

    def __init__(self, features: int, hidden: int, classes: int) -> None:
        self.shapes = {"W1": (features, hidden), "b1": (hidden,), "W2": (hidden, classes), "b2": (classes,)}
        self.d = sum(int(np.prod(s)) for s in self.shapes.values())

    def unflatten(self, params: np.ndarray) -> dict[str, np.ndarray]:
        """The flat vector as named weight arrays."""
        out, start = {}, 0
        for name, shape in self.shapes.items():
            size = int(np.prod(shape))
            out[name] = params[start:start + size].reshape(shape).copy()
            start += size
        return out

    def init_params(self, seed: int) -> np.ndarray:
        """Glorot-scaled random weights, zero biases."""
        rng = np.random.default_rng(seed)
        parts = [rng.standard_normal(s) * np.sqrt(1.0 / s[0]) if len(s) == 2 else np.zeros(s)
                 for s in self.shapes.values()]
        return np.concatenate([p.ravel() for p in parts])

    def _forward(self, params: np.ndarray, X: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        p = self.unflatten(params)
        h = np.tanh(X @ p["W1"] + p["b1"])
        return p, h, h @ p["W2"] + p["b2"]

    def predict(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Class scores (m, classes)."""
        return self._forward(params, X)[2]

    def loss_and_grad(self, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Summed cross-entropy and its gradient (d,) over the rows X (m, features), y (m,)."""
        p, h, z = self._forward(params, X)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        probs = e / e.sum(axis=1, keepdims=True)
        rows, labels = np.arange(len(y)), y.astype(np.int64)
        loss = float(-np.sum(np.log(probs[rows, labels])))
        dz = probs
        dz[rows, labels] -= 1.0                                    # d loss / d scores
        dh = (dz @ p["W2"].T) * (1.0 - h * h)
        grads = [X.T @ dh, dh.sum(0), h.T @ dz, dz.sum(0)]
        return loss, np.concatenate([g.ravel() for g in grads])


def main(out: Path) -> flexgc.Run:
    model = TwoLayerNet(features=64, hidden=32, classes=10)   # scikit-learn's digits: 8x8 images, 10 classes

    def report(info: flexgc.IterationInfo) -> None:          # a callback: after every iteration's step
        if info.validation is not None:
            print(f"iteration {info.iteration:2d}: loss {info.loss:.4f}, validation accuracy "
                  f"{info.validation['val_accuracy']:.3f}, level {info.level}, stragglers {list(info.stragglers)}")

    run = flexgc.train(
        model, workers=4, code="nested:levels=0,1,2", iterations=30, data="sklearn:digits", lr=0.5, momentum=0.9,
        val_fraction=0.2, eval_every=5,                        # hold out 20% of the rows, evaluate every 5 iterations
        delay="shifted-exp:a=1,mu=2,unit_s=0.005",             # injected straggling, so the code has work to do
        out=str(out / "run"), new_run=True,                    # a new run each time (the old one moved aside)
        callbacks=[report, flexgc.TensorBoard(out / "tensorboard")])

    back = flexgc.load_run(out / "run", model=model)           # the run directory, read back
    weights = back.unflatten()                                 # {"W1": (64, 32), "b1": (32,), ...}
    assert back.params is not None and run.params is not None and np.array_equal(back.params, run.params)
    print(f"{back.summary['exact_iterations']} of {back.summary['iterations']} iterations exact; final loss "
          f"{back.summary['final_loss']:.4f}; validation accuracy {back.evaluations[-1]['val_accuracy']:.3f}; "
          f"W1 {weights['W1'].shape}, W2 {weights['W2'].shape}")
    print(f"run directory: {out / 'run'}; TensorBoard: tensorboard --logdir {out / 'tensorboard'}")
    return run


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/train-in-python"))
