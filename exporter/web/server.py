"""HTTP endpoints: /metrics from the store, /healthz for liveness, / as a landing page, and
/health (/health.json) as the report on the store's data.

Handlers only read the store's current snapshot: no SQL, no waiting on a database.
"""

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from exporter import __version__
from exporter.exposition.store import Store
from exporter.units import parse_listen_address
from exporter.web.config import OPEN, WebSecurity
from exporter.web.health import HealthPage
from exporter.web.html import LandingPage
from exporter.web.tls import secure

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a slow client never blocks shutdown
    allow_reuse_address = True
    # socketserver's default backlog is 5: concurrent scrapers' connections beyond it have
    # their SYNs dropped and retried a second or more later. The kernel caps it at somaxconn.
    request_queue_size = 128

    def finish_request(self, request: Any, client_address: Any) -> None:
        # On the connection's own thread, so a slow TLS handshake delays no other client.
        handler: type[_Handler] = self.RequestHandlerClass  # type: ignore[assignment]
        conn = secure(request, handler.web)
        if conn is None:
            return
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
    server_version = f"pg-health-exporter/{__version__}"

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
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._metrics()
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
        snapshot = self.store.snapshot()
        accepts_gzip = "gzip" in self.headers.get("Accept-Encoding", "")
        if accepts_gzip:
            self._send(200, snapshot.gzipped(), CONTENT_TYPE, encoding="gzip")
        else:
            self._send(200, snapshot.body, CONTENT_TYPE)

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
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("http request", extra={"client": self.client_address[0], "line": format % args})


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
    ) -> None:
        host, port = parse_listen_address(listen_address)
        self._handler: type[_Handler] = type(
            "Handler",
            (_Handler,),
            {"store": store, "landing": landing, "health": health, "web": web},
        )
        server_class = _Server6 if ":" in host else _Server
        self._httpd = server_class((host or "0.0.0.0", port), self._handler)
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
