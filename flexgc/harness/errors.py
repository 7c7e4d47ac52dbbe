"""Errors of the harnesses, in flexgc's `FlexgcError` tree (the CLI maps them to messages and exit codes)."""

from __future__ import annotations

from flexgc.common.errors import FlexgcError


class HarnessError(FlexgcError):
    """A harness step failed; the message names the command and what it said."""


class HarnessUnavailableError(HarnessError):
    """This machine cannot run the harness (not Linux, not root, no iproute2, namespaces refused)."""


class NetemUnavailableError(HarnessError):
    """The kernel has no sch_netem: tc cannot add delay, jitter or loss (a tbf rate limit still works)."""


class ComposeError(HarnessError):
    """A compose file cannot be used, or no Compose binary resolves it; names the file, service or key."""


# `flexgc netns` exit codes, as deploy/tc/apply.sh: 3 = no sch_netem, 4 = cannot run here; 1 = anything else
EXIT_CODES: dict[type[HarnessError], int] = {NetemUnavailableError: 3, HarnessUnavailableError: 4}


def exit_code(exc: HarnessError) -> int:
    return next((code for kind, code in EXIT_CODES.items() if isinstance(exc, kind)), 1)
