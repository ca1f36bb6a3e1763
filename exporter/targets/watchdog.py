"""One background thread that calls a function when its deadline passes, unless disarmed first.

Used to cut a database session that stopped answering: statement_timeout is enforced by the
server, so it cannot fire when the server, or anything between, stops answering while TCP
stays up (a hung proxy or pooler; a frozen host behind one). One thread serves every
session: arming and disarming are a heap push and a set update, cheap enough per statement.
"""

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Watchdog:
    def __init__(self, name: str = "watchdog") -> None:
        self._name = name
        self._condition = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._armed: set[int] = set()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, action: Callable[[], None]) -> int:
        """Call `action` (on the watchdog's thread) in `seconds`, unless disarmed before."""
        with self._condition:
            token = next(self._ids)
            heapq.heappush(self._heap, (time.monotonic() + seconds, token, action))
            self._armed.add(token)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._condition.notify()
            return token

    def disarm(self, token: int) -> None:
        with self._condition:
            self._armed.discard(token)

    def _run(self) -> None:
        while True:
            with self._condition:
                while self._heap and self._heap[0][1] not in self._armed:
                    heapq.heappop(self._heap)  # disarmed: forget it
                if not self._heap:
                    self._condition.wait()
                    continue
                deadline, token, action = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._condition.wait(timeout=wait)
                    continue
                heapq.heappop(self._heap)
                self._armed.discard(token)
            try:
                action()  # outside the lock: it may take a moment, and must not block arming
            except Exception:  # this thread serves every session: it must outlive a defect
                log.exception("watchdog action failed")
