"""Turning an accepted TCP connection into a TLS one, on the connection's own thread.

The handshake runs here rather than in the listening socket's accept(), so a client that
connects and then says nothing delays nobody but itself, and only until HANDSHAKE_TIMEOUT.
"""

import contextlib
import logging
import socket
import ssl
from typing import Any

from exporter.web.config import WebSecurity

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0  # seconds for the client's first byte and for the whole handshake
_TLS_HANDSHAKE_RECORD = 0x16  # the first byte of every TLS ClientHello
_PLAIN_HTTP_ANSWER = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n\r\nThis server only speaks HTTPS: use an https:// URL.\n"
)


def secure(sock: socket.socket, security: WebSecurity) -> socket.socket | None:
    """The connection ready for HTTP (wrapped in TLS when configured), or None to close it."""
    if security.tls is None:
        return sock
    client = _peer(sock)
    sock.settimeout(HANDSHAKE_TIMEOUT)
    try:
        first = sock.recv(1, socket.MSG_PEEK)
    except OSError:
        return None
    if not first:
        return None
    if first[0] != _TLS_HANDSHAKE_RECORD:
        # Plain HTTP (or anything else) on the TLS port: say so once, serve nothing.
        log.debug("refused a connection without TLS", extra={"client": client})
        with contextlib.suppress(OSError):
            sock.sendall(_PLAIN_HTTP_ANSWER)
        return None
    wrapped = security.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    try:
        wrapped.do_handshake()
    except (OSError, ssl.SSLError) as exc:
        # Wrong CA, no client certificate, an old protocol version: the client's problem,
        # so debug level (a log line per misconfigured scraper every 15 s would be noise).
        log.debug("TLS handshake failed", extra={"client": client, "error": str(exc)})
        wrapped.close()
        return None
    if security.allowed_sans and not _san_allowed(wrapped, security.allowed_sans):
        log.debug("client certificate SAN not allowed", extra={"client": client})
        wrapped.close()
        return None
    wrapped.settimeout(None)  # as a plain connection: the handler sets its own timeouts
    return wrapped


def _san_allowed(conn: ssl.SSLSocket, allowed: frozenset[str]) -> bool:
    cert = conn.getpeercert() or {}
    entries: Any = cert.get("subjectAltName", ())  # ((kind, value), ...), e.g. ("DNS", "x")
    names = {str(entry[1]) for entry in entries}
    return bool(names & allowed)


def _peer(sock: socket.socket) -> str:
    try:
        return str(sock.getpeername()[0])
    except OSError:
        return ""
