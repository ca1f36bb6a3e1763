"""`pg-health-exporter demo` as a user runs it: a process on a free port, its output read as it
comes, stopped with Ctrl-C (SIGINT)."""

import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from support import free_port, wait_for

READY_TIMEOUT_SECONDS = 60.0


class DemoProcess:
    def __init__(self) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                "demo",
                "--web.listen-address",
                f"127.0.0.1:{self.port}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, name="demo-output")
        self._reader.start()

    def _read(self) -> None:
        if self.process.stdout is not None:
            self.lines.extend(iter(self.process.stdout.readline, ""))

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self) -> None:
        """Until the demo waits for Ctrl-C: it prints its report once every collector has run,
        so all is served by then."""
        wait_for(
            lambda: (
                any("press Ctrl-C" in line for line in self.lines)
                or self.process.poll() is not None
            ),
            timeout=READY_TIMEOUT_SECONDS,
            what="the demo to be ready",
        )
        assert self.process.poll() is None, self.output

    def postgres_port(self) -> int:
        """The port of the demo's embedded PostgreSQL, as it printed it."""
        found = re.search(r"PostgreSQL [\d.]+ is up on port (\d+)", self.output)
        assert found, self.output
        return int(found.group(1))

    def interrupt(self) -> int:
        """Ctrl-C; the exit code."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=60)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self._reader.join(timeout=10)
        self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


@contextmanager
def running_demo() -> Iterator[DemoProcess]:
    demo = DemoProcess()
    try:
        yield demo
    finally:
        demo.close()
