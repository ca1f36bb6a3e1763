"""`pg-health-exporter demo` (what `make demo` runs), driven as a user would."""

import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from conftest import scrape, value, wait_for


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_demo_serves_metrics_and_cleans_up() -> None:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter", "demo", "--web.listen-address", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(iter(process.stdout.readline, "")) if process.stdout else None
    )
    reader.start()
    try:

        def pg_up() -> bool:
            try:
                return value(scrape(port, timeout=2), "pg_up", target="demo") == 1
            except OSError:
                return False

        wait_for(pg_up, timeout=60, what="demo serving pg_up 1")
        wait_for(
            lambda: value(scrape(port), "pg_database_xact_commit_total", datname="postgres"),
            what="database statistics served",
        )
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        reader.join(timeout=10)
    output = "".join(lines)
    assert f"http://127.0.0.1:{port}/metrics" in output
    assert "stopped and cleaned up" in output
    found = re.search(r"data directory: (\S+)", output)
    assert found, output
    assert not Path(found.group(1)).exists()
