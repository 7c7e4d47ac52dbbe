"""Evaluation on the validation split (--val-fraction, --eval-every): the master holds the held-out rows
(`JobData.validation`, never sent to a worker) and computes the model's mean loss on them and, for a
model that classifies and has ``predict``, its accuracy."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from flexgc.common.models import DataSpec, accuracy, build_model, label_kind, partial_gradient

Partition = tuple[np.ndarray, np.ndarray]


class Validation:
    """The validation rows of a job and the figures of parameters on them."""

    def __init__(self, spec: DataSpec, rows: Partition) -> None:
        self.X, self.y = rows
        self.model = build_model(spec)
        self.classifies = label_kind(spec.model) != "real" and hasattr(self.model, "predict")

    @property
    def samples(self) -> int:
        """Rows held out."""
        return int(self.X.shape[0])

    def evaluate(self, params: np.ndarray) -> dict[str, Any]:
        """val_loss (mean over the rows), val_accuracy (a classifier; else absent), val_samples, eval_ms."""
        started = time.perf_counter()
        sums = np.empty(self.model.d + 1)
        partial_gradient(self.model, params, self.X, self.y, sums)
        out: dict[str, Any] = {"val_loss": float(sums[-1]) / self.samples}
        if self.classifies:
            out["val_accuracy"] = accuracy(self.model, params, self.X, self.y)
        out["val_samples"] = self.samples
        out["eval_ms"] = round((time.perf_counter() - started) * 1e3, 3)
        return out
