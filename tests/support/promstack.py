"""A real Prometheus and Alertmanager for end-to-end tests, and a webhook receiver.

The binaries are Debian's (`prometheus`, `prometheus-alertmanager`, which `make test` unpacks
into .cache/tools). Each runs in the foreground on a free 127.0.0.1 port with its
config and storage in a temporary directory of its own; readiness is awaited on its
`/-/ready` endpoint with a deadline, and a process that exits early fails at once with the
tail of its log.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

from support import free_port

_START_TIMEOUT_SECONDS = 60.0


class StackError(Exception):
    """A Prometheus or Alertmanager process did not start; the message has its log tail."""


def find_binary(*candidates: str) -> str | None:
    for name in candidates:
        found = shutil.which(name)
        if found:
            return found
    return None


def http_get_json(url: str, *, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


class _Process:
    """A server binary with a temporary directory, started in the foreground."""

    name = "server"

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.log_path = self.directory / f"{self.name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,
            )
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            # Waiting on the process is the pause between attempts, and notices it exiting.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=0.1)
            if self._process.poll() is not None:
                raise StackError(
                    f"{self.name} exited with {self._process.returncode}:\n{self.log_tail()}"
                )
        self.stop()
        raise StackError(
            f"{self.name} not ready within {_START_TIMEOUT_SECONDS:.0f}s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.cleanup()


class LocalAlertmanager(_Process):
    """Alertmanager routing every alert to one webhook, with short grouping delays."""

    name = "alertmanager"

    def __init__(self, webhook_url: str, *, binary: str | None = None) -> None:
        found = binary or find_binary("prometheus-alertmanager", "alertmanager")
        if found is None:
            raise StackError(
                "alertmanager is not installed: `make test` unpacks it into .cache/tools "
                "(or run .ci/install-tools.sh prometheus-alertmanager)"
            )
        super().__init__(found)
        config = {
            "route": {
                "receiver": "webhook",
                "group_by": ["alertname", "target"],
                "group_wait": "1s",
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            "receivers": [{"name": "webhook", "webhook_configs": [{"url": webhook_url}]}],
        }
        (self.directory / "alertmanager.yml").write_text(yaml.safe_dump(config))

    def argv(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.directory / 'alertmanager.yml'}",
            f"--storage.path={self.directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            # A lone test instance: no gossip port to bind, no peers to wait for.
            "--cluster.listen-address=",
        ]


class LocalPrometheus(_Process):
    """Prometheus scraping `targets` every `interval`, with `rule_files` evaluated as often."""

    name = "prometheus"

    def __init__(
        self,
        targets: Sequence[str],
        *,
        rule_files: Sequence[Path] = (),
        alertmanager_url: str | None = None,
        interval: str = "1s",
        binary: str | None = None,
        scrape_configs: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        """`scrape_configs`, when given, replace the one job scraping `targets`."""
        found = binary or find_binary("prometheus")
        if found is None:
            raise StackError(
                "prometheus is not installed: `make test` unpacks it into .cache/tools "
                "(or run .ci/install-tools.sh prometheus)"
            )
        super().__init__(found)
        config: dict[str, Any] = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": list(scrape_configs)
            if scrape_configs is not None
            else [
                {"job_name": "pg-health-exporter", "static_configs": [{"targets": list(targets)}]}
            ],
        }
        if alertmanager_url:
            host = urllib.parse.urlsplit(alertmanager_url).netloc
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [host]}]}]}
        (self.directory / "prometheus.yml").write_text(yaml.safe_dump(config))

    def argv(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar as one element) of a PromQL expression, now."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            answer = http_get_json(url)
        except urllib.error.HTTPError as exc:
            raise AssertionError(
                f"query {expr!r} failed: {exc.read().decode(errors='replace')}"
            ) from None
        data = answer["data"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def rules(self) -> list[dict[str, Any]]:
        groups = http_get_json(f"{self.url}/api/v1/rules")["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = http_get_json(f"{self.url}/api/v1/alerts")["data"]["alerts"]
        return alerts


class WebhookReceiver:
    """An HTTP server that records every JSON body POSTed to it (Alertmanager's webhook)."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                with receiver._lock:
                    receiver.payloads.append(body)
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test reports what it needs

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/alerts"

    def received(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.payloads)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
