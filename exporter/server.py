"""HTTP endpoints: /metrics from the store, /healthz for liveness, / as a landing page.

Handlers only read the store's current snapshot: no SQL, no waiting on a database.
"""

import html
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from exporter import __version__
from exporter.store import Store
from exporter.tls import secure
from exporter.units import parse_listen_address
from exporter.webconfig import OPEN, WebSecurity

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
    landing: ClassVar["LandingPage"]
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
            self._send(200, self.landing.render(self.store).encode(), "text/html; charset=utf-8")
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


class LandingPage:
    """A small page listing targets and each collector's state."""

    def __init__(self, *, target_dsns: dict[str, str]) -> None:
        self._dsns = target_dsns  # already stripped of passwords

    def render(self, store: Store) -> str:
        rows = []
        for name, status in sorted(store.targets().items()):
            state = "up" if status.up else f"down: {status.message}"
            rows.append(
                f"<h2>{html.escape(name)} — {html.escape(state)}</h2>"
                f"<p><code>{html.escape(self._dsns.get(name, ''))}</code> "
                f"{html.escape(status.server_version)}</p><table>"
                "<tr><th>collector</th><th>state</th><th>series</th><th>duration</th>"
                "<th>errors</th><th>message</th></tr>"
            )
            for collector, c in sorted(status.collectors.items()):
                rows.append(
                    f"<tr><td>{html.escape(collector)}</td><td>{c.state}</td><td>{c.series}</td>"
                    f"<td>{c.last_duration * 1000:.1f} ms</td><td>{c.errors_total}</td>"
                    f"<td>{html.escape(c.message)}</td></tr>"
                )
            rows.append("</table>")
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>pg-health-exporter</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 10px;"
            "text-align:left}</style></head><body>"
            f"<h1>pg-health-exporter {__version__}</h1><p><a href='/metrics'>Metrics</a> · "
            "<a href='/healthz'>Health</a></p>" + "".join(rows) + "</body></html>"
        )


class MetricsServer:
    """The HTTP server, run on its own thread."""

    def __init__(
        self,
        store: Store,
        landing: LandingPage,
        listen_address: str,
        *,
        web: WebSecurity = OPEN,
    ) -> None:
        host, port = parse_listen_address(listen_address)
        self._handler: type[_Handler] = type(
            "Handler", (_Handler,), {"store": store, "landing": landing, "web": web}
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

    def set_landing(self, landing: LandingPage) -> None:
        self._handler.landing = landing

    def shutdown(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
