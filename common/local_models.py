"""Model objects handed to the Python API for a job whose master and workers all run in this process, by
name: the model spec ``flexgc.common.local_models:NAME`` imports this module and reads NAME from it, like
any ``MODULE:NAME`` model (`flexgc.common.models`). Another process has none of them, so a remote
worker given such a spec says the module has no such name; a model for workers elsewhere needs an
import path of its own (docs/api.md)."""

from __future__ import annotations

import re
import threading
from typing import Any

_lock = threading.Lock()
_objects: dict[str, Any] = {}


def register(obj: Any) -> str:
    """The spec under which `obj` is found from now on: its class's name, with a suffix when another object
    holds that name (the same object registered twice gets the same name)."""
    base = re.sub(r"\W", "_", type(obj).__name__) or "model"
    with _lock:
        for name, held in _objects.items():
            if held is obj:
                return f"{__name__}:{name}"
        name, i = base, 1
        while name in _objects:
            i += 1
            name = f"{base}_{i}"
        _objects[name] = obj
    return f"{__name__}:{name}"


def unregister(spec: str) -> None:
    """Forget the object of `spec` (a spec from `register`)."""
    with _lock:
        _objects.pop(spec.rpartition(":")[2], None)


def __getattr__(name: str) -> Any:
    try:
        return _objects[name]
    except KeyError:
        raise AttributeError(f"no model object {name!r} was handed to flexgc in this process") from None
