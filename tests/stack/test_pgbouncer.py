"""PgBouncer monitoring against a real PgBouncer in front of a real PostgreSQL.

The exporter watches two targets, as users deploy it: the PostgreSQL server (`pg`) and the
PgBouncer in front of it (`bouncer`, type pgbouncer, connecting to its admin console as a
stats-only user). Problems are planted through PgBouncer: a full pool with a waiting client,
a paused and a disabled database, traffic with known query durations.
"""

import math
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from exporter.app import Exporter
from exporter.catalogue import CollectorSpec, builtin_specs
from exporter.collection import run_once
from exporter.config import Config, parse_config
from exporter.demo.embedded import LocalPostgres
from support import Samples, parse_exposition, scrape, value, wait_for
from support.pgbouncer import ADMIN_USER, LocalPgBouncer

PGBOUNCER_COLLECTORS = ("pgbouncer_pools", "pgbouncer_stats", "pgbouncer_databases")
# The PostgreSQL collectors these tests need; the other built-ins are not under test here.
POSTGRES_COLLECTORS = ("database", "connections")


@pytest.fixture
def bouncer(postgres: LocalPostgres, database: str) -> Iterator[LocalPgBouncer]:
    """PgBouncer with two databases on the same PostgreSQL database: `app` (session pooling,
    one server connection per pool) and `reports` (transaction pooling, default pool size)."""
    databases = {
        "app": f"dbname={database} pool_size=1",
        "reports": f"dbname={database} pool_mode=transaction",
    }
    with LocalPgBouncer(postgres, databases) as running:
        yield running


def two_targets(postgres: LocalPostgres, bouncer: LocalPgBouncer, interval: str = "1s") -> Config:
    wanted = {*PGBOUNCER_COLLECTORS, *POSTGRES_COLLECTORS}
    collectors = {
        name: {"enabled": name in wanted, "interval": interval, "timeout": interval}
        for name in builtin_specs()
    }
    return parse_config(
        {
            "up_interval": interval,
            "targets": [
                {"name": "pg", "dsn": postgres.dsn(), "connect_timeout": "2s"},
                {
                    "name": "bouncer",
                    "type": "pgbouncer",
                    "dsn": bouncer.dsn(),  # the admin console, as a stats-only user
                    "connect_timeout": "2s",
                },
            ],
            "collectors": collectors,
        }
    )


def collect(config: Config) -> Samples:
    return parse_exposition(run_once(config).body.decode())


def client(bouncer: LocalPgBouncer, dbname: str) -> psycopg.Connection[tuple[object, ...]]:
    """An application's connection through PgBouncer."""
    return psycopg.connect(
        bouncer.dsn(dbname, user=ADMIN_USER), autocommit=True, connect_timeout=10
    )


def pool(samples: Samples, metric: str, datname: str, **labels: str) -> float | None:
    return value(samples, f"pgbouncer_pools_{metric}", target="bouncer", datname=datname, **labels)


def test_pools_published_per_database_user_and_mode(
    postgres: LocalPostgres, bouncer: LocalPgBouncer
) -> None:
    with client(bouncer, "app") as app, client(bouncer, "reports") as reports:
        app.execute("SELECT 1")  # session pooling: the server stays with this client
        reports.execute("SELECT 1")  # transaction pooling: the server goes back to the pool
        samples = collect(two_targets(postgres, bouncer))

    session = {"usename": ADMIN_USER, "pool_mode": "session"}
    assert pool(samples, "client_active", "app", **session) == 1
    assert pool(samples, "server_active", "app", **session) == 1
    assert pool(samples, "server_idle", "app", **session) == 0
    transaction = {"usename": ADMIN_USER, "pool_mode": "transaction"}
    assert pool(samples, "client_active", "reports", **transaction) == 1
    assert pool(samples, "server_active", "reports", **transaction) == 0
    assert pool(samples, "server_idle", "reports", **transaction) == 1
    for datname in ("app", "reports"):
        assert pool(samples, "client_waiting", datname) == 0
        assert pool(samples, "max_wait_seconds", datname) == 0
        assert pool(samples, "server_used", datname) == 0
        assert pool(samples, "server_tested", datname) == 0
        assert pool(samples, "server_login", datname) == 0

    databases = {
        dict(labels)["datname"]: v
        for (name, labels), v in samples.items()
        if name == "pgbouncer_databases_pool_size"
    }
    # Every configured database, with its own pool_size or the default; plus the console.
    assert set(databases) == {"app", "reports", "pgbouncer"}
    assert (databases["app"], databases["reports"]) == (1, 5)
    # 1.18 calls the column reserve_pool; the metric keeps one name across versions.
    assert value(samples, "pgbouncer_databases_reserve_pool_size", datname="app") == 0
    assert value(samples, "pgbouncer_databases_current_connections", datname="app") == 1
    assert value(samples, "pgbouncer_databases_max_connections", datname="app") == 0


def test_each_collector_runs_only_on_its_kind_of_target(
    postgres: LocalPostgres, bouncer: LocalPgBouncer
) -> None:
    samples = collect(two_targets(postgres, bouncer))
    assert value(samples, "pg_up", target="bouncer") == 1
    assert value(samples, "pg_up", target="pg") == 1

    def ran(target: str) -> dict[str, float]:
        return {
            dict(labels)["collector"]: v
            for (name, labels), v in samples.items()
            if name == "pg_exporter_collector_up" and dict(labels)["target"] == target
        }

    assert ran("bouncer") == dict.fromkeys(PGBOUNCER_COLLECTORS, 1)
    assert ran("pg") == dict.fromkeys(POSTGRES_COLLECTORS, 1)

    def series_of(target: str) -> set[str]:
        return {name for name, labels in samples if ("target", target) in labels}

    own = ("pg_up", "pg_exporter_")  # the exporter's metrics about each target
    assert {
        n for n in series_of("bouncer") if n.startswith("pg_") and not n.startswith(own)
    } == set()
    assert {n for n in series_of("pg") if n.startswith("pgbouncer_")} == set()
    assert series_of("bouncer") >= {"pgbouncer_pools_client_active", "pgbouncer_databases_paused"}
    assert value(samples, "pg_database_xact_commit_total", target="pg", datname="postgres")
    assert value(samples, "pgbouncer_stats_queries_total", target="bouncer", datname="pgbouncer")


def test_waiting_client_is_flagged_in_its_pool_only(
    postgres: LocalPostgres, bouncer: LocalPgBouncer
) -> None:
    config = two_targets(postgres, bouncer)
    outcome: list[object] = []

    def wait_for_a_server() -> None:
        try:
            with client(bouncer, "app") as waiter:
                outcome.append(waiter.execute("SELECT 42").fetchone())
        except psycopg.Error as exc:  # reported by the assertion below
            outcome.append(exc)

    holder = client(bouncer, "app")
    waiter = threading.Thread(target=wait_for_a_server, daemon=True)
    try:
        holder.execute("SELECT 1")  # takes the app pool's only server connection, for good
        with client(bouncer, "reports") as reports:
            reports.execute("SELECT 1")  # a healthy pool next to it
            started = time.monotonic()
            waiter.start()

            def waited_a_second() -> Samples | None:
                samples = collect(config)
                wait = pool(samples, "max_wait_seconds", "app")
                return samples if wait is not None and wait >= 1.0 else None

            samples = wait_for(waited_a_second, timeout=20, what="a client waiting 1s in app")
            elapsed = time.monotonic() - started

            assert pool(samples, "client_waiting", "app", usename=ADMIN_USER) == 1
            assert pool(samples, "client_active", "app") == 1
            assert pool(samples, "server_active", "app") == 1
            wait = pool(samples, "max_wait_seconds", "app")
            assert wait is not None and wait <= elapsed
            # Whole seconds plus the microsecond part, not either alone.
            assert wait != math.floor(wait)
            assert pool(samples, "client_waiting", "reports") == 0
            assert pool(samples, "max_wait_seconds", "reports") == 0
    finally:
        holder.close()  # session pooling: the server passes to the waiting client
        waiter.join(timeout=30)
    assert outcome == [(42,)]

    samples = collect(config)
    assert pool(samples, "client_waiting", "app") == 0
    assert pool(samples, "max_wait_seconds", "app") == 0
    # The wait is counted once the client got its server.
    waited = value(samples, "pgbouncer_stats_client_wait_time_seconds_total", datname="app")
    assert waited is not None and 1.0 <= waited <= 30


def test_stats_count_queries_bytes_and_time(
    postgres: LocalPostgres, bouncer: LocalPgBouncer
) -> None:
    config = two_targets(postgres, bouncer)
    stop = threading.Event()
    errors: list[Exception] = []

    def sleepy_queries() -> None:
        try:
            with client(bouncer, "reports") as reports:
                while not stop.is_set():
                    reports.execute("SELECT pg_sleep(0.05)")
        except psycopg.Error as exc:
            errors.append(exc)

    worker = threading.Thread(target=sleepy_queries, daemon=True)
    with client(bouncer, "app"):  # connected, but runs nothing
        worker.start()
        try:

            def averaged() -> Samples | None:
                # Averages cover PgBouncer's last stats_period (1s here).
                samples = collect(config)
                average = value(
                    samples, "pgbouncer_stats_average_query_time_seconds", datname="reports"
                )
                return samples if average else None

            samples = wait_for(averaged, timeout=20, what="average query time of reports")
        finally:
            stop.set()
            worker.join(timeout=10)
    assert errors == []

    def stat(metric: str, datname: str) -> float:
        found = value(samples, f"pgbouncer_stats_{metric}", target="bouncer", datname=datname)
        assert found is not None, f"{metric} of {datname}"
        return found

    # Each query sleeps 50 ms: durations are in seconds, not PgBouncer's microseconds (50000).
    # A query still running may be counted before its time is, so bounds are loose.
    assert 0.01 <= stat("average_query_time_seconds", "reports") < 1.0
    assert 0.01 <= stat("average_transaction_time_seconds", "reports") < 1.0
    queries = stat("queries_total", "reports")
    assert queries >= 2
    assert stat("transactions_total", "reports") >= 2
    assert 0.045 * (queries - 1) <= stat("query_time_seconds_total", "reports") < queries
    assert stat("transaction_time_seconds_total", "reports") >= 0.045 * (queries - 1)
    assert stat("received_bytes_total", "reports") > 0
    assert stat("sent_bytes_total", "reports") > 0
    assert stat("client_wait_time_seconds_total", "reports") < 1.0
    # The idle application next to it.
    assert stat("queries_total", "app") == 0
    assert stat("query_time_seconds_total", "app") == 0
    assert stat("average_query_time_seconds", "app") == 0


def test_paused_and_disabled_databases_are_flagged(
    postgres: LocalPostgres, bouncer: LocalPgBouncer
) -> None:
    bouncer.admin("PAUSE app")
    bouncer.admin("DISABLE reports")
    samples = collect(two_targets(postgres, bouncer))

    def database(metric: str, datname: str) -> float | None:
        return value(samples, f"pgbouncer_databases_{metric}", target="bouncer", datname=datname)

    assert database("paused", "app") == 1
    assert database("disabled", "app") == 0
    assert database("paused", "reports") == 0
    assert database("disabled", "reports") == 1
    assert database("paused", "pgbouncer") == 0
    assert database("disabled", "pgbouncer") == 0


def test_pgbouncer_down_and_back_leaves_postgres_target_alone(
    postgres: LocalPostgres,
    bouncer: LocalPgBouncer,
    run_exporter: Callable[[Config], Exporter],
) -> None:
    exporter = run_exporter(two_targets(postgres, bouncer))
    port = exporter.server.port

    def bouncer_series() -> set[str]:
        return {
            name
            for name, labels in scrape(port, timeout=2)
            if name.startswith("pgbouncer_") and ("target", "bouncer") in labels
        }

    wait_for(lambda: "pgbouncer_pools_client_active" in bouncer_series(), what="pool metrics")

    bouncer.stop()
    wait_for(lambda: value(scrape(port, timeout=2), "pg_up", target="bouncer") == 0, what="down")
    # Its series leave /metrics once stale, so no alert fires on old numbers ...
    wait_for(lambda: not bouncer_series(), what="PgBouncer series dropped")
    # ... while the PostgreSQL target keeps being collected.
    samples = scrape(port, timeout=2)
    assert value(samples, "pg_up", target="pg") == 1
    assert value(samples, "pg_exporter_collector_up", target="pg", collector="database") == 1
    before = value(
        samples,
        "pg_exporter_collector_last_success_timestamp_seconds",
        target="pg",
        collector="database",
    )
    wait_for(
        lambda: (
            (
                value(
                    scrape(port, timeout=2),
                    "pg_exporter_collector_last_success_timestamp_seconds",
                    target="pg",
                    collector="database",
                )
                or 0
            )
            > (before or 0)
        ),
        what="PostgreSQL still collected",
    )

    bouncer.start()
    wait_for(lambda: value(scrape(port, timeout=2), "pg_up", target="bouncer") == 1, what="up")
    wait_for(lambda: "pgbouncer_pools_client_active" in bouncer_series(), what="pools again")


def test_add_and_aliases_name_real_columns() -> None:
    query: dict[str, object] = {"sql": "SHOW POOLS", "metrics": {}}

    def spec(metrics: dict[str, object]) -> CollectorSpec:
        return CollectorSpec.model_validate(
            {"help": "x", "target_type": "pgbouncer", "queries": [{**query, "metrics": metrics}]}
        )

    spec({"maxwait": {"usage": "gauge", "add": {"maxwait_us": 1e-6}}, "maxwait_us": "ignore"})
    with pytest.raises(ValueError, match="maxwait_us"):
        spec({"maxwait": {"usage": "gauge", "add": {"maxwait_us": 1e-6}}})
    with pytest.raises(ValueError, match="reserve_pool"):
        spec(
            {
                "reserve_pool_size": {"usage": "gauge", "aliases": ["reserve_pool"]},
                "reserve_pool": "ignore",
            }
        )
