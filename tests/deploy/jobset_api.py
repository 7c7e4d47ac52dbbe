"""A JobSet (jobset.x-k8s.io/v1alpha2) checked against the JobSet API's own types, offline.

No Kubernetes runs here, and kubernetes-validate knows only the built-in kinds. The JobSet API's OpenAPI
definitions come from a package: kubeflow-trainer-api (PyPI, Apache-2.0, The Kubeflow Authors) ships them,
generated from JobSet's OpenAPI spec (Kubeflow Trainer v2 embeds JobSet), as pydantic models named
`JobsetV1alpha2*`, together with the Kubernetes types a JobSet embeds (`IoK8s*`: the Job template, the pod
spec). `jobset_errors` walks a JobSet document along those models, strictly, as `kubectl apply` with field
validation would: an unknown field anywhere (`sucessPolicy`, a misspelt probe field in a pod template), a
missing required field, or a value of the wrong JSON type is an error naming its path.

The generated models carry no enumerations, which the JobSet CRD's schema declares; `ENUMS` adds the ones of
the fields a flexgc JobSet sets (values from the JobSet v1alpha2 API reference). The Job templates inside are
also checked by kubernetes-validate --strict against a Kubernetes schema, by the test that calls this.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from typing import Any

ENUMS: dict[tuple[str, ...], frozenset[str]] = {
    ("spec", "successPolicy", "operator"): frozenset({"All", "Any"}),
    ("spec", "failurePolicy", "restartStrategy"): frozenset({"Recreate", "BlockingRecreate", "InPlaceRestart"}),
    ("spec", "failurePolicy", "rules", "*", "action"): frozenset(
        {"FailJobSet", "RestartJobSet", "RestartJobSetAndIgnoreMaxRestarts", "RestartJob",
         "RestartJobAndIgnoreMaxRestarts"}),
    ("spec", "startupPolicy", "startupPolicyOrder"): frozenset({"AnyOrder", "InOrder"}),
}
# the CRD's pattern for a failure policy rule's name
RULE_NAME = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")


def jobset_model() -> Any:
    """The JobSet model class; pytest.fail with the package to install when it is missing."""
    try:
        from kubeflow_trainer_api.models.jobset_v1alpha2_job_set import JobsetV1alpha2JobSet
    except ImportError:
        import pytest

        pytest.fail("the JobSet API types come with the PyPI package kubeflow-trainer-api, a dev dependency "
                    "(pip install -e '.[dev]')")
    return JobsetV1alpha2JobSet


def jobset_errors(doc: dict[str, Any]) -> list[str]:
    """Every way `doc` (one JobSet object) departs from the JobSet v1alpha2 API: [] when it conforms."""
    errors = list(_walk(doc, jobset_model(), ()))
    if doc.get("apiVersion") != "jobset.x-k8s.io/v1alpha2" or doc.get("kind") != "JobSet":
        errors.append(f"apiVersion/kind: {doc.get('apiVersion')}/{doc.get('kind')}; expected "
                      "jobset.x-k8s.io/v1alpha2/JobSet")
    errors += _enum_errors(doc, ())
    for i, rule in enumerate(((doc.get("spec") or {}).get("failurePolicy") or {}).get("rules") or []):
        if isinstance(rule, dict) and not RULE_NAME.match(str(rule.get("name", ""))):
            errors.append(f"spec.failurePolicy.rules.{i}.name: {rule.get('name')!r} does not match {RULE_NAME.pattern}")
    return errors


def _where(path: tuple[str, ...]) -> str:
    return ".".join(path) or "(root)"


def _enum_errors(value: Any, path: tuple[str, ...]) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _enum_errors(item, (*path, str(key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _enum_errors(item, (*path, str(i)))
    else:
        for pattern, allowed in ENUMS.items():
            if len(pattern) == len(path) and all(p in ("*", q) for p, q in zip(pattern, path, strict=True)) \
                    and value not in allowed:
                yield f"{_where(path)}: {value!r}; allowed: {', '.join(sorted(allowed))}"


def _is_model(annotation: Any) -> bool:
    from pydantic import BaseModel

    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _walk(value: Any, annotation: Any, path: tuple[str, ...]) -> Iterator[str]:
    """Errors of `value` against a type annotation of the generated models."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:  # StrictStr, StrictInt, Field constraints: the base type decides
        yield from _walk(value, typing.get_args(annotation)[0], path)
    elif origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return
        found = [list(_walk(value, option, path)) for option in options]
        if all(found):
            yield from min(found, key=len)
    elif origin is list:
        if not isinstance(value, list):
            yield f"{_where(path)}: expected a list, got {type(value).__name__}"
            return
        for i, item in enumerate(value):
            yield from _walk(item, typing.get_args(annotation)[0], (*path, str(i)))
    elif origin is dict:
        if not isinstance(value, dict):
            yield f"{_where(path)}: expected a mapping, got {type(value).__name__}"
            return
        for key, item in value.items():
            yield from _walk(item, typing.get_args(annotation)[1], (*path, str(key)))
    elif annotation is Any:
        return
    elif _is_model(annotation):
        yield from _walk_model(value, annotation, path)
    else:
        yield from _scalar(value, annotation, path)


def _walk_model(value: Any, model: Any, path: tuple[str, ...]) -> Iterator[str]:
    fields = model.model_fields
    if "actual_instance" in fields:  # a oneOf wrapper (Quantity, IntOrString): a number or a string
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            yield f"{_where(path)}: expected a number or a string, got {type(value).__name__}"
        return
    if not isinstance(value, dict):
        yield f"{_where(path)}: expected an object ({model.__name__}), got {type(value).__name__}"
        return
    by_key = {(info.alias or name): info for name, info in fields.items()}
    for key in value:
        if key not in by_key:
            yield (f"{_where((*path, str(key)))}: unknown field {key!r} of {model.__name__}; allowed: "
                   f"{', '.join(sorted(by_key))}")
    for key, info in by_key.items():
        if key in value:
            yield from _walk(value[key], info.annotation, (*path, key))
        elif info.is_required():
            yield f"{_where((*path, key))}: required field missing"


def _scalar(value: Any, annotation: Any, path: tuple[str, ...]) -> Iterator[str]:
    checks: dict[Any, tuple[type, ...]] = {str: (str,), int: (int,), float: (int, float), bool: (bool,)}
    accepted = checks.get(annotation)
    if accepted is None:
        return  # a type the generated models do not use for JobSet fields
    if (annotation is not bool and isinstance(value, bool)) or not isinstance(value, accepted):
        yield f"{_where(path)}: expected {annotation.__name__}, got {type(value).__name__} {value!r}"
