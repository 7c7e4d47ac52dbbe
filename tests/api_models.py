"""Model objects bound at module level, so that workers in other processes can import them by the path the
Python API derives (`tests.api_models:HUBER`): tests/test_api.py."""

from __future__ import annotations

from examples import numpy_model

HUBER = numpy_model.build(features=6, classes=1, delta=0.5)
