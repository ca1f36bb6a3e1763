"""End to end, as a user deploys it: PostgreSQL with problems planted and PgBouncer in front,
the exporter, a real Prometheus loading the shipped rules, a real Alertmanager, a webhook.

One stack is built for the module. The tests check what a user of the bundled dashboards and
rules relies on: every metric a rule or panel names is really published (or recorded), every
dashboard panel query returns data, and the slow-statement alert travels from a slow
statement in PostgreSQL to a notification that names it.
"""

import importlib.util
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import psycopg
import pytest
import yaml

from exporter.app import Exporter
from exporter.catalogue import builtin_specs
from exporter.config import parse_config
from exporter.demo.embedded import LocalPostgres
from exporter.demo.workload import Planted, Workload, plant_problems
from support import REPO, names, parse_exposition, scrape_text, wait_for
from support.pgbouncer import LocalPgBouncer
from support.promql import metric_names
from support.promstack import LocalAlertmanager, LocalPrometheus, WebhookReceiver

pytestmark = pytest.mark.any_major

APP_DB = "app"
APP_ROLE = "app_user"  # a role with a connection limit, as applications' roles often have
INTERVAL = "2s"
REDUNDANT_INDEX = "reports_created_by_only_idx"
# The demo's bloat thresholds flag its 5 MiB table; its indexes are smaller, and the index
# bloat panels need one measured.
BLOAT_MIN_BYTES = 64 * 1024


def load_dashboards() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dashboards_build", REPO / "dashboards/build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rule_files() -> list[Path]:
    return sorted((REPO / "alerts").glob("*.yml"))


def rules_without_for(directory: Path) -> list[Path]:
    """The shipped rule files with every `for:` removed, so alerts fire on the first
    evaluation that matches instead of after minutes of waiting. Thresholds and expressions
    stay exactly as shipped."""
    copies = []
    for path in rule_files():
        document = yaml.safe_load(path.read_text())
        for group in document["groups"]:
            for rule in group["rules"]:
                rule.pop("for", None)
        copy = directory / path.name
        copy.write_text(yaml.safe_dump(document, sort_keys=False))
        copies.append(copy)
    return copies


def recorded_names() -> set[str]:
    found = set()
    for path in rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            found |= {rule["record"] for rule in group["rules"] if "record" in rule}
    return found


def rule_expressions() -> list[tuple[str, str]]:
    found = []
    for path in rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                found.append((rule.get("alert") or rule["record"], rule["expr"]))
    return found


def execute(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement.encode())


class Blocker:
    """A session holding a row lock and a second session waiting for it: a blocked session."""

    def __init__(self, dsn: str) -> None:
        self.holder = psycopg.connect(dsn, application_name="e2e-lock-holder")
        self.holder.execute("SELECT id FROM organizations ORDER BY id LIMIT 1 FOR UPDATE")
        self._thread = threading.Thread(target=self._wait_for_lock, args=(dsn,), daemon=True)
        self._thread.start()

    def _wait_for_lock(self, dsn: str) -> None:
        with psycopg.connect(dsn, autocommit=True, application_name="e2e-lock-waiter") as conn:
            conn.execute(
                "UPDATE organizations SET name = name"
                " WHERE id = (SELECT id FROM organizations ORDER BY id LIMIT 1)"
            )

    def release(self) -> None:
        self.holder.rollback()
        self.holder.close()
        self._thread.join(timeout=30)


@dataclass
class Stack:
    postgres: LocalPostgres
    exporter: Exporter
    prometheus: LocalPrometheus
    webhook: WebhookReceiver
    planted: Planted


def plant_extras(postgres: LocalPostgres) -> None:
    """What the dashboards show beyond the demo's problems: statement statistics in the
    DSN's database, a redundant index, per-role and per-database connection limits in use, a
    temporary-file spill and a table autovacuum processes."""
    app = postgres.dsn(APP_DB)
    execute(
        postgres.dsn(),
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
        f"CREATE ROLE {APP_ROLE} LOGIN CONNECTION LIMIT 20",
        f"GRANT ALL ON SCHEMA public TO {APP_ROLE}",
        f"ALTER DATABASE {APP_DB} CONNECTION LIMIT 50",
    )
    execute(
        app,
        # A prefix of reports_created_by_idx (created_by, created_at): redundant.
        f"CREATE INDEX {REDUNDANT_INDEX} ON reports (created_by)",
        # work_mem below the sort's size: the sort spills to a temporary file.
        "SET work_mem = '64kB'",
        "SELECT g FROM generate_series(1, 200000) AS g ORDER BY g DESC",
        # Inserts past autovacuum's threshold; autovacuum_naptime is 1 s on this server.
        "CREATE TABLE churn (id bigserial PRIMARY KEY, n int)",
        "INSERT INTO churn (n) SELECT g FROM generate_series(1, 20000) AS g",
    )


def exporter_config(postgres: LocalPostgres, bouncer: LocalPgBouncer, planted: Planted) -> Any:
    collectors: dict[str, Any] = {
        name: {"enabled": True, "interval": INTERVAL, "timeout": INTERVAL}
        for name, spec in builtin_specs().items()
    }
    for name, params in planted.collector_params.items():
        collectors[name]["params"] = dict(params)
    collectors["bloat"]["params"]["min_bytes"] = BLOAT_MIN_BYTES
    return parse_config(
        {
            "up_interval": INTERVAL,
            "targets": [
                {"name": "pg", "dsn": postgres.dsn(), "connect_timeout": "2s"},
                {
                    "name": "bouncer",
                    "type": "pgbouncer",
                    "dsn": bouncer.dsn(),
                    "connect_timeout": "2s",
                },
            ],
            "collectors": collectors,
        }
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = {"track_io_timing": "on", "autovacuum_naptime": "1s"}
    with LocalPostgres(settings=settings) as postgres:
        execute(postgres.dsn(), f"CREATE DATABASE {APP_DB}")
        # Statistics reset once, as on most long-lived servers, so the unused-index alert's
        # "observed for a week" guard has a reset time to read.
        execute(postgres.dsn(APP_DB), "SELECT pg_stat_reset()")
        planted = plant_problems(postgres.dsn(APP_DB))
        plant_extras(postgres)
        app_role_session = psycopg.connect(postgres.dsn(APP_DB, user=APP_ROLE))
        blocker = Blocker(postgres.dsn(APP_DB))
        # Slow statements often enough for the alert's minimum number of calls.
        workload = Workload(postgres.dsn(APP_DB), slow_every_seconds=0.5)
        rules = rules_without_for(tmp_path_factory.mktemp("rules"))
        try:
            with (
                workload,
                LocalPgBouncer(postgres, {APP_DB: f"dbname={APP_DB}"}) as bouncer,
                Exporter(
                    exporter_config(postgres, bouncer, planted), listen_address="127.0.0.1:0"
                ) as exporter,
                WebhookReceiver() as webhook,
                LocalAlertmanager(webhook.url) as alertmanager,
                LocalPrometheus(
                    [f"127.0.0.1:{exporter.server.port}"],
                    rule_files=rules,
                    alertmanager_url=alertmanager.url,
                ) as prometheus,
            ):
                # Traffic through PgBouncer, so its statistics have something to count.
                with psycopg.connect(bouncer.dsn(APP_DB, user="postgres")) as conn:
                    conn.execute("SELECT count(*) FROM users")
                yield Stack(postgres, exporter, prometheus, webhook, planted)
        finally:
            blocker.release()
            app_role_session.close()


Left = TypeVar("Left", list[str], dict[str, set[str]])


def until_none_left(check: Callable[[], Left], *, timeout: float) -> Left:
    """Call `check` every second until it finds nothing left, or the deadline passes; what
    it found last, so a failure lists every item at once."""
    deadline = threading.Event()
    timer = threading.Timer(timeout, deadline.set)
    timer.start()
    try:
        left = check()
        while left and not deadline.wait(1):
            left = check()
        return left
    finally:
        timer.cancel()


def published_names(stack: Stack) -> set[str]:
    samples = parse_exposition(scrape_text(stack.exporter.server.port))
    # A counter's family is named without `_total`; rules use the sample name, as here.
    return names(samples)


def test_every_referenced_metric_is_published_or_recorded(stack: Stack) -> None:
    dashboards = load_dashboards()
    referenced: dict[str, set[str]] = {}
    for where, expr in rule_expressions():
        for name in metric_names(expr):
            referenced.setdefault(name, set()).add(f"rule {where}")
    for uid, title, expr in dashboards.panel_queries():
        for name in metric_names(expr):
            referenced.setdefault(name, set()).add(f"panel {uid}/{title}")
    # Only what a standby or an archiving primary publishes may be absent from this primary,
    # and those must still be documented metrics (the replication tests publish them).
    topology_only = re.compile(r"^pg_(replication|archiver)_")
    documented = set(re.findall(r"^\| `([a-z_:]+)`", (REPO / "METRICS.md").read_text(), re.M))
    known = recorded_names() | {"ALERTS", "ALERTS_FOR_STATE"}

    def missing() -> dict[str, set[str]]:
        have = published_names(stack) | known
        return {
            name: where
            for name, where in referenced.items()
            if name not in have and not (topology_only.match(name) and name in documented)
        }

    # Slow collectors (bloat, index health) publish after their first run completes.
    left = until_none_left(missing, timeout=90)
    assert not left, "referenced but never published:\n" + "\n".join(
        f"{name}: {', '.join(sorted(where))}" for name, where in sorted(left.items())
    )
    absent_topology = {n for n in referenced if topology_only.match(n)} - published_names(stack)
    assert absent_topology <= documented


def test_every_dashboard_panel_query_returns_data(stack: Stack) -> None:
    queries = load_dashboards().panel_queries()
    assert queries

    def empty() -> list[str]:
        return [
            f"{uid} / {title}: {expr}"
            for uid, title, expr in queries
            if not stack.prometheus.query(expr)
        ]

    # Rates need two scrapes, recording rules an evaluation after them, ALERTS a firing alert.
    left = until_none_left(empty, timeout=150)
    assert not left, "panels without data:\n" + "\n".join(left)


def test_slow_statement_alert_is_delivered_naming_the_statement(stack: Stack) -> None:
    queryid = stack.planted.slow_statement_queryid
    assert queryid, "pg_stat_statements is preloaded: the slow statement has a queryid"

    def firing() -> list[dict[str, Any]]:
        return [
            alert
            for alert in stack.prometheus.alerts()
            if alert["labels"]["alertname"] == "PgSlowStatements"
            and alert["labels"].get("queryid") == queryid
            and alert["state"] == "firing"
        ]

    wait_for(firing, timeout=120, what="PgSlowStatements firing in Prometheus")

    def delivered() -> list[dict[str, Any]]:
        return [
            alert
            for payload in stack.webhook.received()
            for alert in payload["alerts"]
            if alert["labels"]["alertname"] == "PgSlowStatements"
            and alert["labels"].get("queryid") == queryid
        ]

    alerts = wait_for(delivered, timeout=60, what="PgSlowStatements at the webhook")
    alert = alerts[0]
    assert alert["status"] == "firing"
    assert alert["labels"]["target"] == "pg"
    assert alert["labels"]["datname"] == APP_DB
    assert alert["labels"]["severity"] == "warning"
    assert queryid in alert["annotations"]["summary"]
    assert APP_DB in alert["annotations"]["description"]
    assert alert["annotations"]["runbook_url"].endswith("docs/runbooks.md#pgslowstatements")
    # statement_text is enabled here: the notification carries the statement itself.
    assert "pg_sleep" in alert["annotations"]["query"]
