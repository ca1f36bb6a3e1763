"""The exporter as a real child process: started on a free port, its output kept, stopped."""

import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from support import REPO, free_port, wait_for

# `python -m exporter` with RLIMIT_NOFILE lowered first; the limit is the first argument.
_LIMITED = (
    "import resource, runpy, sys; limit = int(sys.argv.pop(1)); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)); "
    "runpy.run_module('exporter', run_name='__main__', alter_sys=True)"
)


class Daemon:
    """`python -m exporter --config FILE ...` with stdout and stderr collected line by line."""

    def __init__(
        self,
        config: Path | None,
        *args: str,
        env: dict[str, str] | None = None,
        cwd: Path = REPO,
        nofile: int | None = None,
    ) -> None:
        """`config` None: no --config (the target from the environment). `nofile`: the
        child's limit on open file descriptors (`ulimit -n`), set by the child itself before
        the exporter starts."""
        start = ["-m", "exporter"] if nofile is None else ["-c", _LIMITED, str(nofile)]
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                sys.executable,
                *start,
                *(["--config", str(config)] if config is not None else []),
                "--web.listen-address",
                f"127.0.0.1:{self.port}",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in (
                (self.process.stdout, self.stdout),
                (self.process.stderr, self.stderr),
            )
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: object, lines: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.append(line)

    def url(self, path: str = "/metrics") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str = "/metrics", timeout: float = 5.0) -> str | None:
        """The body, or None while the server is not answering yet."""
        try:
            with urllib.request.urlopen(self.url(path), timeout=timeout) as response:
                return str(response.read().decode())
        except (urllib.error.URLError, ConnectionError):
            if self.process.poll() is not None:
                raise AssertionError(f"exporter exited: {self.log()}") from None
            return None

    def wait_serving(self) -> None:
        wait_for(lambda: self.get("/healthz") is not None, what="the exporter serving")

    def hangup(self) -> None:
        self.process.send_signal(signal.SIGHUP)

    def log(self) -> str:
        return "".join(self.stderr)

    def lines_with(self, text: str) -> list[str]:
        return [line for line in self.stderr if text in line]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        for reader in self._readers:
            reader.join(timeout=10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        return self.process.returncode

    def __enter__(self) -> "Daemon":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
