"""Domain errors shared by master, worker and CLI."""


class FlexgcError(Exception):
    """Base class of every error flexgc raises on purpose."""


class ConfigError(FlexgcError, ValueError):
    """A configuration value is invalid; the message names the field, the value and what is allowed."""


class ModelOutputError(FlexgcError):
    """A model's loss_and_grad returned something else than (scalar loss, gradient of shape (d,))."""


class CodeConstructionError(ConfigError):
    """No code with the requested parameters meets the numerical-quality bound."""


class WireError(FlexgcError):
    """A message from the network is malformed (shape, dtype, NaN/Inf, chunk sequence, ...)."""


class UnknownSlotError(FlexgcError):
    """A message names a worker slot that does not exist or is not held by the sender."""


class StaleIterationError(FlexgcError):
    """A message belongs to an iteration other than the current one."""


class DuplicateResultError(FlexgcError):
    """A coded message was already received for this (iteration, slot, level)."""


class InvalidTransitionError(FlexgcError):
    """A lifecycle state machine was asked for a move its table does not allow."""


class AuthError(FlexgcError):
    """A join token is missing or wrong."""


class JobFinishedError(FlexgcError):
    """The job is over (a lingering master answers joins with this)."""


class SlotsFullError(FlexgcError):
    """No slot can be granted now: every one is held by a live worker, reserved for a disconnected one, or
    granted moments ago to a worker about to connect."""


class AlreadyConnectedError(FlexgcError):
    """Another live process already holds this worker id's slot (two workers share one --worker-id)."""


class RateLimitedError(FlexgcError):
    """A peer sent more requests than the master accepts per second."""


class StorageError(FlexgcError):
    """A file of the run directory could not be written (the message names the path and the errno)."""

    def __init__(self, path: object, exc: OSError) -> None:
        import errno

        name = errno.errorcode.get(exc.errno or 0, "EIO")
        hint = "; the disk is full" if exc.errno == errno.ENOSPC else ""
        super().__init__(f"cannot write {path}: [{name}] {exc.strerror or exc}{hint}")
        self.path = path
        self.errno = exc.errno


class TrainingFailedError(FlexgcError):
    """The job cannot go on: too few workers joined, or more than s_max of them cannot compute the model
    (the message says which and why); the master ends the job and exits 1."""


class TrainingDivergedError(TrainingFailedError):
    """The loss or the parameters became NaN/Inf ("training diverged at iteration N (loss=...)")."""
