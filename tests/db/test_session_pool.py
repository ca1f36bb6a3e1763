"""The connection pool without threads (exporter/targets/pool.py) and a target's use of it, on
a real server."""

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from exporter.app import Exporter
from exporter.config import Config
from exporter.demo.embedded import LocalPostgres
from exporter.errors import PoolBusy
from exporter.targets.connection_cap import ConnectionCap
from exporter.targets.pool import PoolClosed, PoolConnectFailed, PoolTimeout, SessionPool
from exporter.targets.sessions import TargetConnections
from support import exporter_config, fresh_database, scrape, value, wait_for

pytestmark = pytest.mark.any_major

NAME = "session-pool-test"


def sessions(postgres: LocalPostgres) -> int:
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (NAME,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def pool_of(postgres: LocalPostgres, size: int, **options: Any) -> SessionPool[Any]:
    dsn = postgres.dsn()
    return SessionPool(
        lambda: psycopg.connect(dsn, application_name=NAME), max_size=size, **options
    )


def test_sessions_are_opened_on_demand_reused_and_capped(postgres: LocalPostgres) -> None:
    before = threading.active_count()
    pool = pool_of(postgres, 2)
    assert sessions(postgres) == 0  # nothing opened ahead of a need
    with pool.connection(1) as first:
        first.execute("SELECT 1")
    with pool.connection(1) as again:
        assert again is first  # an idle session is reused, not a new login
    with pool.connection(1) as one, pool.connection(1) as two:
        assert one is not two
        assert sessions(postgres) == 2
        with pytest.raises(PoolTimeout):
            pool.getconn(0.2)  # a third: the cap holds
    stats = pool.get_stats()
    assert stats["connections_num"] == 2 and stats["pool_size"] == 2
    assert stats["requests_num"] == 5 and stats["requests_errors"] == 1
    assert stats["requests_queued"] == 1 and stats["pool_available"] == 2
    assert threading.active_count() == before  # no threads of its own
    pool.close()
    assert wait_for(lambda: sessions(postgres) == 0, timeout=10)


def test_a_waiter_gets_the_session_returned(postgres: LocalPostgres) -> None:
    pool = pool_of(postgres, 1)
    held = pool.getconn(1)
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(pool.getconn(10)))
    waiter.start()
    assert wait_for(lambda: pool.get_stats()["requests_waiting"] == 1, timeout=10)
    pool.putconn(held)
    waiter.join(10)
    assert got == [held]
    pool.putconn(got[0])
    pool.close()


def test_a_broken_session_is_replaced_at_checkout(postgres: LocalPostgres) -> None:
    pool = pool_of(postgres, 1)
    with pool.connection(1) as conn:
        pid = conn.info.backend_pid
    with psycopg.connect(postgres.dsn(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pool.connection(5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.info.backend_pid != pid
    assert pool.get_stats()["connections_lost"] == 1
    pool.close()


def test_an_open_transaction_is_rolled_back_on_return(postgres: LocalPostgres) -> None:
    pool = pool_of(postgres, 1)
    with pool.connection(1) as conn:
        conn.execute("SELECT 1")  # autocommit off: a transaction is open
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with pool.connection(1) as again:
        assert again is conn
    pool.close()


def test_a_failed_login_says_why_at_once(postgres: LocalPostgres) -> None:
    dsn = postgres.dsn(user="no_such_role")
    pool: SessionPool[Any] = SessionPool(lambda: psycopg.connect(dsn), max_size=1)
    with pytest.raises(PoolConnectFailed, match="no_such_role"):
        pool.getconn(5)
    stats = pool.get_stats()
    assert stats["connections_errors"] == 1 and stats["pool_size"] == 0  # the place is free


def test_idle_sessions_beyond_one_age_out(postgres: LocalPostgres) -> None:
    now = [0.0]
    pool = pool_of(postgres, 2, max_idle=60, clock=lambda: now[0])
    with pool.connection(1), pool.connection(1):
        pass
    assert pool.get_stats()["pool_available"] == 2
    now[0] = 61
    with pool.connection(1):
        # The older idle session was closed; the latest is the one in use.
        assert pool.get_stats()["pool_size"] == 1
    assert wait_for(lambda: sessions(postgres) == 1, timeout=10)
    pool.close()


def test_a_place_for_a_session_of_ones_own_stays_within_the_cap(postgres: LocalPostgres) -> None:
    pool = pool_of(postgres, 1)
    with pool.connection(1):
        pass  # one idle session
    with pool.place(1) as had:
        assert had
        assert pool.get_stats()["pool_available"] == 0  # the idle session made room
        assert wait_for(lambda: sessions(postgres) == 0, timeout=10)
        with pytest.raises(PoolTimeout):
            pool.getconn(0.1)  # the place is lent out
    with pool.connection(1):
        pass  # and back
    with pool.connection(1), pool.place(0.1) as had:
        assert not had  # every place in use
    pool.close()


def test_a_closed_pool_refuses_and_closes_what_comes_back(postgres: LocalPostgres) -> None:
    pool = pool_of(postgres, 1)
    conn = pool.getconn(1)
    pool.close()
    with pytest.raises(PoolClosed):
        pool.getconn(1)
    pool.putconn(conn)
    assert conn.closed


def test_the_last_place_goes_to_one_caller_at_once(postgres: LocalPostgres) -> None:
    """getconn_now tests for room and takes it in one step: of callers that ask together,
    one has the place and the others hear None at once (no wait, no error counted)."""
    freed: list[int] = []
    pool = pool_of(postgres, 1, on_free=lambda: freed.append(1))
    start = threading.Barrier(4)
    got: list[Any] = []

    def ask() -> None:
        start.wait(10)
        got.append(pool.getconn_now())

    askers = [threading.Thread(target=ask) for _ in range(4)]
    for asker in askers:
        asker.start()
    for asker in askers:
        asker.join(10)
    sessions_had = [conn for conn in got if conn is not None]
    assert len(got) == 4 and len(sessions_had) == 1, got
    assert pool.get_stats()["requests_errors"] == 0
    pool.putconn(sessions_had[0])
    assert freed  # a caller waiting on something else as well hears of the return
    pool.close()


def test_a_first_run_takes_whichever_frees_first(postgres: LocalPostgres) -> None:
    """A collector's first run on the own database waits for a pooled session or the
    visiting slot, whichever comes free first: here the slot, while the pool's one session
    stays in use."""
    target = exporter_config(postgres.dsn()).targets[0]
    assert target.max_connections == 2  # one pooled session and the visiting slot
    connections = TargetConnections(target)
    had: list[int] = []

    def first_run() -> None:
        with connections.connection(wait_seconds=10, spare=True) as conn:
            had.append(conn.info.backend_pid)

    runner = threading.Thread(target=first_run)
    try:
        with connections.connection(wait_seconds=5) as pooled:
            with connections.connection("postgres", wait_seconds=5):
                runner.start()
                assert wait_for(lambda: connections.waiting_for_either == 1, timeout=10)
            runner.join(10)  # the visit ended; the pooled session is still in use
            assert had and had[0] != pooled.info.backend_pid, had
    finally:
        connections.close()
        runner.join(10)


def server_now(postgres: LocalPostgres) -> Any:
    with psycopg.connect(postgres.dsn()) as conn:
        row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]


def backends(postgres: LocalPostgres, since: Any) -> int:
    """The exporter's sessions on the server (pg_stat_activity) opened since `since`."""
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = 'pg-health-exporter' AND backend_start >= %s",
            (since,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_the_process_cap_closes_the_least_recently_used_idle_session(
    postgres: LocalPostgres,
) -> None:
    """max_connections_total, across targets: a new session past it closes the idle session
    used least recently, whichever target holds it; with none idle it waits for one."""
    config = exporter_config(postgres.dsn())
    since = server_now(postgres)
    cap = ConnectionCap(2)
    a, b, c = (
        TargetConnections(config.targets[0].model_copy(update={"name": name}), cap)
        for name in "abc"
    )
    try:
        with a.connection(wait_seconds=5) as used_by_a:
            pid_a = used_by_a.info.backend_pid
        with b.connection(wait_seconds=5) as used_by_b:
            pid_b = used_by_b.info.backend_pid
        assert cap.stats() == {"max": 2, "open": 2, "closed_for_room": 0}
        with c.connection(wait_seconds=5):  # a's session was idle longest: it goes
            assert cap.stats() == {"max": 2, "open": 2, "closed_for_room": 1}
            assert backends(postgres, since) == 2
        with b.connection(wait_seconds=5) as again:
            assert again.info.backend_pid == pid_b  # b kept its session
        with a.connection(wait_seconds=5) as again:
            assert again.info.backend_pid != pid_a  # a logs in anew; c's session went
        assert cap.stats()["closed_for_room"] == 2

        # Both sessions in use: a third target waits until one comes back idle.
        had: list[int] = []

        def third() -> None:
            with c.connection(wait_seconds=5) as conn:
                had.append(conn.info.backend_pid)

        waiter = threading.Thread(target=third)
        with a.connection(wait_seconds=5), b.connection(wait_seconds=5) as used_by_b:
            waiter.start()
            assert wait_for(lambda: cap.waiting == 1, timeout=10)
            assert backends(postgres, since) == 2
        waiter.join(10)
        assert had and cap.stats()["open"] == 2
        assert backends(postgres, since) == 2

        # ... and fails, naming the cap, when none does in time (connect_timeout).
        with (
            a.connection(wait_seconds=5),
            b.connection(wait_seconds=5),
            pytest.raises(PoolBusy, match="max_connections_total"),
            c.connection(wait_seconds=5),
        ):
            pass
    finally:
        for connections in (a, b, c):
            connections.close()
    assert wait_for(lambda: cap.stats()["open"] == 0, timeout=10)


def test_more_targets_than_the_process_cap_all_collect_within_it(
    postgres: LocalPostgres, run_exporter: Callable[[Config], Exporter]
) -> None:
    """Eight targets, a cap of six sessions for the process (the least it may be: two
    workers and four probes): every target is up and collected, the exporter never holds
    more than six sessions (its gauge, and the server's pg_stat_activity), and it says that
    it closed idle sessions to stay within them."""
    since = server_now(postgres)
    names = [f"t{n}" for n in range(8)]
    config = exporter_config(
        postgres.dsn(),
        workers=2,
        max_connections_total=6,
        targets=[{"name": name, "dsn": postgres.dsn(), "connect_timeout": "2s"} for name in names],
    )
    port = run_exporter(config).server.port
    most_held = 0

    def every_target_collected() -> bool:
        nonlocal most_held
        most_held = max(most_held, backends(postgres, since))
        samples = scrape(port)
        held = value(samples, "pg_exporter_connections_open")
        assert held is not None and held <= 6
        return all(
            value(samples, "pg_up", target=name) == 1
            and all(
                value(samples, "pg_exporter_collector_up", target=name, collector=collector) == 1
                for collector in ("database", "connections")
            )
            for name in names
        )

    wait_for(every_target_collected, timeout=60, what="every target up and collected")
    samples = scrape(port)
    assert value(samples, "pg_exporter_connections_max") == 6
    closed = value(samples, "pg_exporter_connections_closed_for_room_total")
    assert closed is not None and closed > 0
    assert 0 < most_held <= 6


def test_a_visited_database_can_be_dropped_right_after_the_visit(postgres: LocalPostgres) -> None:
    """No session is left open on a visited database: a plain DROP DATABASE (no FORCE), which
    fails while any session is connected to it, succeeds as soon as the visit ended."""
    target = exporter_config(postgres.dsn()).targets[0]
    connections = TargetConnections(target)
    try:
        with fresh_database(postgres) as name:
            with connections.connection(name, wait_seconds=5) as conn:
                conn.execute("SELECT 1")
            with psycopg.connect(postgres.dsn(), autocommit=True) as admin:
                admin.execute(f'DROP DATABASE "{name}"')
        assert connections.stats()["visits_logins"] == 1
    finally:
        connections.close()
