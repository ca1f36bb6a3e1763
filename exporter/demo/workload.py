"""A small SaaS application's database with every problem the exporter detects, planted on purpose.

Used by `pg-health-exporter demo` and by tests that need a realistic unhealthy database:

    planted = plant_problems(dsn)          # synchronous: schema, seed data, planted problems
    with Workload(dsn, idle_connections=5):  # background: idle-in-transaction session,
        ...                                #   idle connections, slow statements, table scans

`plant_problems` (re)creates the schema in the DSN's database (its own tables only, in
`public`), seeds rows that keep referential integrity, plants the problems and waits until the
statistics views show them, so a collection right after it flags every one. Run it before
starting a `Workload` (or any session that keeps a transaction open in that database): the
invalid index comes from a CREATE INDEX CONCURRENTLY, which waits for such transactions.

The seed is kept small so the demo starts in seconds. Some collectors' default thresholds are
meant for production sizes (an unused index of at least 1 MiB, bloat of at least 100 MiB);
`Planted.collector_params` holds the lower thresholds under which these tables are flagged, to
be passed as the collectors' `params` in the exporter's config.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

Connection = psycopg.Connection[tuple[Any, ...]]
Progress = Callable[[str], None]

SCHEMA = "public"
TABLES = ("organizations", "users", "subscriptions", "reports", "trial_tokens", "events")

# Seed sizes: just above what the checks need with `COLLECTOR_PARAMS` and the defaults.
ORGANIZATIONS = 200
USERS = 4_000
SUBSCRIPTIONS_PER_ORGANIZATION = 2
REPORTS = 15_000
# index_health's missing_index_min_rows is 10,000 by default.
TRIAL_TOKENS = 12_000
# Tokens were meant to be unique, but a few are not: the unique index build fails on them.
DISTINCT_TOKENS = TRIAL_TOKENS - 100
# index_health's missing_index_min_seq_scans is 50 by default.
TOKEN_LOOKUPS = 60
EVENTS = 20_000
# Three quarters of the events are purged with autovacuum off for the table: 15,000 dead rows
# (tables' dead_tuples_min is 10,000 by default) and about 75% of the table is bloat.
EVENTS_KEPT_EVERY = 4
SLOW_STATEMENT_SECONDS = 0.75

# The thresholds these table sizes need; everything not listed keeps its default.
COLLECTOR_PARAMS: dict[str, dict[str, int | float]] = {
    # The unused index is about 0.5 MiB; the default (1 MiB) suits production indexes.
    "index_health": {"unused_min_bytes": 64 * 1024},
    # The bloated table is about 5 MiB; the defaults consider 10 MiB and flag 100 MiB.
    "bloat": {"min_bytes": 1024 * 1024, "flag_bytes": 1024 * 1024},
}

# The "monthly usage report": pg_sleep stands in for the heavy plan it would need on a large
# data set, so the statement is slow on any machine. MATERIALIZED: the sleep runs once.
SLOW_STATEMENT = """
WITH pause AS MATERIALIZED (SELECT pg_sleep(%s))
SELECT o.plan, count(*) AS reports, max(r.created_at) AS newest
FROM organizations AS o
JOIN reports AS r ON r.organization_id = o.id
CROSS JOIN pause
WHERE r.definition ->> 'kind' = 'usage'
GROUP BY o.plan
"""
# The lookup that reads the whole table each time: trial_tokens has no valid index on token.
TOKEN_LOOKUP = "SELECT id, user_id, expires_at FROM trial_tokens WHERE token = %s"

_DROP = "DROP TABLE IF EXISTS " + ", ".join(TABLES) + " CASCADE"

_CREATE = [
    """CREATE TABLE organizations (
         id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
         name text NOT NULL,
         plan text NOT NULL,
         settings jsonb NOT NULL DEFAULT '{}',
         created_at timestamptz NOT NULL DEFAULT now())""",
    """CREATE TABLE users (
         id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
         organization_id uuid NOT NULL REFERENCES organizations,
         email text NOT NULL UNIQUE,
         name text NOT NULL,
         profile jsonb NOT NULL DEFAULT '{}',
         created_at timestamptz NOT NULL DEFAULT now(),
         last_login_at timestamptz)""",
    "CREATE INDEX users_organization_id_idx ON users (organization_id)",
    """CREATE TABLE subscriptions (
         id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
         organization_id uuid NOT NULL REFERENCES organizations,
         plan text NOT NULL,
         status text NOT NULL,
         current_period_end timestamptz NOT NULL,
         metadata jsonb NOT NULL DEFAULT '{}')""",
    "CREATE INDEX subscriptions_organization_id_idx ON subscriptions (organization_id)",
    # organization_id has no index: the unindexed foreign key.
    """CREATE TABLE reports (
         id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
         organization_id uuid NOT NULL REFERENCES organizations,
         created_by uuid NOT NULL REFERENCES users,
         title text NOT NULL,
         status text NOT NULL,
         definition jsonb NOT NULL,
         created_at timestamptz NOT NULL DEFAULT now())""",
    "CREATE INDEX reports_created_by_idx ON reports (created_by, created_at)",
    """CREATE TABLE trial_tokens (
         id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
         user_id uuid NOT NULL REFERENCES users,
         token text NOT NULL,
         expires_at timestamptz NOT NULL,
         created_at timestamptz NOT NULL DEFAULT now())""",
    "CREATE INDEX trial_tokens_user_id_idx ON trial_tokens (user_id)",
    # Someone switched autovacuum off for the events table to speed up an import, and the
    # nightly purge has been leaving dead rows behind ever since: the bloated table.
    """CREATE TABLE events (
         id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
         user_id uuid NOT NULL REFERENCES users,
         kind text NOT NULL,
         payload jsonb NOT NULL,
         created_at timestamptz NOT NULL DEFAULT now()
       ) WITH (autovacuum_enabled = false, toast.autovacuum_enabled = false)""",
    "CREATE INDEX events_user_id_idx ON events (user_id)",
]

# Numbered views of the parents, so children can pick a parent by number and keep integrity.
_SEED = [
    f"""INSERT INTO organizations (name, plan, settings, created_at)
        SELECT 'Organization ' || g, (ARRAY['free', 'team', 'business'])[1 + g % 3],
               jsonb_build_object('seats', 5 + g % 50, 'sso', g % 4 = 0, 'region',
                                  (ARRAY['eu', 'us', 'ap'])[1 + g % 3]),
               now() - make_interval(days => g)
        FROM generate_series(1, {ORGANIZATIONS}) AS g""",
    f"""WITH orgs AS (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM organizations)
        INSERT INTO users (organization_id, email, name, profile, created_at, last_login_at)
        SELECT orgs.id, 'user' || g || '@example.com', 'User ' || g,
               jsonb_build_object('locale', (ARRAY['en', 'de', 'fr', 'ja'])[1 + g % 4],
                                  'theme', CASE WHEN g % 3 = 0 THEN 'dark' ELSE 'light' END),
               now() - make_interval(days => g % 365),
               now() - make_interval(hours => g % 2000)
        FROM generate_series(1, {USERS}) AS g
        JOIN orgs ON orgs.n = g % {ORGANIZATIONS}""",
    f"""INSERT INTO subscriptions (organization_id, plan, status, current_period_end, metadata)
        SELECT o.id, o.plan, CASE WHEN k = 1 THEN 'active' ELSE 'canceled' END,
               now() + make_interval(days => 30 - 30 * k),
               jsonb_build_object('seats', 10 * k, 'coupon', k = 2)
        FROM organizations AS o
        CROSS JOIN generate_series(1, {SUBSCRIPTIONS_PER_ORGANIZATION}) AS k""",
    f"""WITH people AS (
          SELECT id, organization_id, row_number() OVER (ORDER BY id) - 1 AS n FROM users)
        INSERT INTO reports (organization_id, created_by, title, status, definition, created_at)
        SELECT p.organization_id, p.id, 'Report ' || g,
               (ARRAY['draft', 'published', 'archived'])[1 + g % 3],
               jsonb_build_object('kind', (ARRAY['usage', 'revenue', 'churn', 'funnel'])[1 + g % 4],
                                  'filters', jsonb_build_array(g % 7, g % 11),
                                  'range_days', 7 + g % 90),
               now() - make_interval(mins => g * 7)
        FROM generate_series(1, {REPORTS}) AS g
        JOIN people AS p ON p.n = g % {USERS}""",
    f"""WITH people AS (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM users)
        INSERT INTO trial_tokens (user_id, token, expires_at, created_at)
        SELECT p.id, md5('token-' || (g % {DISTINCT_TOKENS})),
               now() + make_interval(days => g % 14), now() - make_interval(hours => g % 300)
        FROM generate_series(1, {TRIAL_TOKENS}) AS g
        JOIN people AS p ON p.n = g % {USERS}""",
    f"""WITH people AS (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM users)
        INSERT INTO events (user_id, kind, payload, created_at)
        SELECT p.id, (ARRAY['login', 'report.view', 'report.export', 'invite'])[1 + g % 4],
               jsonb_build_object('ip', '203.0.113.' || (g % 250), 'agent', 'Mozilla/5.0 demo',
                                  'request_id', md5(g::text), 'n', g),
               now() - make_interval(mins => g)
        FROM generate_series(1, {EVENTS}) AS g
        JOIN people AS p ON p.n = g % {USERS}""",
]


def token(n: int) -> str:
    """The n-th seeded trial token (as the seed SQL computes it)."""
    return hashlib.md5(f"token-{n % DISTINCT_TOKENS}".encode()).hexdigest()


@dataclass(frozen=True)
class Planted:
    """What `plant_problems` planted, by object name (all in `schema`)."""

    schema: str = SCHEMA
    tables: tuple[str, ...] = TABLES
    # Never scanned, not unique, not backing a constraint or foreign key.
    unused_index: str = "reports_status_created_idx"
    # The same definition as the unique constraint's index on users.email.
    duplicate_index: str = "users_email_idx"
    duplicate_of: str = "users_email_key"
    # A unique index whose concurrent build failed on duplicate tokens.
    invalid_index: str = "trial_tokens_token_key"
    # Looked up by token through sequential scans (its token index is invalid).
    missing_index_table: str = "trial_tokens"
    # reports.organization_id references organizations and no index leads with it.
    unindexed_fk_table: str = "reports"
    unindexed_fk: str = "reports_organization_id_fkey"
    unindexed_fk_columns: tuple[str, ...] = ("organization_id",)
    # Autovacuum off, three quarters of its rows deleted, never vacuumed or analyzed.
    bloated_table: str = "events"
    # pg_stat_statements' queryid of SLOW_STATEMENT in this database (None without the
    # extension), as the statements collector's `queryid` label has it.
    slow_statement_queryid: str | None = None
    # Extensions created by plant_problems in the database (pgstattuple, pg_stat_statements).
    extensions: tuple[str, ...] = ()
    collector_params: dict[str, dict[str, int | float]] = field(
        default_factory=lambda: {name: dict(p) for name, p in COLLECTOR_PARAMS.items()}
    )

    def qualified(self, name: str) -> str:
        return f"{self.schema}.{name}"


def plant_problems(
    dsn: str, *, progress: Progress | None = None, timeout_seconds: float = 60.0
) -> Planted:
    """Create the schema in the DSN's database, seed it, plant every problem, wait for stats.

    Drops and recreates its own tables (TABLES) first, so it can run again on the same
    database. Returns the names of what it planted.
    """
    say = progress or log.info
    planted = Planted()
    with psycopg.connect(dsn, autocommit=True, application_name="demo-setup") as conn:
        extensions = _create_extensions(conn)
        say("creating the schema: " + ", ".join(TABLES))
        conn.execute(_DROP)
        for statement in _CREATE:
            conn.execute(statement.encode())
        say(
            f"seeding {ORGANIZATIONS} organizations, {USERS:,} users, {REPORTS:,} reports, "
            f"{TRIAL_TOKENS:,} trial tokens and {EVENTS:,} events"
        )
        for statement in _SEED:
            conn.execute(statement.encode())
    # The seeding session is closed, so its row counts are reported; an ANALYZE that overtook
    # them would leave the rows counted as modified since that ANALYZE.
    _wait_until(dsn, _SEEDED, "the seed rows in the statistics", timeout_seconds)
    with psycopg.connect(dsn, autocommit=True, application_name="demo-setup") as conn:
        say(
            f"planting an unused index ({planted.unused_index}), a duplicate index "
            f"({planted.duplicate_index}), an invalid index ({planted.invalid_index}) and a "
            f"foreign key without an index ({planted.unindexed_fk})"
        )
        # Nothing filters reports by status: this index is never scanned.
        conn.execute(f"CREATE INDEX {planted.unused_index} ON reports (status, created_at)")
        conn.execute(f"CREATE INDEX {planted.duplicate_index} ON users (email)")
        # Expected to fail: the failed build leaves the index behind, invalid.
        with contextlib.suppress(psycopg.errors.UniqueViolation):
            conn.execute(
                f"CREATE UNIQUE INDEX CONCURRENTLY {planted.invalid_index} ON trial_tokens (token)"
            )
        # The healthy tables are vacuumed and analyzed, as autovacuum would soon do anyway, so
        # only the planted table needs maintenance.
        for table in TABLES:
            if table != planted.bloated_table:
                conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))
        say(f"bloating {planted.bloated_table}: purging 3 of every 4 rows, autovacuum off")
        conn.execute(f"DELETE FROM events WHERE (payload ->> 'n')::int % {EVENTS_KEPT_EVERY} <> 0")
    # Statement statistics start now, like an application's since its last deploy: the
    # seeding is not its workload. Only this database's: others may be someone else's.
    if "pg_stat_statements" in extensions:
        with psycopg.connect(dsn, autocommit=True, application_name="demo-setup") as conn:
            conn.execute(
                "SELECT pg_stat_statements_reset(0, oid, 0) FROM pg_database"
                " WHERE datname = current_database()"
            )
    # A session of its own, closed at once, so its statistics are reported promptly.
    say(f"reading {planted.missing_index_table} by sequential scans ({TOKEN_LOOKUPS} lookups)")
    with psycopg.connect(dsn, autocommit=True, application_name="demo-app") as conn:
        for n in range(TOKEN_LOOKUPS):
            conn.execute(TOKEN_LOOKUP, (token(n * 7),))
    say(f"running a slow statement ({SLOW_STATEMENT_SECONDS} s)")
    queryid = run_slow_statement(dsn, seconds=SLOW_STATEMENT_SECONDS)
    _wait_until(dsn, _PLANTED, "the planted problems in the statistics", timeout_seconds)
    return Planted(extensions=extensions, slow_statement_queryid=queryid)


def _create_extensions(conn: Connection) -> tuple[str, ...]:
    """pgstattuple (bloat measured, not estimated) and pg_stat_statements where preloaded."""
    created = []
    row = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()
    preload = {lib.strip() for lib in (row[0] if row else "").split(",")}
    wanted = ["pgstattuple"] + (["pg_stat_statements"] if "pg_stat_statements" in preload else [])
    for name in wanted:
        try:
            conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(name)))
        except psycopg.Error as exc:  # not shipped with this build: the check reports it
            log.warning("could not create extension %s: %s", name, exc)
        else:
            created.append(name)
    return tuple(created)


def run_slow_statement(dsn: str, *, seconds: float = SLOW_STATEMENT_SECONDS) -> str | None:
    """Run the slow statement once; its queryid in pg_stat_statements, if that is installed."""
    with psycopg.connect(dsn, autocommit=True, application_name="demo-reporting") as conn:
        conn.execute(SLOW_STATEMENT.encode(), (seconds,))
        return _slow_statement_queryid(conn)


def _slow_statement_queryid(conn: Connection) -> str | None:
    installed = conn.execute(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
        " WHERE e.extname = 'pg_stat_statements'"
    ).fetchone()
    if installed is None:
        return None
    view = sql.Identifier(installed[0], "pg_stat_statements")
    row = conn.execute(
        sql.SQL(
            "SELECT queryid FROM {} WHERE dbid = (SELECT oid FROM pg_database"
            " WHERE datname = current_database()) AND query LIKE %s LIMIT 1"
        ).format(view),
        ("WITH pause AS MATERIALIZED (SELECT pg_sleep(%",),
    ).fetchone()
    return None if row is None else str(row[0])


def _stat(table: str, condition: str) -> str:
    return (
        f"(SELECT {condition} FROM pg_stat_user_tables"
        f" WHERE schemaname = '{SCHEMA}' AND relname = '{table}')"
    )


_SEEDED = " AND ".join(
    _stat(table, f"n_tup_ins = {rows}")
    for table, rows in (
        ("organizations", ORGANIZATIONS),
        ("users", USERS),
        ("subscriptions", ORGANIZATIONS * SUBSCRIPTIONS_PER_ORGANIZATION),
        ("reports", REPORTS),
        ("trial_tokens", TRIAL_TOKENS),
        ("events", EVENTS),
    )
)
_PLANTED = " AND ".join(
    [
        _stat("trial_tokens", f"seq_scan >= {TOKEN_LOOKUPS} AND n_live_tup >= {TRIAL_TOKENS}"),
        _stat("events", f"n_dead_tup >= {EVENTS - EVENTS // EVENTS_KEPT_EVERY}"),
        *(
            _stat(table, "n_mod_since_analyze = 0 AND last_analyze IS NOT NULL")
            for table in TABLES
            if table != "events"
        ),
    ]
)


def _wait_until(dsn: str, condition: str, what: str, timeout_seconds: float) -> None:
    """Poll the statistics views until `condition` holds (before PostgreSQL 15 they lag)."""
    deadline = time.monotonic() + timeout_seconds
    pause = threading.Event()
    with psycopg.connect(dsn, autocommit=True, application_name="demo-setup") as conn:
        while True:
            # Each autocommit statement reads fresh statistics (no snapshot kept between them).
            row = conn.execute(f"SELECT {condition}".encode()).fetchone()
            if row is not None and row[0]:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"timed out after {timeout_seconds} s waiting for {what}")
            pause.wait(0.1)


class Workload:
    """The application's background traffic: the problems that only exist while it runs.

    - one session idle in transaction (it began a transaction and never ended it);
    - `idle_connections` idle sessions, like an oversized application pool (connection
      pressure on a server with a low max_connections);
    - an application thread: trial-token lookups by sequential scan, user and report
      lookups through indexes, every `lookup_every_seconds`;
    - a reporting thread: the slow statement every `slow_every_seconds`.

    Every thread and session has its own connection. `stop()` ends them all and closes every
    connection; it is safe to call more than once.
    """

    def __init__(
        self,
        dsn: str,
        *,
        idle_connections: int = 5,
        lookup_every_seconds: float = 1.0,
        slow_every_seconds: float = 10.0,
        slow_statement_seconds: float = SLOW_STATEMENT_SECONDS,
    ) -> None:
        if idle_connections < 0:
            raise ValueError("idle_connections must not be negative")
        self.dsn = dsn
        self.idle_connections = idle_connections
        self.lookup_every_seconds = lookup_every_seconds
        self.slow_every_seconds = slow_every_seconds
        self.slow_statement_seconds = slow_statement_seconds
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sessions: list[Connection] = []
        self._busy: list[Connection] = []  # the threads' connections, to cancel on stop
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return bool(self._threads) and not self._stop.is_set()

    def start(self) -> None:
        """Open the sessions and start the threads; returns once all of them are in place."""
        if self._threads:
            raise RuntimeError("this workload was already started")
        try:
            idle_tx = psycopg.connect(self.dsn, application_name="demo-app-forgotten-transaction")
            self._sessions.append(idle_tx)
            # A transaction opened and never finished: idle in transaction from now on.
            idle_tx.execute("SELECT count(*) FROM organizations")
            for _ in range(self.idle_connections):
                idle = psycopg.connect(self.dsn, autocommit=True, application_name="demo-app-pool")
                self._sessions.append(idle)
                idle.execute("SELECT 1")
            ready = [threading.Event(), threading.Event()]
            for name, body, started in (
                ("demo-app", self._application, ready[0]),
                ("demo-reporting", self._reporting, ready[1]),
            ):
                thread = threading.Thread(
                    target=self._guarded, args=(name, body, started), name=name, daemon=True
                )
                self._threads.append(thread)
                thread.start()
            for started in ready:
                started.wait(timeout=30)
        except BaseException:
            self.stop()
            raise

    def stop(self, *, timeout_seconds: float = 10.0) -> None:
        """Stop the threads (cancelling a statement in flight) and close every session."""
        self._stop.set()
        with self._lock:
            busy = list(self._busy)
        for conn in busy:
            # Already closed, or the server is gone: nothing left to cancel then.
            with contextlib.suppress(psycopg.Error):
                conn.cancel_safe(timeout=2.0)
        for thread in self._threads:
            thread.join(timeout=timeout_seconds)
        for conn in self._sessions:
            conn.close()  # an open transaction is rolled back by the server
        self._sessions.clear()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _guarded(
        self, name: str, body: Callable[[Connection], None], ready: threading.Event
    ) -> None:
        """Run a thread's loop on its own connection; a failure ends that thread, logged once."""
        try:
            with psycopg.connect(self.dsn, autocommit=True, application_name=name) as conn:
                with self._lock:
                    self._busy.append(conn)
                ready.set()
                body(conn)
        except psycopg.Error as exc:
            if not self._stop.is_set():  # errors while stopping are the cancel we sent
                log.warning("workload thread %s stopped: %s", name, exc)
        finally:
            ready.set()

    def _application(self, conn: Connection) -> None:
        users = [row[0] for row in conn.execute("SELECT id FROM users ORDER BY id LIMIT 200")]
        rng = random.Random(42)
        while not self._stop.is_set():
            conn.execute(TOKEN_LOOKUP, (token(rng.randrange(TRIAL_TOKENS)),))
            user = rng.choice(users)
            conn.execute("SELECT id, email, profile FROM users WHERE id = %s", (user,))
            conn.execute(
                "SELECT id, title FROM reports WHERE created_by = %s"
                " ORDER BY created_at DESC LIMIT 20",
                (user,),
            )
            self._stop.wait(self.lookup_every_seconds)

    def _reporting(self, conn: Connection) -> None:
        while not self._stop.wait(self.slow_every_seconds):
            conn.execute(SLOW_STATEMENT.encode(), (self.slow_statement_seconds,))
