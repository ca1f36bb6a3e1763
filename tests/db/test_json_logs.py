"""`--log.format json`: every line the daemon writes is one JSON event, whatever clients do."""

import json
import socket
import struct
from pathlib import Path

from exporter.demo.embedded import LocalPostgres
from support import parse_exposition, value, wait_for
from support.daemon import Daemon

REQUEST = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"


def reset(sock: socket.socket) -> None:
    """Close with a RST instead of a FIN: what a client killed mid-scrape looks like."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def rude_clients(port: int) -> None:
    """Clients that go away before, during and after sending their request."""
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            reset(sock.dup())  # before a single byte
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(REQUEST)
        reset(sock)  # right after the request: the answer meets a reset connection
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the body cannot fit
        sock.connect(("127.0.0.1", port))
        sock.sendall(REQUEST)
        sock.recv(100)
        reset(sock)  # mid-body
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"\x16\x03\x01 not http\r\n\r\n")  # TLS, or garbage
            sock.recv(4096)


def test_every_line_is_json(postgres: LocalPostgres, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"up_interval: 1s\ntargets:\n  - name: pg\n    dsn: '{postgres.dsn()}'\n")
    with Daemon(config, "--log.format", "json") as daemon:

        def collected() -> bool:
            body = daemon.get(timeout=5)
            if body is None:
                return False
            samples = parse_exposition(body)
            return value(samples, "pg_exporter_collector_up", collector="tables") == 1

        wait_for(collected, what="first collection")
        body = daemon.get(timeout=5)
        assert body is not None and len(body) > 100_000  # larger than the socket buffers
        rude_clients(daemon.port)
        assert daemon.get("/healthz") == "ok\n"
        assert daemon.stop() == 0
    lines = daemon.stderr
    assert any('"serving metrics"' in line for line in lines)
    not_json = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            not_json.append(line)
            continue
        assert {"ts", "level", "msg"} <= event.keys()
    assert not not_json, "".join(not_json[:20])
