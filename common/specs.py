"""The `family:key=value,...` spec grammar shared by codes (`--code`) and delays (`--delay`).

A value may itself contain commas (``nested:levels=0,1,2,3``): a token without ``=`` continues the
value of the key before it. Several delay specs are joined with ``/``.
"""

from __future__ import annotations

from dataclasses import dataclass

from flexgc.common.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Spec:
    """A parsed FAMILY:key=value,... spec; `text` is what the user wrote."""

    family: str
    params: dict[str, str]
    text: str


def parse_spec(text: str, field: str) -> Spec:
    """Split ``family:k=v,k=v`` into family and params; `field` names the option in errors."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{field}={text!r}: empty spec; expected FAMILY[:key=value,...]")
    text = text.strip()
    family, _, rest = text.partition(":")
    family = family.strip().lower()
    params: dict[str, str] = {}
    last: str | None = None
    for token in (t.strip() for t in rest.split(",")) if rest else ():
        if not token:
            raise ConfigError(f"{field}={text!r}: empty item between commas")
        if "=" in token:
            key, _, value = token.partition("=")
            key = key.strip().lower()
            if not key or key in params:
                raise ConfigError(f"{field}={text!r}: {'empty' if not key else 'repeated'} key {key!r}")
            params[key] = value.strip()
            last = key
        elif last is not None:
            params[last] += "," + token
        else:
            raise ConfigError(f"{field}={text!r}: {token!r} is not key=value")
    return Spec(family, params, text)


def as_int(spec: Spec, key: str, field: str, *, minimum: int | None = None) -> int:
    """Integer value of `key`, or ConfigError naming the field and the spec."""
    raw = spec.params[key]
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{field}: {key}={raw!r} is not an integer (in {spec.text!r})") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{field}: {key}={value} must be >= {minimum} (in {spec.text!r})")
    return value


def as_float(spec: Spec, key: str, field: str, *, minimum: float | None = None,
             maximum: float | None = None, strict_min: bool = False) -> float:
    """Finite float value of `key` within the bounds, or ConfigError naming the field and the spec."""
    raw = spec.params[key]
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{field}: {key}={raw!r} is not a number (in {spec.text!r})") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{field}: {key}={raw!r} must be finite (in {spec.text!r})")
    if minimum is not None and (value < minimum or (strict_min and value == minimum)):
        rel = ">" if strict_min else ">="
        raise ConfigError(f"{field}: {key}={value} must be {rel} {minimum} (in {spec.text!r})")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{field}: {key}={value} must be <= {maximum} (in {spec.text!r})")
    return value


def as_int_list(spec: Spec, key: str, field: str, sep: str = ",") -> tuple[int, ...]:
    """Integers of `key` separated by ',' or '+', or ConfigError naming the field and the spec."""
    raw = spec.params[key]
    try:
        return tuple(int(x) for x in raw.replace("+", ",").split(",") if x.strip() != "")
    except ValueError:
        raise ConfigError(f"{field}: {key}={raw!r} must be integers separated by ',' or '+' "
                          f"(in {spec.text!r})") from None


def reject_unknown(spec: Spec, allowed: set[str], field: str) -> None:
    """ConfigError naming the keys of `spec` that its family does not take."""
    unknown = sorted(set(spec.params) - allowed)
    if unknown:
        raise ConfigError(f"{field}={spec.text!r}: unknown option {', '.join(unknown)}; "
                          f"allowed for {spec.family!r}: {', '.join(sorted(allowed)) or '(none)'}")
