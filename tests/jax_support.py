"""The JAX extra in tests: skipped where it is not installed, required where CI installed it."""

from __future__ import annotations

import os

import pytest


def require_jax() -> None:
    """Skip the calling test module without jax, equinox and optax, except under CI (CI=true), whose
    dev extra installs them: there a missing package fails instead of hiding behind a skip."""
    names = ("jax", "equinox", "optax")
    if os.environ.get("CI"):
        for name in names:
            __import__(name)
        return
    for name in names:
        pytest.importorskip(name, reason=f"{name} (the extra flexgc[jax]) is not installed")
