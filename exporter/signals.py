"""Waiting for the signal to stop, shared by the daemon and the demo; SIGHUP to reload."""

import signal
import threading
from collections.abc import Callable


def wait_for_signal(
    on_hangup: Callable[[], object] | None = None,
    *,
    changed: Callable[[], bool] | None = None,
    every: Callable[[], float] = lambda: 3600.0,
) -> None:
    """Block until SIGTERM or SIGINT (Ctrl-C); with `on_hangup`, call it on each SIGHUP, and
    also when `changed()`, asked every `every()` seconds, says so (target files changed).

    `on_hangup` runs here, on the main thread, never inside the signal handler: a reload
    takes locks and joins threads, which a handler interrupting arbitrary code must not. So
    a reload for changed files never runs at the same time as one for a SIGHUP.
    """
    wake = threading.Event()
    pending: list[int] = []

    def handler(signum: int, frame: object) -> None:
        pending.append(signum)
        wake.set()

    signals = [signal.SIGTERM, signal.SIGINT] + ([signal.SIGHUP] if on_hangup else [])
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        while True:
            signalled = wake.wait(timeout=every() if changed is not None else 3600)
            wake.clear()  # before draining: a signal arriving meanwhile wakes the next wait
            if not signalled and on_hangup is not None and changed is not None and changed():
                on_hangup()
            while pending:
                if pending.pop(0) != signal.SIGHUP:
                    return
                if on_hangup is not None:
                    on_hangup()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
