"""/probe against real PostgreSQL: a target registered by its first probe, served from memory
(its own series only), refused when not allowed or over the cap, dropped when nobody asks."""

import gzip
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest

from exporter.app import Exporter
from exporter.catalogue import builtin_specs
from exporter.config import Config, parse_config
from exporter.demo.embedded import LocalPostgres
from exporter.web.basicauth import BasicAuth
from exporter.web.config import OPEN, WebSecurity
from support import RunExporter, Samples, parse_exposition, scrape, value, wait_for
from support.auth import password_role

# What is probed does not depend on the PostgreSQL major.
pytestmark = pytest.mark.any_major

FAST = {"interval": "1s", "timeout": "1s"}


def probe_config(targets: list[dict[str, Any]] | None = None, **probe: Any) -> Config:
    """/probe for 127.0.0.0/8 only (no configured target unless given), the fast collectors
    every second."""
    running = {"database": FAST, "connections": FAST}
    return parse_config(
        {
            "targets": targets or [],
            "up_interval": "1s",
            "collectors": {n: running.get(n, {"enabled": False}) for n in builtin_specs()},
            "probe": {"allow": ["127.0.0.0/8"], **probe},
            "auth_modules": {"default": {"user": "postgres", "connect_timeout": "2s"}},
        }
    )


def probe(port: int, target: str, **params: str) -> tuple[int, str]:
    """GET /probe: the status and the (decompressed) body, refusals included."""
    query = urllib.parse.urlencode({"target": target, **params})
    request = urllib.request.Request(f"http://127.0.0.1:{port}/probe?{query}")
    request.add_header("Accept-Encoding", "gzip")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            body: bytes = response.read()
            if response.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            return response.status, body.decode()
    except urllib.error.HTTPError as refused:
        with refused:
            return refused.code, refused.read().decode()


def probed(port: int, target: str, **params: str) -> Samples:
    status, body = probe(port, target, **params)
    assert status == 200, body
    return parse_exposition(body)


def address(server: LocalPostgres) -> str:
    return f"127.0.0.1:{server.port}"


def sessions(server: LocalPostgres) -> int:
    with psycopg.connect(server.dsn()) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg-health-exporter'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_the_first_probe_registers_later_probes_serve_its_own_series(
    postgres: LocalPostgres, private_postgres: LocalPostgres, run_exporter: RunExporter
) -> None:
    port = run_exporter(probe_config()).server.port
    shared, private = address(postgres), address(private_postgres) + "/template1"

    first = probed(port, shared)  # at once: nothing collected yet
    assert value(first, "pg_up", target=shared) == 0
    assert value(first, "pg_exporter_target_pending", target=shared) == 1

    def collected(target: str) -> Samples | None:
        samples = probed(port, target)
        ready = value(samples, "pg_up", target=target) == 1 and value(
            samples, "pg_connections_max", target=target
        )
        return samples if ready else None

    probed(port, private)
    mine = wait_for(lambda: collected(shared), what="the shared server's series by /probe")
    theirs = wait_for(lambda: collected(private), what="the private server's series by /probe")
    assert value(mine, "pg_exporter_target_pending", target=shared) == 0
    assert {dict(labels).get("target") for (_, labels) in mine} == {shared, None}  # build_info
    assert {dict(labels).get("target") for (_, labels) in theirs} == {private, None}

    # The probe's database is the target's: its sessions sit in template1. (Waited for: a
    # probe that finds the visiting slot taken, by a first run at start, closes the pool's
    # idle session for its own login, and the next collector run opens it again.)
    def in_template1() -> bool:
        with psycopg.connect(private_postgres.dsn()) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = 'pg-health-exporter' AND datname = 'template1'"
            ).fetchone()
        return row is not None and row[0] >= 1

    wait_for(in_template1, timeout=10, what="the exporter's session in template1")
    # /metrics has both, as it has every target.
    everything = scrape(port)
    assert value(everything, "pg_up", target=shared) == 1
    assert value(everything, "pg_up", target=private) == 1


def test_configured_and_probed_targets_coexist(
    postgres: LocalPostgres, run_exporter: RunExporter
) -> None:
    config = probe_config([{"name": "static", "dsn": postgres.dsn(), "connect_timeout": "2s"}])
    port = run_exporter(config).server.port
    target = address(postgres)
    probe(port, target)
    wait_for(
        lambda: value(probed(port, target), "pg_connections_max", target=target),
        what="the probed target collected",
    )

    def both() -> Samples | None:
        samples = scrape(port)
        ready = all(value(samples, "pg_connections_max", target=t) for t in ("static", target))
        return samples if ready else None

    wait_for(both, what="both targets in /metrics")
    assert {dict(labels).get("target") for (_, labels) in probed(port, target)} == {target, None}
    assert probe(port, "static")[0] == 403  # a configured target's name is not an address


def test_refusals(postgres: LocalPostgres, run_exporter: RunExporter) -> None:
    port = run_exporter(probe_config(max_targets=1)).server.port
    status, body = probe(port, f"localhost:{postgres.port}")  # a name: never resolved
    assert (status, body) == (
        403,
        f"target 'localhost:{postgres.port}' is not allowed by probe.allow\n",
    )
    status, body = probe(port, address(postgres), auth_module="nope")
    assert (status, body) == (400, "auth module 'nope' in auth_modules (configured: default)\n")
    status, body = probe(port, "127.0.0.1:5432?sslmode=disable")
    assert status == 400 and "is not HOST:PORT[/DATABASE]" in body
    assert probe(port, address(postgres))[0] == 200
    status, body = probe(port, address(postgres) + "/template1")
    assert status == 503 and "probe.max_targets" in body
    # Refused probes register nothing.
    assert {dict(labels)["target"] for (n, labels) in scrape(port) if n == "pg_up"} == {
        address(postgres)
    }


def test_probe_is_off_without_an_allow_list(
    postgres: LocalPostgres, run_exporter: RunExporter
) -> None:
    config = parse_config({"targets": [{"name": "pg", "dsn": postgres.dsn()}]})
    port = run_exporter(config).server.port
    status, body = probe(port, address(postgres))
    assert status == 404 and "probe.allow" in body


def test_an_idle_target_is_dropped_with_its_sessions(
    private_postgres: LocalPostgres, run_exporter: RunExporter
) -> None:
    port = run_exporter(probe_config(idle_timeout="2s")).server.port
    target = address(private_postgres)
    probe(port, target)
    wait_for(
        lambda: (
            value(probed(port, target), "pg_up", target=target) == 1 and sessions(private_postgres)
        ),
        what="the probed target collected",
    )
    # Nobody probes it any more.
    wait_for(
        lambda: value(scrape(port), "pg_up", target=target) is None,
        what="the idle target gone from /metrics",
    )
    wait_for(lambda: sessions(private_postgres) == 0, what="its sessions ended")
    # A later probe registers it anew.
    first = probed(port, target)
    assert value(first, "pg_exporter_target_pending", target=target) == 1


def test_password_from_a_password_file(
    private_postgres: LocalPostgres, run_exporter: RunExporter, tmp_path: Path
) -> None:
    password_role(private_postgres, "prober", "pr0be-secret")
    secret = tmp_path / "password"
    secret.write_text("pr0be-secret\n")
    secret.chmod(0o600)
    config = parse_config(
        {
            "up_interval": "1s",
            "collectors": {n: {"enabled": n == "database"} for n in builtin_specs()},
            "probe": {"allow": ["127.0.0.1"]},
            "auth_modules": {
                "default": {"user": "postgres"},
                "file": {"user": "prober", "password_file": str(secret), "connect_timeout": "2s"},
            },
        }
    )
    port = run_exporter(config).server.port
    target = address(private_postgres)
    probe(port, target, auth_module="file")
    wait_for(
        lambda: value(probed(port, target, auth_module="file"), "pg_up", target=target) == 1,
        what="pg_up 1 with the password from the file",
    )


def test_basic_auth_and_reload_apply_to_probe(postgres: LocalPostgres) -> None:
    """In-process: /probe is behind the same web config as /metrics; a reload keeps a probed
    target it does not change and drops one it no longer allows."""
    config = probe_config()
    exporter = Exporter(config, listen_address="127.0.0.1:0")
    exporter.start()
    try:
        port, target = exporter.server.port, address(postgres)
        assert probe(port, target)[0] == 200
        exporter.apply(config, WebSecurity(auth=BasicAuth({"u": b"$2b$04$" + b"x" * 53})))
        assert probe(port, target)[0] == 401
        changes = exporter.apply(config, OPEN)
        assert changes.probes_dropped == ()
        assert exporter.probed.names() == [target]
        changes = exporter.apply(probe_config(allow=["10.0.0.0/8"]), OPEN)
        assert changes.probes_dropped == (target,)
        assert value(scrape(port), "pg_up", target=target) is None
        assert probe(port, target)[0] == 403
    finally:
        exporter.stop()
