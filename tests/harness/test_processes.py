"""flexgc.harness.processes: the one supervision path of the demo, LocalCluster and NetnsCluster."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest

from flexgc.harness.processes import PopenChild, SpawnedChild, stop_all

_IGNORES_SIGTERM = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
                    "time.sleep(60)")
_EXITS_SOON = "import time; time.sleep(0.3)"


def _popen(code: str) -> PopenChild:
    popen = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True)
    return PopenChild(code[:20], popen)


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def test_sigterm_ends_a_spawned_child_and_a_stopped_one_is_continued_first() -> None:
    # Prepare: a child sleeping a minute, and one stopped with SIGSTOP (it could not handle SIGTERM)
    sleeping = SpawnedChild(_sleep, (60,), "sleeping")
    stopped = SpawnedChild(_sleep, (60,), "stopped")
    stopped.send(signal.SIGSTOP)

    # Execute
    t0 = time.monotonic()
    codes = stop_all([sleeping, stopped], grace_s=10)

    # Assert: both ended by SIGTERM, well before the grace period
    assert codes == {"sleeping": -signal.SIGTERM, "stopped": -signal.SIGTERM}
    assert time.monotonic() - t0 < 5


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period() -> None:
    # Prepare
    stubborn = _popen(_IGNORES_SIGTERM)
    assert stubborn.popen.stdout is not None and stubborn.popen.stdout.readline() == b"ready\n"

    # Execute
    t0 = time.monotonic()
    codes = stop_all([stubborn], grace_s=0.5)

    # Assert
    assert codes[stubborn.name] == -signal.SIGKILL
    assert 0.5 <= time.monotonic() - t0 < 5


def test_exit_wait_lets_children_end_by_themselves() -> None:
    # Prepare: a child that ends on its own 0.3 s from now
    child = _popen(_EXITS_SOON)

    # Execute
    codes = stop_all([child], grace_s=5, exit_wait_s=10)

    # Assert: exit code 0, not a signal; and calling again is harmless
    assert codes[child.name] == 0
    assert stop_all([child]) == codes


def _sigint_disposition(queue: object) -> None:
    queue.put(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)  # type: ignore[attr-defined]


def test_a_spawned_child_starts_with_sigint_ignored_and_the_parent_keeps_its_handler() -> None:
    # Ctrl-C reaches the whole terminal group: a local cluster's children leave it to their parent, which stops
    # them with SIGTERM (they died mid-shutdown with KeyboardInterrupt tracebacks before)
    from flexgc.harness.processes import SPAWN

    queue = SPAWN.Queue()
    before = signal.getsignal(signal.SIGINT)
    child = SpawnedChild(_sigint_disposition, (queue,), "probe")
    try:
        assert queue.get(timeout=60) is True
        assert signal.getsignal(signal.SIGINT) is before
    finally:
        stop_all([child], grace_s=10)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_a_child_starts_reaches_the_parent_after_the_start(sig: signal.Signals) -> None:
    # The parent holds Ctrl-C and SIGTERM back while it starts a child; one that lands in that window is
    # delivered when the window ends (an ignored Ctrl-C was lost there: an interrupted bench ran to its end).
    from flexgc.harness.processes import _signals_held, sigterm_as_interrupt

    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with sigterm_as_interrupt(), pytest.raises(KeyboardInterrupt):
        with _signals_held():
            signal.pthread_kill(threading.main_thread().ident or 0, sig)  # this thread: held
            assert sig in signal.sigpending()
        pytest.fail("the held signal was not delivered when the window ended")
    assert not {signal.SIGINT, signal.SIGTERM} & signal.pthread_sigmask(signal.SIG_BLOCK, set())


def test_a_signal_another_thread_catches_while_a_child_starts_waits_for_the_start_too() -> None:
    # A process-directed signal can land on any thread that does not block it; its Python handler still runs in
    # the main thread, and must not raise there before the child has its start data.
    from flexgc.harness.processes import _signals_held, sigterm_as_interrupt

    reached = False
    fire, fired = threading.Event(), threading.Event()

    def catch_one() -> None:  # started before the window, so its signal mask is the usual one
        if fire.wait(30):
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
            fired.set()

    other = threading.Thread(target=catch_one)
    other.start()
    with sigterm_as_interrupt(), pytest.raises(KeyboardInterrupt):
        with _signals_held():
            fire.set()
            assert fired.wait(10)
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:  # the interpreter runs a pending handler within these bytecodes
                pass
            reached = True
        pytest.fail("the noted signal was not delivered when the window ended")
    other.join(10)
    assert reached


def test_a_child_whose_start_a_signal_interrupts_is_stopped_not_orphaned(monkeypatch: pytest.MonkeyPatch) -> None:
    # The held signal surfaces as the constructor returns: the caller never gets the child to stop, so the
    # constructor stops it (an orphaned worker kept a Ctrl-C'd bench waiting on it at exit).
    import multiprocessing

    from flexgc.harness.processes import SPAWN, sigterm_as_interrupt

    process_class = type(SPAWN.Process(target=_sleep, args=(60,)))
    start = process_class.start

    def start_then_signalled(self: multiprocessing.process.BaseProcess) -> None:
        start(self)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)  # held until the start ends

    monkeypatch.setattr(process_class, "start", start_then_signalled)
    before = set(multiprocessing.active_children())
    with sigterm_as_interrupt(), pytest.raises(KeyboardInterrupt):
        SpawnedChild(_sleep, (60,), "interrupted")
    assert set(multiprocessing.active_children()) <= before  # stopped and reaped

