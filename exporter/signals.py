"""Waiting for the signal to stop, shared by the daemon and the demo."""

import signal
import threading


def wait_for_signal() -> None:
    """Block until SIGTERM or SIGINT (Ctrl-C)."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(timeout=3600):
            pass
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
