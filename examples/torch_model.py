"""A PyTorch model behind flexgc's model interface: an MLP classifier (``torch.nn.Sequential``).

PyTorch is not a dependency of flexgc (its wheel brings gigabytes of CUDA libraries): install it yourself
(``pip install torch``, or the CPU wheel from PyTorch's own index) on the master and on every worker.

    flexgc master --model examples.torch_model:build,hidden=32 --data sklearn:digits --optimizer adam:lr=3e-3 ...
    flexgc worker --model-modules examples ...

or from Python, as an object (``flexgc.train(examples.torch_model.build(features=64, classes=10), ...)``).

flexgc needs a flat float64 parameter vector and, per partition, the *summed* loss and its gradient with
respect to that vector (docs/models.md). Here:

- the vector is ``torch.nn.utils.parameters_to_vector`` of the module's parameters (their order in
  ``module.parameters()``), and `unflatten` puts a vector back with ``vector_to_parameters``;
- ``loss_and_grad`` views the vector as the module's tensors and runs the module with
  ``torch.func.functional_call`` on a copy of the module per thread (functional_call swaps a module's
  tensors while it runs), so one object can serve several worker threads at once (an in-process cluster)
  and the master's evaluation beside them;
- the loss is ``cross_entropy(..., reduction="sum")``: a sum over rows, so partitions add up exactly and
  the worker may split a partition into row chunks.
"""

from __future__ import annotations

import copy
import threading

import numpy as np
import torch
from torch.func import functional_call
from torch.nn.utils import parameters_to_vector, vector_to_parameters


class TorchMLP:
    """features -> hidden (ReLU) -> classes, cross-entropy on integer labels; d = the module's parameter count."""

    row_chunks = True     # a sum over rows: the worker may compute a partition in row chunks
    labels = "multiclass"

    def __init__(self, features: int, classes: int, hidden: int = 32, dtype: str = "float32") -> None:
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype={dtype!r}; allowed: float32, float64")
        self.features, self.classes, self.hidden = features, classes, hidden
        self.dtype = getattr(torch, dtype)
        self.module = self._make(seed=0)  # the structure (and shapes) every vector is laid out by
        self._shapes = [(name, p.shape, p.numel()) for name, p in self.module.named_parameters()]
        self.d = int(sum(n for _, _, n in self._shapes))
        self._per_thread = threading.local()

    def _make(self, seed: int) -> torch.nn.Module:
        with torch.random.fork_rng():  # PyTorch's initializers draw from the global generator: leave it as it was
            torch.manual_seed(seed)
            return torch.nn.Sequential(torch.nn.Linear(self.features, self.hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(self.hidden, self.classes)).to(self.dtype)

    def init_params(self, seed: int) -> np.ndarray:
        """PyTorch's default initialization from `seed`, flattened: (d,) float64."""
        with torch.no_grad():
            return parameters_to_vector(self._make(seed).parameters()).to(torch.float64).numpy()

    def _tensors(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """The flat vector as the module's named tensors (views, in parameters_to_vector's order)."""
        out, start = {}, 0
        for name, shape, n in self._shapes:
            out[name] = w[start:start + n].view(shape)
            start += n
        return out

    def _scores(self, w: torch.Tensor, X: np.ndarray) -> torch.Tensor:
        module = getattr(self._per_thread, "module", None)
        if module is None:  # this thread's own copy: functional_call swaps its tensors in and out while it runs
            module = self._per_thread.module = copy.deepcopy(self.module)
        return functional_call(module, self._tensors(w), (torch.as_tensor(X, dtype=self.dtype),))

    def loss_and_grad(self, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Summed cross-entropy over the rows X (m, features), y (m,), and its gradient (d,) float64."""
        w = torch.as_tensor(params, dtype=self.dtype).requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(self._scores(w, X), torch.as_tensor(y, dtype=torch.int64),
                                                 reduction="sum")
        (grad,) = torch.autograd.grad(loss, w)
        return float(loss.detach()), grad.to(torch.float64).numpy()

    def predict(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Class scores (m, classes): the validation split's accuracy uses them."""
        with torch.no_grad():
            return self._scores(torch.as_tensor(params, dtype=self.dtype), X).to(torch.float64).numpy()

    def unflatten(self, params: np.ndarray) -> torch.nn.Module:
        """A new module holding these parameters (what `flexgc.load_run(DIR).unflatten()` gives back)."""
        module = self._make(seed=0)
        with torch.no_grad():
            vector_to_parameters(torch.as_tensor(params, dtype=self.dtype), module.parameters())
        return module


def build(features: int, classes: int, hidden: int = 32, dtype: str = "float32") -> TorchMLP:
    """The factory named on the command line: ``examples.torch_model:build[,hidden=...,dtype=...]``."""
    return TorchMLP(features, classes, int(hidden), str(dtype))


build.labels = "multiclass"  # type: ignore[attr-defined]
