"""The validation split (--val-fraction, master/data.py) and its figures (master/evaluation.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flexgc.common.codes import parse_code
from flexgc.common.config import master_config
from flexgc.common.errors import ConfigError
from flexgc.common.models import DataSpec, Logistic, synthetic_partition, synthetic_validation
from flexgc.master.data import JobData, split_validation
from flexgc.master.evaluation import Validation


def _rows(m: int) -> tuple[np.ndarray, np.ndarray]:
    X = np.column_stack([np.arange(m, dtype=float), np.ones(m)])  # column 0: the row's index
    return X, (np.arange(m) % 2).astype(float)


def test_split_is_seeded_disjoint_and_keeps_the_training_order() -> None:
    X, y = _rows(50)

    X_train, y_train, held = split_validation(X, y, 0.2, seed=3)
    again = split_validation(X, y, 0.2, seed=3)
    other = split_validation(X, y, 0.2, seed=4)

    assert held is not None and again[2] is not None and other[2] is not None
    train_rows, val_rows = X_train[:, 0].astype(int), held[0][:, 0].astype(int)
    assert len(val_rows) == 10 and len(train_rows) == 40
    assert set(train_rows) | set(val_rows) == set(range(50)) and not set(train_rows) & set(val_rows)
    assert np.all(np.diff(train_rows) > 0)                     # the training rows stay in the dataset's order
    assert np.array_equal(y_train, y[train_rows]) and np.array_equal(held[1], y[val_rows])
    assert np.array_equal(again[2][0], held[0])                 # the same seed: the same split
    assert not np.array_equal(other[2][0], held[0])


def test_no_split_leaves_the_dataset_as_it_is() -> None:
    X, y = _rows(7)

    X_train, y_train, held = split_validation(X, y, 0.0, seed=0)

    assert X_train is X and y_train is y and held is None


def test_a_split_must_leave_rows_to_train_on() -> None:
    X, y = _rows(3)

    with pytest.raises(ConfigError, match=r"val_fraction=0\.9: holds out 3 of the 3 rows"):
        split_validation(X, y, 0.9, seed=0)


def test_synthetic_validation_rows_are_new_rows_and_training_is_unchanged() -> None:
    spec = DataSpec(model="logistic", samples=100, features=4, partitions=2, seed=5)

    X_val, y_val = synthetic_validation(spec, 20)

    assert X_val.shape == (20, 4) and set(np.unique(y_val)) <= {0.0, 1.0}
    for j in range(2):
        X_part, _ = synthetic_partition(spec, j)
        assert not np.isin(X_val[:, 0], X_part[:, 0]).any()
    assert np.array_equal(synthetic_validation(spec, 20)[0], X_val)


def test_job_data_of_a_file_trains_on_the_rest_and_fingerprints_it(tmp_path: Path) -> None:
    X = np.random.default_rng(1).standard_normal((40, 3))
    y = (X[:, 0] > 0).astype(float)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    code = parse_code("uncoded", 2)

    full = JobData.from_config(master_config(data=str(tmp_path / "d.npz"), workers=2, code="uncoded"), code)
    split = JobData.from_config(master_config(data=str(tmp_path / "d.npz"), workers=2, code="uncoded",
                                              val_fraction=0.25), code)

    assert full.validation is None and full.spec.samples == 40
    assert split.validation is not None and split.validation[0].shape == (10, 3) and split.spec.samples == 30
    assert split.fingerprint != full.fingerprint               # another training set: another job identity
    served = np.concatenate([split.partition(j)[0] for j in range(2)])
    assert not (served[:, None, :] == split.validation[0][None, :, :]).all(axis=2).any()


def test_figures_are_the_mean_loss_and_the_accuracy() -> None:
    spec = DataSpec(model="logistic", samples=10, features=2)
    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    y = np.array([1.0, 0.0, 1.0, 1.0])
    params = np.array([2.0, -1.0])

    figures = Validation(spec, (X, y)).evaluate(params)

    loss, _ = Logistic(2).loss_and_grad(params, X, y)
    assert figures["val_loss"] == pytest.approx(loss / 4, rel=1e-12)
    assert figures["val_accuracy"] == 0.75                      # the last row scores 1 / (1 + e^2) < 0.5
    assert figures["val_samples"] == 4 and figures["eval_ms"] >= 0


def test_a_regression_has_no_accuracy() -> None:
    spec = DataSpec(model="least-squares", samples=10, features=1)

    figures = Validation(spec, (np.array([[1.0], [2.0]]), np.array([1.0, 1.0]))).evaluate(np.array([1.0]))

    assert "val_accuracy" not in figures and figures["val_loss"] == pytest.approx(0.25)


@pytest.mark.parametrize(("options", "message"), [
    ({"eval_every": 5}, "eval_every=5 needs a validation split: set val_fraction"),
    ({"val_fraction": 1.0}, r"val_fraction=1.0; must be in \[0, 1\)"),
    ({"val_fraction": -0.1}, "val_fraction .*must be >= 0"),
])
def test_bad_evaluation_options_are_refused_naming_the_field(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        master_config(**options)
