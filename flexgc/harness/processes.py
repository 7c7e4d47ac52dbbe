"""The one supervision path for the child processes of every harness: the demo, `LocalCluster` and
`NetnsCluster` start their processes as `Child`ren and stop them all through `stop_all`.

Two kinds of child: a `SpawnedChild` is a `multiprocessing` process started with the `spawn` method
(gRPC does not survive fork); a `PopenChild` is a command started in its own session, signalled as a
process group (so `ip netns exec` and what it runs get the signal together).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

_log = logging.getLogger(__name__)
SPAWN = mp.get_context("spawn")


class Child(Protocol):
    """A started process as `stop_all` sees it."""

    name: str

    @property
    def pid(self) -> int | None: ...

    def returncode(self) -> int | None:
        """The exit code, or None while it runs."""
        ...

    def send(self, sig: int) -> None:
        """Deliver a signal (a no-op once it has exited)."""
        ...

    def wait(self, timeout_s: float) -> int | None:
        """Wait up to timeout_s for it to exit; its exit code, or None if it still runs."""
        ...


class SpawnedChild:
    """A `multiprocessing` process (spawn method) running `target(*args)`."""

    def __init__(self, target: Callable[..., Any], args: Sequence[Any], name: str) -> None:
        self.name = name
        ignore = threading.current_thread() is threading.main_thread()
        self.process = SPAWN.Process(target=_child_main, args=(target, tuple(args), ignore), name=name)
        try:
            with _signals_held():
                self.process.start()
        except BaseException:  # a signal held back during the start, delivered at its end: nobody else knows
            if self.process.pid is not None:  # of this child yet, so it is stopped here
                stop_all([self])
            raise

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def returncode(self) -> int | None:
        return self.process.exitcode

    def send(self, sig: int) -> None:
        if self.process.pid is not None and self.process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, sig)

    def wait(self, timeout_s: float) -> int | None:
        self.process.join(max(0.0, timeout_s))
        return self.process.exitcode


class PopenChild:
    """A command started in its own session; signals go to its whole process group."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes]) -> None:
        self.name = name
        self.popen = popen

    @property
    def pid(self) -> int | None:
        return self.popen.pid

    def returncode(self) -> int | None:
        return self.popen.poll()

    def send(self, sig: int) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)

    def wait(self, timeout_s: float) -> int | None:
        try:
            return self.popen.wait(max(0.0, timeout_s))
        except subprocess.TimeoutExpired:
            return None


def _wait_all(children: Sequence[Child], deadline: float) -> list[Child]:
    """Wait until every child has exited or the deadline passes; the ones still running."""
    for child in children:
        child.wait(deadline - time.monotonic())
    return [c for c in children if c.returncode() is None]


def stop_all(children: Sequence[Child], grace_s: float = 5.0, exit_wait_s: float = 0.0) -> dict[str, int | None]:
    """Stop every child and return their exit codes by name.

    First give them exit_wait_s to exit by themselves (a master that ended its job tells its workers to
    stop), then SIGCONT (a stopped process cannot handle SIGTERM) and SIGTERM to those still running, up
    to grace_s for all of them together, then SIGKILL. Safe to call again.
    """
    running = _wait_all(children, time.monotonic() + exit_wait_s) if exit_wait_s > 0 else [
        c for c in children if c.returncode() is None]
    for child in running:
        child.send(signal.SIGCONT)
        child.send(signal.SIGTERM)
    for child in _wait_all(running, time.monotonic() + grace_s):
        _log.warning("killing name=%s pid=%s (still running %.1f s after SIGTERM)", child.name, child.pid, grace_s)
        child.send(signal.SIGKILL)
        child.wait(5.0)
    return {c.name: c.returncode() for c in children}


# Held back while a child starts: Ctrl-C, and the signals `sigterm_as_interrupt` turns into KeyboardInterrupt.
_HELD = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP back while a child is started (in the main thread), then deliver them.

    Ctrl-C reaches every process of the terminal's group, and a child must not die mid-shutdown on it with a
    traceback; the parent, which gets it too, stops its children with SIGTERM. So a child starts with these
    signals blocked (the mask is inherited across exec, so a signal during its start-up waits) and `_child_main`
    ignores SIGINT before it unblocks them. In the parent, a signal that another thread catches still runs its
    Python handler in the main thread, so the handlers are swapped for one that only notes the signal. When the
    child has started, the parent's handlers are back, the mask too, and every noted or pending signal is
    delivered to them. (An ignored Ctrl-C was lost there, and a KeyboardInterrupt raised inside the start left
    the child half its start data: an EOFError traceback.) Outside the main thread: nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []

    def note(signum: int, frame: Any) -> None:
        noted.append(signum)

    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    handlers = {sig: signal.getsignal(sig) for sig in _HELD}
    swapped = {sig: h for sig, h in handlers.items() if callable(h)}  # Python handlers; SIG_IGN/SIG_DFL stay
    try:
        for sig in swapped:
            signal.signal(sig, note)
        yield
    finally:
        for sig, handler in swapped.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)  # a signal pending here is delivered now
        for signum in dict.fromkeys(noted):
            signal.raise_signal(signum)


def _child_main(target: Callable[..., Any], args: tuple[Any, ...], ignore_sigint: bool) -> None:
    """A spawned child's first step: ignore SIGINT (the master and the workers keep an inherited SIG_IGN, the
    Unix convention for background processes; setting it discards a Ctrl-C pending since the start), unblock
    what `_signals_held` blocked (a SIGTERM pending since the start ends the child now, silently), then run
    `target`."""
    if ignore_sigint:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)
    target(*args)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """In the main thread: SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt, so `with` blocks clean up
    (SIGINT too, since a shell starts background jobs with SIGINT ignored). Elsewhere: does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
