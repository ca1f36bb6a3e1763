"""HTTP endpoints: /metrics from the store, /healthz for liveness, / as a landing page, and
/health (/health.json) as the report on the store's data.

Handlers only read the store's current snapshot: no SQL, no waiting on a database.

The server stands in front of anything that can reach the port, before any authentication,
so no client may hold it: each connection has HEAD_TIMEOUT for its TLS handshake, request
line and headers together, and WRITE_TIMEOUT for its response, after which its socket is cut;
the request line and headers are capped in size; and at most `connection_cap()` connections
are open at once. A new connection beyond the cap evicts the oldest one still sending its
request (or, when every one is being answered, the oldest of those), so a burst of silent or
slow clients can delay a scrape by no more than its own request, and never exhausts the
file descriptors the collectors need.
"""

import contextlib
import errno
import io
import logging
import re
import resource
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs

from exporter import __version__
from exporter.errors import ProbeRefused
from exporter.exposition.store import Snapshot, Store
from exporter.targets.watchdog import Watchdog
from exporter.units import parse_listen_address
from exporter.web.config import OPEN, WebSecurity
from exporter.web.health import HealthPage
from exporter.web.html import LandingPage
from exporter.web.tls import secure

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

HEAD_TIMEOUT = 5.0  # seconds for the TLS handshake, the request line and the headers, in all
WRITE_TIMEOUT = 30.0  # seconds to send a response: a 13 MB body at ~450 kB/s
MAX_REQUEST_LINE = 8192  # bytes, the URL included: beyond it 414
MAX_HEAD = 16384  # bytes of request line and headers: beyond them 431
_HEAD_END = re.compile(rb"\r?\n\r?\n")
METRICS_PATH = "/metrics"
# The paths served besides the metrics: --web.telemetry-path may not hide one of them.
_OTHER_PATHS = ("/", "/healthz", "/health", "/health.json", "/probe")
_DEADLINES = Watchdog("http-deadlines")

# /probe's target and auth_module (None when absent) -> the name of the target to serve, once
# registered; ProbeRefused when it may not be probed. Never waits on a database.
Prober = Callable[[str | None, str | None], str]


def _no_probes(target: str | None, module: str | None) -> str:
    raise ProbeRefused(404, "/probe is off")


def connection_cap() -> int:
    """How many connections may be open at once: half the file descriptors this process may
    open (the rest are for database sessions and everything else), within 16 and 1024."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(16, min(1024, soft // 2))


def check_metrics_path(path: str) -> str:
    """`path` if /metrics may be served there (--web.telemetry-path), else ValueError."""
    if not path.startswith("/"):
        raise ValueError(f"{path!r} must start with /")
    if any(c in path for c in "?# ") or not path.isprintable():
        raise ValueError(f"{path!r} is not a plain URL path")
    if path in _OTHER_PATHS:
        raise ValueError(f"{path} is already served (the other pages: {', '.join(_OTHER_PATHS)})")
    return path


def accepts_gzip(header: str | None) -> bool:
    """Whether a response may be gzipped, per RFC 9110 12.5.3 (q-values; `*`; x-gzip).

    gzip wins over identity at equal preference; `gzip;q=0` or a higher q for identity
    get the plain body."""
    if not header:
        return False
    weights: dict[str, float] = {}
    for item in header.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        if not coding:
            continue
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value.strip())
                except ValueError:
                    weight = 0.0  # not a weight: as good as not offered
        weights[coding.lower()] = weight
    # Codings not listed take the wildcard's weight; identity, unlisted and without a
    # wildcard, stays acceptable but is not preferred to a coding the client asked for.
    wildcard = weights.get("*", 0.0)
    gzip = weights.get("gzip", weights.get("x-gzip", wildcard))
    identity = weights.get("identity", wildcard)
    return gzip > 0 and gzip >= identity


@dataclass
class _Open:
    """One open connection: its socket (the TLS one once wrapped) and its deadline."""

    sock: socket.socket
    token: int
    reading: bool  # still sending its request
    since: float


class _Connections:
    """The open connections, each with a deadline, within the cap.

    Keyed by the accepted socket, which socketserver hands back when the connection ends.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._lock = threading.Condition()
        self._open: dict[socket.socket, _Open] = {}
        self._wrapped: dict[socket.socket, socket.socket] = {}  # TLS socket -> accepted one

    def admit(self, sock: socket.socket) -> None:
        with self._lock:
            while len(self._open) >= self.cap:
                self._evict_locked()
            entry = _Open(sock, 0, reading=True, since=time.monotonic())
            entry.token = _DEADLINES.arm(HEAD_TIMEOUT, lambda: _cut(entry))
            self._open[sock] = entry

    def wrapped(self, sock: socket.socket, tls: socket.socket) -> None:
        """The accepted socket now lives on as `tls` (its descriptor moved there)."""
        with self._lock:
            entry = self._open.get(sock)
            if entry is not None:
                entry.sock = tls
                self._wrapped[tls] = sock
        if entry is None:
            _cut(_Open(tls, 0, reading=False, since=0.0))  # evicted during the handshake

    def responding(self, sock: socket.socket) -> None:
        """Its request is in: from now on it has WRITE_TIMEOUT for the response."""
        with self._lock:
            entry = self._open.get(self._wrapped.get(sock, sock))
            if entry is None:
                return  # evicted meanwhile: its socket is cut already
            _DEADLINES.disarm(entry.token)
            entry.reading = False
            entry.token = _DEADLINES.arm(WRITE_TIMEOUT, lambda: _cut(entry))

    def release(self, sock: socket.socket) -> None:
        with self._lock:
            entry = self._open.pop(sock, None)
            if entry is not None:
                _DEADLINES.disarm(entry.token)
                self._wrapped.pop(entry.sock, None)
            self._lock.notify_all()

    def make_room(self, wait: float) -> None:
        """Out of file descriptors: free one, or wait (up to `wait`) for a connection to end."""
        with self._lock:
            if self._open:
                self._evict_locked()
            else:
                self._lock.wait(timeout=wait)

    def _evict_locked(self) -> None:
        # The oldest connection still sending its request; else the oldest being answered.
        key = min(self._open, key=lambda s: (not self._open[s].reading, self._open[s].since))
        entry = self._open.pop(key)
        self._wrapped.pop(entry.sock, None)
        _DEADLINES.disarm(entry.token)
        log.debug("connection evicted: too many open", extra={"reading_request": entry.reading})
        _cut(entry)


def _cut(entry: _Open) -> None:
    """End a connection's reads and writes now; its own thread then closes it."""
    with contextlib.suppress(OSError):
        entry.sock.shutdown(socket.SHUT_RDWR)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a slow client never blocks shutdown
    allow_reuse_address = True
    # socketserver's default backlog is 5: concurrent scrapers' connections beyond it have
    # their SYNs dropped and retried a second or more later. The kernel caps it at somaxconn.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type["_Handler"], cap: int) -> None:
        self.connections = _Connections(cap)
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            return super().get_request()
        except OSError as exc:
            # Out of descriptors the listening socket stays readable, and accept() would be
            # retried at once, forever: free one first.
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self.connections.make_room(wait=1.0)
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections.admit(request)
        try:
            super().process_request(request, client_address)
        except RuntimeError:  # no thread could be started: drop this one connection
            self.shutdown_request(request)

    def shutdown_request(self, request: Any) -> None:
        self.connections.release(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver would print a traceback to stderr, outside the log and its format.
        client = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        failure = sys.exc_info()[1]
        if isinstance(failure, OSError):  # the client went away, or its deadline passed
            log.debug("client connection ended", extra={"client": client, "error": str(failure)})
        else:
            log.error("HTTP request failed", extra={"client": client}, exc_info=True)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # On the connection's own thread, so a slow TLS handshake delays no other client.
        handler: type[_Handler] = self.RequestHandlerClass  # type: ignore[assignment]
        conn = secure(request, handler.web)
        if conn is None:
            return
        if conn is not request:
            self.connections.wrapped(request, conn)
        try:
            super().finish_request(conn, client_address)
        finally:
            if conn is not request:  # the TLS socket owns the descriptor now
                self.shutdown_request(conn)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    store: ClassVar[Store]
    landing: ClassVar[LandingPage]
    health: ClassVar[HealthPage]
    web: ClassVar[WebSecurity]  # replaced whole on reload; each request reads it once
    metrics_path: ClassVar[str]
    prober: ClassVar[Prober]
    server_version = f"pg-health-exporter/{__version__}"
    server: _Server

    def handle(self) -> None:
        """One request per connection (HTTP/1.0): its head read within its deadline."""
        head = self._read_head()
        if head is None:
            return
        self.server.connections.responding(self.connection)
        self.rfile.close()  # the socket's reader: nothing more is read from it
        self.rfile = io.BytesIO(head)
        self.handle_one_request()

    def _read_head(self) -> bytes | None:
        """The request line and headers, or None (answered or closed) when they do not come
        complete within the limits; the connection's deadline cuts a slow one."""
        head = bytearray()
        while True:
            try:
                chunk = self.connection.recv(4096)
            except OSError:
                return None  # reset by the client, or cut at its deadline
            if not chunk:
                return None
            head += chunk
            end = _HEAD_END.search(head)
            line_end = head.find(b"\n")
            if (line_end < 0 and len(head) > MAX_REQUEST_LINE) or line_end > MAX_REQUEST_LINE:
                self._refuse(414, "URI Too Long")
                return None
            if (end.end() if end else len(head)) > MAX_HEAD:
                self._refuse(431, "Request Header Fields Too Large")
                return None
            if end is not None:
                return bytes(head[: end.end()])

    def _refuse(self, code: int, reason: str) -> None:
        body = f"{reason}\n".encode()
        with contextlib.suppress(OSError):
            self.connection.sendall(
                f"HTTP/1.0 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
        log.debug("request refused", extra={"client": self.client_address[0], "code": code})

    def do_HEAD(self) -> None:
        self.do_GET()  # _send leaves the body out

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False  # answered (400, 505...)
        if self.command in ("GET", "HEAD"):
            return True
        self._send(
            405, b"method not allowed\n", "text/plain; charset=utf-8", extra={"Allow": "GET, HEAD"}
        )
        return False

    def do_GET(self) -> None:
        auth = self.web.auth
        # Every path, /healthz included, as exporter-toolkit does.
        if auth is not None and not auth.allows(self.headers.get("Authorization")):
            self._send(
                401,
                b"Unauthorized\n",
                "text/plain; charset=utf-8",
                extra={"WWW-Authenticate": 'Basic realm="pg-health-exporter"'},
            )
            return
        path, _, query = self.path.partition("?")
        if path == self.metrics_path:
            self._metrics()
        elif path == "/probe":
            self._probe(query)
        elif path == "/healthz":
            self._send(200, b"ok\n", "text/plain; charset=utf-8")
        elif path == "/":
            self._send(200, self.landing.html(self.store).encode(), "text/html; charset=utf-8")
        elif path == "/health":
            self._send(200, self.health.html(self.store), "text/html; charset=utf-8")
        elif path == "/health.json":
            self._send(200, self.health.json(self.store), "application/json")
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    def _metrics(self) -> None:
        self._exposition(self.store.snapshot())

    def _probe(self, query: str) -> None:
        """One target's series, from memory; the first probe of a target registers it."""
        params = parse_qs(query)
        target, module = (params.get(key, [None])[0] for key in ("target", "auth_module"))
        try:
            name = type(self).prober(target, module)  # through the class: a plain function
        except ProbeRefused as exc:
            self._send(exc.status, f"{exc}\n".encode(), "text/plain; charset=utf-8")
            return
        snapshot = self.store.target_snapshot(name)
        if snapshot is None:  # dropped as idle between the two calls: rare, and retried
            self._send(503, b"target just dropped, probe again\n", "text/plain; charset=utf-8")
            return
        self._exposition(snapshot)

    def _exposition(self, snapshot: Snapshot) -> None:
        vary = {"Vary": "Accept-Encoding"}
        if accepts_gzip(self.headers.get("Accept-Encoding")):
            self._send(200, snapshot.gzipped(), CONTENT_TYPE, encoding="gzip", extra=vary)
        else:
            self._send(200, snapshot.body, CONTENT_TYPE, extra=vary)

    def _send(
        self,
        code: int,
        body: bytes,
        content_type: str,
        encoding: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if encoding:
            self.send_header("Content-Encoding", encoding)
        for name, value in (*self.web.headers, *(extra or {}).items()):
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("http request", extra={"client": self.client_address[0], "line": format % args})

    def log_error(self, format: str, *args: object) -> None:
        # http.server writes errors to stderr; they go through the log, in its format.
        log.debug("http error", extra={"client": self.client_address[0], "line": format % args})


class MetricsServer:
    """The HTTP server, run on its own thread."""

    def __init__(
        self,
        store: Store,
        landing: LandingPage,
        health: HealthPage,
        listen_address: str,
        *,
        web: WebSecurity = OPEN,
        max_connections: int | None = None,
        metrics_path: str = METRICS_PATH,
        prober: Prober = _no_probes,
    ) -> None:
        host, port = parse_listen_address(listen_address)
        self._handler: type[_Handler] = type(
            "Handler",
            (_Handler,),
            {
                "store": store,
                "landing": landing,
                "health": health,
                "web": web,
                "metrics_path": check_metrics_path(metrics_path),
                "prober": staticmethod(prober),
            },
        )
        server_class = _Server6 if ":" in host else _Server
        cap = max_connections or connection_cap()
        self._httpd = server_class((host or "0.0.0.0", port), self._handler, cap)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def set_web(self, web: WebSecurity) -> None:
        """Apply a new web config: to connections and requests from now on."""
        self._handler.web = web

    def set_pages(self, landing: LandingPage, health: HealthPage) -> None:
        """The pages for a new config (its targets and collectors)."""
        self._handler.landing = landing
        self._handler.health = health

    def shutdown(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
