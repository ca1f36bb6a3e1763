"""Faults the exporter must outlive: killed sessions, a stalled network, a full server.

In each, /metrics keeps answering (every scrape here has a 2 s deadline), the fault is
reported, and collection resumes by itself once the fault is gone.
"""

import logging
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import psycopg
import pytest

from exporter.app import Exporter
from exporter.collection import run_once
from exporter.config import Config
from exporter.demo.embedded import LocalPostgres
from support import RunExporter, exporter_config, parse_exposition, scrape, value, wait_for
from support.tcpproxy import StallingProxy

ROLE = "fault_monitor"
COLLECTORS = ("database", "connections", "tables")


def with_target(config: Config, **changes: object) -> Config:
    return config.model_copy(update={"targets": (config.targets[0].model_copy(update=changes),)})


def fast_config(dsn: str, **target: object) -> Config:
    # `tables` visits every database over the extra connection, so both kinds are in use.
    config = exporter_config(dsn, collectors={"tables": {"interval": "1s", "timeout": "1s"}})
    return with_target(config, **target)


@pytest.fixture
def monitor_role(postgres: LocalPostgres) -> Iterator[str]:
    """A pg_monitor role of these tests' own, so its sessions can be told from any other."""
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {ROLE}")
        conn.execute(f"CREATE ROLE {ROLE} LOGIN IN ROLE pg_monitor")
    yield ROLE


def exporter_sessions(postgres: LocalPostgres, role: str) -> list[int]:
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE usename = %s AND application_name = 'pg-health-exporter'",
            (role,),
        ).fetchall()
    return [int(row[0]) for row in rows]


@contextmanager
def session_count_sampler(
    postgres: LocalPostgres, role: str, killed: set[int] | None = None
) -> Iterator[list[int]]:
    """Counts the exporter's sessions every few milliseconds; yields the counts seen so far.

    Backends in `killed` (terminated by the test, possibly still exiting on a busy machine)
    are no longer the exporter's and are not counted.
    """
    counts: list[int] = []
    stop = threading.Event()
    gone = killed if killed is not None else set()

    def sample() -> None:
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            while not stop.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE usename = %s AND application_name = 'pg-health-exporter'"
                    " AND pid <> ALL(%s)",
                    (role, list(gone)),
                ).fetchone()
                counts.append(int(row[0]) if row else 0)
                stop.wait(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield counts
    finally:
        stop.set()
        thread.join(timeout=30)


def collected_since(port: int, since: float, *collectors: str) -> bool:
    samples = scrape(port, timeout=2)
    if value(samples, "pg_up", target="pg") != 1:
        return False
    for name in collectors:
        last = value(
            samples, "pg_exporter_collector_last_success_timestamp_seconds", collector=name
        )
        if last is None or last <= since:
            return False
    return True


def test_terminated_backends_reconnect_within_the_cap(
    postgres: LocalPostgres, monitor_role: str, run_exporter: RunExporter
) -> None:
    cap = 3
    exporter = run_exporter(fast_config(postgres.dsn(user=monitor_role), max_connections=cap))
    port = exporter.server.port
    wait_for(lambda: collected_since(port, 0, *COLLECTORS), what="first collection")
    terminated: set[int] = set()
    with session_count_sampler(postgres, monitor_role, terminated) as counts:
        for _ in range(3):
            killed = wait_for(
                lambda: exporter_sessions(postgres, monitor_role), what="the exporter's sessions"
            )
            terminated.update(killed)  # before they are killed: the sampler stops counting them
            with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) pid", (killed,)
                )
            since = time.time()
            wait_for(
                lambda: collected_since(port, since, *COLLECTORS),  # noqa: B023 (used at once)
                what="collection after the sessions were killed",
            )
            assert not set(killed) & set(exporter_sessions(postgres, monitor_role))
    assert counts and max(counts) <= cap, f"up to {max(counts)} sessions, cap {cap}"


def test_probe_takes_an_idle_pooled_sessions_place_quietly(
    postgres: LocalPostgres,
    monitor_role: str,
    run_exporter: RunExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With the visiting slot always busy, each probe's new login takes the idle pooled
    session's place: within the cap, the target up, and not a warning about it in the log;
    the visits' logins show in the self-metrics."""
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS slow_visit")
        conn.execute("CREATE DATABASE slow_visit")
    slow = {
        "help": "Holds the visiting slot.",
        "scope": "database",
        "databases": ["slow_visit"],
        "interval": "3s",
        "timeout": "3s",
        "queries": [{"sql": "SELECT 1 AS here FROM pg_sleep(2.5)", "metrics": {"here": "gauge"}}],
    }
    caplog.set_level(logging.INFO)
    cap = 2  # the pool's one session and the visiting slot
    config = exporter_config(postgres.dsn(user=monitor_role), collectors={"slow": slow})
    exporter = run_exporter(with_target(config, max_connections=cap))
    port = exporter.server.port
    with session_count_sampler(postgres, monitor_role) as counts:

        def replaced() -> bool:
            # Nothing else closes a pooled session here (no errors, none lost): a second
            # login by the pool means a probe closed the idle one to take its place, and a
            # collector opened it again when it next needed it.
            samples = scrape(port, timeout=2)
            opened = value(samples, "pg_exporter_pool_connections_opened_total", target="pg")
            return value(samples, "pg_up", target="pg") == 1 and (opened or 0) >= 2

        wait_for(replaced, timeout=60, what="a probe to take the pooled session's place")
    assert counts and max(counts) <= cap, f"up to {max(counts)} sessions, cap {cap}"
    samples = scrape(port, timeout=2)
    assert (value(samples, "pg_exporter_visit_logins_total", target="pg") or 0) > 0
    assert value(samples, "pg_exporter_pool_connections_lost_total", target="pg") == 0
    assert not [r for r in caplog.records if r.name.startswith("psycopg") and r.levelno >= 30]
    assert not [r for r in caplog.records if r.getMessage() == "target is down"]


def test_network_stall(postgres: LocalPostgres) -> None:
    with StallingProxy(postgres.port) as proxy:
        dsn = f"host=127.0.0.1 port={proxy.port} dbname=postgres user=postgres"
        exporter = Exporter(fast_config(dsn), listen_address="127.0.0.1:0")
        exporter.start()
        stopped = False
        try:
            port = exporter.server.port
            wait_for(lambda: collected_since(port, 0, *COLLECTORS), what="first collection")

            proxy.stall()
            # Connect timeouts and the reply deadline fire; pg_up goes to 0, and every scrape
            # meanwhile answers within its 2 s deadline.
            wait_for(
                lambda: value(scrape(port, timeout=2), "pg_up", target="pg") == 0,
                what="pg_up 0 during the stall",
            )
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                assert "pg — down" in response.read().decode()

            proxy.resume()
            since = time.time()
            wait_for(
                lambda: collected_since(port, since, *COLLECTORS),
                what="collection after the stall",
            )

            # Stopping while the network is stalled ends too: every wait is bounded, so jobs
            # caught in the stall (their queries sent, no reply coming) do not hold it up.
            proxy.stall()
            wait_for(
                lambda: value(scrape(port, timeout=2), "pg_up", target="pg") == 0,
                what="pg_up 0 during the second stall",
            )
            stopper = threading.Thread(target=exporter.stop)
            stopped = True  # from here on only the stopper stops it
            stopper.start()
            stopper.join(timeout=90)
            assert not stopper.is_alive(), "stop() hung on a stalled network"
        finally:
            proxy.resume()
            if not stopped:
                exporter.stop()


def test_server_out_of_connections() -> None:
    settings = {"max_connections": "12", "superuser_reserved_connections": "2"}
    with LocalPostgres(preload_libraries=(), settings=settings) as pg, ExitStack() as crowd:
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN IN ROLE pg_monitor")
            conn.execute("CREATE ROLE crowd LOGIN")
        exporter = Exporter(fast_config(pg.dsn(user=ROLE)), listen_address="127.0.0.1:0")
        exporter.start()
        try:
            port = exporter.server.port
            wait_for(lambda: collected_since(port, 0, *COLLECTORS), what="first collection")

            def fill() -> None:
                """Take every connection slot left for ordinary roles."""
                for _ in range(50):
                    try:
                        crowd.enter_context(psycopg.connect(pg.dsn(user="crowd")))
                    except psycopg.OperationalError:
                        return
                pytest.fail("the server kept accepting connections")

            def squeeze_out() -> bool:
                """Fill the server, end the exporter's sessions and take their slots too."""
                fill()
                killed = exporter_sessions(pg, ROLE)
                with psycopg.connect(pg.dsn(), autocommit=True) as conn:  # a reserved slot
                    conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) pid", (killed,)
                    )
                wait_for(
                    lambda: not set(killed) & set(exporter_sessions(pg, ROLE)),
                    what="the killed sessions gone",
                )
                fill()  # before the pool notices at its next checkout and reconnects
                return not exporter_sessions(pg, ROLE)

            wait_for(squeeze_out, what="the exporter squeezed out")

            wait_for(
                lambda: value(scrape(port, timeout=2), "pg_up", target="pg") == 0,
                what="pg_up 0 while the server is full",
            )
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                page = response.read().decode()
            assert "connection slots are reserved" in page or "too many clients" in page, page

            crowd.close()
            since = time.time()
            wait_for(
                lambda: collected_since(port, since, *COLLECTORS),
                what="collection once connections are free",
            )
        finally:
            exporter.stop()


def test_custom_collector_with_broken_sql_is_reported(postgres: LocalPostgres) -> None:
    broken = {
        "help": "Has a typo.",
        "queries": [{"sql": "SELEC 1 AS x", "metrics": {"x": "gauge"}}],
    }
    samples = parse_exposition(
        run_once(exporter_config(postgres.dsn(), collectors={"typo": broken})).body.decode()
    )
    assert value(samples, "pg_exporter_collector_up", collector="typo") == 0
    assert value(samples, "pg_exporter_collector_errors_total", collector="typo") == 1
    assert value(samples, "pg_exporter_collector_up", collector="database") == 1


def test_an_unreachable_target_is_detected_within_connect_timeout(
    postgres: LocalPostgres,
) -> None:
    # README ("When things fail"): the probe's connect attempt is bounded by connect_timeout.
    # A stalled proxy accepts the connection and never answers, like a hung middlebox.
    connect_timeout = 2.0
    with StallingProxy(postgres.port) as proxy:
        proxy.stall()
        dsn = f"host=127.0.0.1 port={proxy.port} dbname=postgres user=postgres"
        config = fast_config(dsn, connect_timeout=connect_timeout)
        started = time.monotonic()
        with Exporter(config, listen_address="127.0.0.1:0") as exporter:

            def down() -> bool:
                status = exporter.store.targets().get("pg")
                return status is not None and not status.up and bool(status.message)

            wait_for(down, timeout=connect_timeout + 10, what="the target marked down")
            elapsed = time.monotonic() - started
    # The attempt itself, plus scheduling: well under the 5 s default or a second attempt.
    assert elapsed < connect_timeout + 1.5, elapsed
