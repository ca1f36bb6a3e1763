"""Clients that never finish a request must not take /metrics, or collection, down.

The exporter runs as a child process with `ulimit -n` at 1024. A steady stream of new
connections comes in, as from a port scanner or a load balancer's half-open checks: some send
nothing, some trickle their headers a byte at a time, and the client never closes any of them
itself. More of them come in than the process has descriptors, so only a server that closes
them at a deadline keeps a few hundred open at a time, and answers scrapes meanwhile, while
collectors that open new sessions (per-database visits) go on.
"""

import contextlib
import errno
import selectors
import socket
import threading
import time
from pathlib import Path
from types import TracebackType

from exporter.demo.embedded import LocalPostgres
from support import parse_exposition, scrape, value, wait_for
from support.daemon import Daemon

NOFILE = 1024


class Flood:
    """Opens `rate` connections a second to the port and keeps each open until the server
    closes it. With `trickle`, each sends it one byte every half second."""

    def __init__(self, port: int, rate: int, trickle: bytes = b"") -> None:
        self._address = ("127.0.0.1", port)
        self._rate = rate
        self._trickle = trickle
        self._stop = threading.Event()
        self.opened = 0
        self.open = 0  # connections open now whose handshake completed
        self.peak = 0
        self.closed_by_server = 0
        self._thread = threading.Thread(target=self._run, name="flood", daemon=True)

    def __enter__(self) -> "Flood":
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _connect(self, selector: selectors.BaseSelector) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if sock.connect_ex(self._address) not in (0, errno.EINPROGRESS):
            sock.close()
            return
        self.opened += 1
        selector.register(sock, selectors.EVENT_WRITE, [False, 0])  # [established, sent]

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        started = time.monotonic()
        next_trickle = started
        try:
            while not self._stop.is_set():
                due = int((time.monotonic() - started) * self._rate) - self.opened
                for _ in range(max(0, due)):
                    self._connect(selector)
                for key, _ in selector.select(timeout=0.05):
                    sock: socket.socket = key.fileobj  # type: ignore[assignment]
                    state: list[int] = key.data
                    if not state[0]:
                        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                            state[0] = 1
                            self.open += 1
                            self.peak = max(self.peak, self.open)
                            selector.modify(sock, selectors.EVENT_READ, state)
                            continue
                    else:
                        self.open -= 1
                        with contextlib.suppress(OSError):
                            sock.recv(65536)
                    # Refused, reset, answered or closed by the server.
                    self.closed_by_server += 1
                    selector.unregister(sock)
                    sock.close()
                if self._trickle and time.monotonic() >= next_trickle:
                    next_trickle = time.monotonic() + 0.5
                    for key in list(selector.get_map().values()):
                        state = key.data
                        if state[0] and state[1] < len(self._trickle):
                            with contextlib.suppress(OSError):
                                sock = key.fileobj  # type: ignore[assignment]
                                sock.send(self._trickle[state[1] : state[1] + 1])
                                state[1] += 1
        finally:
            for key in list(selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            selector.close()


def test_scrapes_and_collection_survive_hundreds_of_idle_clients(
    postgres: LocalPostgres, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "up_interval: 1s\n"
        f"targets:\n  - name: pg\n    dsn: '{postgres.dsn()}'\n"
        # `tables` visits every database on a new session each time, every second (unpaced):
        # it needs descriptors.
        "    visit_logins_per_minute: off\n"
        "collectors:\n  tables: {interval: 1s, timeout: 1s}\n  database: {interval: 1s, timeout: 1s}\n"
    )
    with Daemon(config, nofile=NOFILE) as daemon:

        def collected_since(since: float) -> bool:
            body = daemon.get(timeout=3)
            if body is None:
                return False
            samples = parse_exposition(body)
            last = value(
                samples, "pg_exporter_collector_last_success_timestamp_seconds", collector="tables"
            )
            return value(samples, "pg_up", target="pg") == 1 and last is not None and last > since

        wait_for(lambda: collected_since(0), what="first collection")
        trickle = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: yes\r\n" * 100
        # 80 a second for 16 s: 1280 connections, more than the process has descriptors.
        with Flood(daemon.port, 60) as silent, Flood(daemon.port, 20, trickle) as slow:
            flood_started = time.time()
            ended = time.monotonic() + 16
            answered = 0
            while time.monotonic() < ended:
                samples = scrape(daemon.port, timeout=3)
                assert value(samples, "pg_up", target="pg") == 1
                answered += 1
            assert silent.opened + slow.opened > NOFILE
            assert silent.peak + slow.peak >= 200, "never a few hundred clients at once"
            assert silent.closed_by_server > 0 and slow.closed_by_server > 0
            # Collection opened new sessions all along: no EMFILE.
            wait_for(lambda: collected_since(flood_started), what="collection during the flood")
        assert answered >= 10
        assert daemon.process.poll() is None, daemon.log()
    assert "Too many open files" not in daemon.log()
