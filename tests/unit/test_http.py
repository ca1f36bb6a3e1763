"""The HTTP server as clients meet it: methods, paths, content negotiation, limits, deadlines.

A real MetricsServer on 127.0.0.1 and real clients (http.client, raw sockets); no database.
"""

import gzip
import http.client
import socket
import time
from collections.abc import Iterator

import pytest

from exporter.config import parse_config
from exporter.exposition.selfmetrics import self_metrics
from exporter.exposition.store import Store
from exporter.status import Reachability
from exporter.web.health import HealthPage
from exporter.web.html import LandingPage
from exporter.web.server import HEAD_TIMEOUT, MetricsServer, accepts_gzip

pytestmark = pytest.mark.any_major

CONFIG = parse_config({"targets": [{"name": "pg", "dsn": "host=db.example dbname=app"}]})


@pytest.fixture
def port() -> Iterator[int]:
    store = Store(self_metrics=self_metrics)
    store.publish_target("pg", Reachability(up=True, server_version="18.0", seq=1))
    server = MetricsServer(store, LandingPage(target_dsns={}), HealthPage(CONFIG), "127.0.0.1:0")
    server.start()
    yield server.port
    server.shutdown()


def request(
    port: int, method: str, path: str = "/metrics", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_head_answers_like_get_without_a_body(port: int) -> None:
    status, headers, body = request(port, "GET")
    assert status == 200 and b"pg_up" in body
    status, head_headers, head_body = request(port, "HEAD")
    assert status == 200
    assert head_body == b""
    assert head_headers["Content-Length"] == headers["Content-Length"]
    assert head_headers["Content-Type"] == headers["Content-Type"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"])
def test_other_methods_are_not_allowed(port: int, method: str) -> None:
    status, headers, _ = request(port, method)
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"


def test_unknown_paths_are_not_found(port: int) -> None:
    assert request(port, "GET", "/nothing")[0] == 404
    assert request(port, "HEAD", "/metrics/../etc")[0] == 404


@pytest.mark.parametrize(
    ("header", "gzipped"),
    [
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("GZIP;Q=0.5", True),
        ("x-gzip", True),
        ("*", True),
        ("identity;q=0.5, *;q=0.8", True),
        ("gzip;q=0", False),
        ("gzip;q=0.000", False),
        ("deflate, gzip;q=0", False),
        ("*;q=0, identity", False),
        ("identity;q=1, gzip;q=0.5", False),
        ("gzip;q=0.5, *;q=0", True),
        ("deflate, br", False),
        ("", False),
        ("gzip;q=bogus", False),
    ],
)
def test_accept_encoding_follows_q_values(port: int, header: str, gzipped: bool) -> None:
    assert accepts_gzip(header) is gzipped
    status, headers, body = request(port, "GET", headers={"Accept-Encoding": header})
    assert status == 200
    assert headers.get("Content-Encoding") == ("gzip" if gzipped else None)
    text = gzip.decompress(body) if gzipped else body
    assert b"pg_up" in text
    assert headers["Vary"] == "Accept-Encoding"


def test_long_url_is_refused(port: int) -> None:
    status, _, _ = request(port, "GET", "/metrics?" + "x" * 10_000)
    assert status == 414


def test_large_headers_are_refused(port: int) -> None:
    status, _, _ = request(port, "GET", headers={"X-Padding": "y" * 20_000})
    assert status == 431


def closed_after(sock: socket.socket, seconds: float, trickle: bytes = b"") -> float | None:
    """How long until the server closes `sock`, sending it one byte of `trickle` every 0.5 s
    meanwhile; None when it is still open after `seconds`."""
    started = time.monotonic()
    deadline = started + seconds
    sent = 0
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(min(0.5, left))
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - started
        except TimeoutError:
            pass
        except ConnectionResetError:
            return time.monotonic() - started
        if sent < len(trickle):
            try:
                sock.sendall(trickle[sent : sent + 1])
            except OSError:
                return time.monotonic() - started
            sent += 1
    return None


def test_silent_client_is_cut_at_the_head_deadline(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        took = closed_after(sock, HEAD_TIMEOUT + 5)
    assert took is not None, "a client that sends nothing is held forever"
    assert HEAD_TIMEOUT - 0.5 <= took <= HEAD_TIMEOUT + 2


def test_slowloris_is_cut_at_the_head_deadline(port: int) -> None:
    """A byte every half second never lets a per-read timeout fire: the deadline is total."""
    trickle = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-a: b\r\n" * 20
    with socket.create_connection(("127.0.0.1", port)) as sock:
        took = closed_after(sock, HEAD_TIMEOUT + 5, trickle)
    assert took is not None, "a client trickling its headers is held forever"
    assert took <= HEAD_TIMEOUT + 2


def test_at_the_cap_the_oldest_silent_client_makes_room() -> None:
    """A new connection pushes out the oldest one still sending its request, so a scrape gets
    in however many silent clients came first."""
    store = Store(self_metrics=self_metrics)
    server = MetricsServer(
        store, LandingPage(target_dsns={}), HealthPage(CONFIG), "127.0.0.1:0", max_connections=4
    )
    server.start()
    silent: list[socket.socket] = []
    try:
        for _ in range(12):
            silent.append(socket.create_connection(("127.0.0.1", server.port)))
        for _ in range(3):
            status, _, body = request(server.port, "GET")
            assert status == 200 and b"pg_exporter_build_info" in body
        # The first ones were evicted, closed by the server without an answer.
        assert closed_after(silent[0], 2.0) is not None
        assert closed_after(silent[-1], 0.5) is None  # the newest are still waiting
    finally:
        for sock in silent:
            sock.close()
        server.shutdown()
