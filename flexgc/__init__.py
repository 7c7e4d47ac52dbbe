"""flexgc: straggler-tolerant distributed gradient descent with nested gradient codes.

The Python API (docs/api.md): `flexgc.train`, `flexgc.Job`, `flexgc.Worker`, `flexgc.load_run`, the
`Run` they return, callbacks (`flexgc.Callback`, `flexgc.IterationInfo`, `flexgc.CallbackError`) and
`flexgc.TensorBoard`. They load on first use, so ``import flexgc`` stays light (the command line starts
with it).

The source folders `common/`, `master/` and `worker/` are the subpackages `flexgc.common`,
`flexgc.master` and `flexgc.worker`: `flexgc/common` etc. are committed relative symlinks to them, so
Python, mypy and editors resolve the one import path from a checkout as from an installed wheel.
`flexgc.v1` is generated from `proto/` at build time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from flexgc.api import Callback, CallbackError, Job, Run, Worker, load_run, train, unflatten
    from flexgc.master.hooks import IterationInfo
    from flexgc.tensorboard import TensorBoard

_API = {"Callback": "flexgc.api", "CallbackError": "flexgc.api", "Job": "flexgc.api", "Run": "flexgc.api",
        "Worker": "flexgc.api", "load_run": "flexgc.api", "train": "flexgc.api", "unflatten": "flexgc.api",
        "IterationInfo": "flexgc.master.hooks", "TensorBoard": "flexgc.tensorboard"}
__all__ = ["Callback", "CallbackError", "IterationInfo", "Job", "Run", "TensorBoard", "Worker", "__version__",
           "load_run", "train", "unflatten"]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'flexgc' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
