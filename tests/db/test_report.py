"""`pg-health-exporter report`: problems planted in a real database (exporter/demo/workload.py) are
each named with the right severity and fix, a healthy database passes, and every format renders.

The report runs in-process through the CLI, as a user or a CI job would call it, against the
shared server; per-database checks are kept to the test's own database by the target's
`databases` filter, server-wide ones (connections, statements) see the whole server.
"""

import dataclasses
import json
import os
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import psycopg
import pytest
import yaml

from exporter.cli import main
from exporter.config import parse_config
from exporter.demo.embedded import LocalPostgres
from exporter.demo.workload import Planted, Workload, plant_problems
from exporter.report.build import build_report
from exporter.report.checks import CHECKS, Thresholds
from exporter.report.findings import Finding
from exporter.report.format import format_text, use_colour
from support import REPO, fresh_database, wait_for
from support.pgbouncer import ADMIN_USER, LocalPgBouncer

SCHEMA = json.loads((REPO / "docs" / "report.schema.json").read_text())


@dataclasses.dataclass(frozen=True)
class Plant:
    database: str
    dsn: str
    planted: Planted


@pytest.fixture(scope="module")
def plant(postgres: LocalPostgres) -> Iterator[Plant]:
    """A database with every problem planted, shared by this module's read-only tests."""
    with fresh_database(postgres) as name:
        dsn = postgres.dsn(name)
        yield Plant(name, dsn, plant_problems(dsn))


def write_config(
    tmp_path: Path, dsn: str, database: str, *, params: dict[str, Any] | None = None, **extra: Any
) -> Path:
    """A config file of one target `pg` whose per-database checks visit `database` only."""
    collectors: dict[str, Any] = {name: {"params": p} for name, p in (params or {}).items()}
    collectors["statement_text"] = {"enabled": True}
    collectors.update(extra.pop("collectors", {}))
    raw = {
        "targets": [
            {
                "name": "pg",
                "dsn": dsn,
                "connect_timeout": "5s",
                "databases": {"include": [re.escape(database)]},
            },
            *extra.pop("targets", []),
        ],
        "collectors": collectors,
        **extra,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def report(
    capsys: pytest.CaptureFixture[str], config: Path, *args: str, output_format: str = "json"
) -> tuple[int, str]:
    code = main(["report", "--config", str(config), "--format", output_format, *args])
    return code, capsys.readouterr().out


def json_report(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, Any]:
    code, out = report(capsys, config, *args)
    document = json.loads(out)
    jsonschema.validate(document, SCHEMA)
    assert document["exit_code"] == code
    return code, document


def flagged(document: Any, check: str, database: str) -> dict[str, dict[str, Any]]:
    """The non-ok findings of a check in a database, by object."""
    return {
        f["object"]: f
        for f in document["findings"]
        if f["check"] == check and f["database"] == database and f["severity"] != "ok"
    }


def test_planted_problems_are_named_with_severity_and_fix(
    plant: Plant, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p, db = plant.planted, plant.database
    config = write_config(tmp_path, plant.dsn, db, params=p.collector_params)
    code, document = json_report(capsys, config)
    assert code == 0, [f for f in document["findings"] if f["severity"] == "critical"]
    [target] = document["targets"]
    assert target["up"] and target["databases"] == [db]

    def one(check: str) -> tuple[str, dict[str, Any]]:
        found = flagged(document, check, db)
        assert len(found) == 1, (check, found)
        return next(iter(found.items()))

    drop = "DROP INDEX CONCURRENTLY public.{};"
    # The duplicate is never scanned either; it is reported once, as the duplicate.
    for check, name in (
        ("unused_index", p.unused_index),
        ("duplicate_index", p.duplicate_index),
        ("invalid_index", p.invalid_index),
    ):
        obj, finding = one(check)
        assert (obj, finding["severity"], finding["fix"]) == (
            p.qualified(name),
            "warning",
            drop.format(name),
        )
    assert one("duplicate_index")[1]["values"]["duplicate_of"] == p.duplicate_of

    obj, finding = one("missing_index")
    assert (obj, finding["severity"]) == (p.qualified(p.missing_index_table), "warning")
    assert finding["fix"] is None  # the column is not known: the advice says how to find it
    assert f"CREATE INDEX CONCURRENTLY ON {obj} (<column>);" in finding["advice"]
    assert finding["values"]["seq_scan"] >= 50

    obj, finding = one("unindexed_foreign_key")
    assert obj == f"{p.qualified(p.unindexed_fk_table)}.{p.unindexed_fk}"
    assert finding["severity"] == "warning"
    columns = ", ".join(p.unindexed_fk_columns)
    assert finding["fix"] == (
        f"CREATE INDEX CONCURRENTLY ON {p.qualified(p.unindexed_fk_table)} ({columns});"
    )

    obj, finding = one("table_bloat")
    assert (obj, finding["severity"]) == (p.qualified(p.bloated_table), "warning")
    assert finding["values"]["method"] == "pgstattuple" and finding["values"]["bloat_ratio"] > 0.5
    for check in ("vacuum", "analyze"):
        obj, finding = one(check)
        assert (obj, finding["severity"]) == (p.qualified(p.bloated_table), "warning")
    assert one("analyze")[1]["fix"] == f"ANALYZE {p.qualified(p.bloated_table)};"

    assert p.slow_statement_queryid is not None
    slow = flagged(document, "statements", db)[p.slow_statement_queryid]
    assert slow["severity"] == "warning"
    assert slow["values"]["mean_seconds"] >= 0.5
    assert "pg_sleep" in slow["values"]["query"]  # the statement_text collector is on

    # Nothing healthy is flagged: no redundant or bloated index, the other tables are fine.
    assert not flagged(document, "redundant_index", db)
    assert not flagged(document, "index_bloat", db)
    inventory = next(f for f in document["findings"] if f["check"] == "schema")
    assert inventory["values"]["tables"] == len(p.tables)
    assert inventory["values"]["foreign_keys"] == 6
    passed = {f["check"] for f in document["findings"] if f["severity"] == "ok"}
    assert {"target", "pg_stat_statements", "wraparound", "connections"} <= passed
    assert document["thresholds"]["index_health.unused_min_bytes"] == 64 * 1024


def test_text_and_markdown_render(
    plant: Plant, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = plant.planted
    config = write_config(tmp_path, plant.dsn, plant.database, params=p.collector_params)
    code, text = report(capsys, config, output_format="text")
    assert code == 0
    assert "\x1b[" not in text  # captured output is not a terminal: no colour
    lines = text.splitlines()
    assert "warning" in text and "Unused indexes" in lines
    # Aligned: the header's columns start where the row's cells do.
    header = lines[lines.index("Duplicate indexes") + 1]
    row = lines[lines.index("Duplicate indexes") + 2]
    assert header.index("OBJECT") == row.index(p.qualified(p.duplicate_index))
    assert f"DROP INDEX CONCURRENTLY {p.qualified(p.unused_index)};" in text

    code, markdown = report(capsys, config, output_format="markdown")
    assert code == 0
    assert markdown.startswith("### PostgreSQL health report")
    assert "| severity | database | object | finding |" in markdown
    block = markdown.split("```sql\n", 1)[1].split("```", 1)[0].splitlines()
    assert f"DROP INDEX CONCURRENTLY {p.qualified(p.unused_index)};" in block
    assert len(block) == len(set(block))  # each fix once, though two findings share it
    assert "<details><summary>" in markdown


def test_colour_only_on_a_terminal(
    plant: Plant, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    leader, follower = os.openpty()  # a real terminal, as a user's shell gives
    try:
        with os.fdopen(follower, "w") as terminal, open(os.devnull, "w") as devnull:
            monkeypatch.delenv("NO_COLOR", raising=False)
            monkeypatch.setenv("TERM", "xterm")
            assert use_colour(terminal) and not use_colour(devnull)
            monkeypatch.setenv("NO_COLOR", "1")
            assert not use_colour(terminal)
    finally:
        os.close(leader)
    only = {"include": [re.escape(plant.database)]}
    config = parse_config({"targets": [{"name": "pg", "dsn": plant.dsn, "databases": only}]})
    coloured = format_text(build_report(config), colour=True)
    assert "\x1b[33mwarning" in coloured and "\x1b[0m" in coloured


def test_critical_findings_exit_1(
    postgres: LocalPostgres, database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failed migration (a custom collector) and an unreachable target: both critical."""
    dsn = postgres.dsn(database)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE migrations (name text, finished boolean, failed boolean)")
        conn.execute(
            "INSERT INTO migrations VALUES ('001_init', true, false), ('002_add_plan', false, true)"
        )
    migrations = {
        "help": "Schema migrations that failed or are pending.",
        "scope": "database",
        "queries": [
            {
                "sql": "SELECT count(*) FILTER (WHERE failed) AS failed,"
                " count(*) FILTER (WHERE NOT finished AND NOT failed) AS pending FROM migrations",
                "metrics": {"failed": "gauge", "pending": "gauge"},
            }
        ],
    }
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        down = f"host=127.0.0.1 port={closed.getsockname()[1]} dbname=postgres user=postgres"
    config = write_config(
        tmp_path,
        dsn,
        database,
        collectors={"app_migrations": migrations},
        targets=[{"name": "gone", "dsn": down, "connect_timeout": "2s"}],
    )
    code, document = json_report(capsys, config)
    assert code == 1
    critical = {
        (f["check"], f["target"]) for f in document["findings"] if f["severity"] == "critical"
    }
    assert critical == {("migrations", "pg"), ("target", "gone")}
    [failed] = flagged(document, "migrations", database).values()
    assert failed["values"]["failed"] == 1
    assert document["summary"]["critical"] == 2
    assert [t["up"] for t in document["targets"]] == [True, False]

    # --target picks one: the healthy one passes; an unknown name is a configuration error.
    code, document = json_report(capsys, config, "--target", "gone")
    assert code == 1 and [t["name"] for t in document["targets"]] == ["gone"]
    assert main(["report", "--config", str(config), "--target", "nope"]) == 2
    assert "no target named 'nope'" in capsys.readouterr().err


def test_healthy_database_exits_0(
    postgres: LocalPostgres, database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = postgres.dsn(database)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY)")
        conn.execute(
            'CREATE TABLE orders (id bigint PRIMARY KEY, "Account Id" bigint, code int,'
            " UNIQUE (id, code))"
        )
        conn.execute('CREATE INDEX orders_account ON orders ("Account Id")')
        conn.execute("INSERT INTO accounts DEFAULT VALUES")
    code, document = json_report(capsys, write_config(tmp_path, dsn, database))
    assert code == 0
    mine = [f for f in document["findings"] if f["database"] == database]
    assert [f for f in mine if f["severity"] in ("warning", "critical")] == []
    assert {f["check"] for f in mine} >= {"schema"}
    # pg_stat_statements is not created in this database: the report says so, with the fix.
    [statements] = [f for f in document["findings"] if f["check"] == "pg_stat_statements"]
    assert statements["severity"] == "warning"
    assert statements["fix"] == "CREATE EXTENSION pg_stat_statements;"


def test_foreign_key_fix_quotes_and_orders_columns(
    postgres: LocalPostgres, database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = postgres.dsn(database)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute('CREATE TABLE parent (id int, "Code" int, PRIMARY KEY (id, "Code"))')
        conn.execute(
            'CREATE TABLE "Child" (id int, "Parent Code" int, parent int,'
            ' CONSTRAINT child_parent FOREIGN KEY (parent, "Parent Code")'
            ' REFERENCES parent (id, "Code"))'
        )
    code, document = json_report(capsys, write_config(tmp_path, dsn, database))
    assert code == 0
    [finding] = flagged(document, "unindexed_foreign_key", database).values()
    assert finding["object"] == 'public."Child".child_parent'
    assert finding["fix"] == 'CREATE INDEX CONCURRENTLY ON public."Child" (parent, "Parent Code");'


def test_idle_transaction_and_connection_pressure(plant: Plant, postgres: LocalPostgres) -> None:
    """The background workload's sessions, judged with thresholds that make them critical."""
    config = parse_config(
        {
            "targets": [
                {
                    "name": "pg",
                    "dsn": plant.dsn,
                    "databases": {"include": [re.escape(plant.database)]},
                }
            ]
        }
    )
    strict = Thresholds(
        idle_in_transaction_warning_seconds=0.0,
        idle_in_transaction_critical_seconds=0.0,
        connections_warning=0.0,
    )
    with Workload(plant.dsn, idle_connections=3, slow_every_seconds=3600):
        result = build_report(config, thresholds=strict)
    assert result.exit_code == 1
    [idle] = [f for f in result.findings if f.check == "idle_in_transaction"]
    assert (idle.severity.value, idle.database) == ("critical", plant.database)
    assert idle.values["sessions"] == 1
    assert idle.fix is not None and "pg_terminate_backend" in idle.fix
    [connections] = [f for f in result.findings if f.check == "connections"]
    assert connections.severity.value == "warning"
    assert float(connections.values["state_idle"] or 0) >= 3


def test_documented_checks_and_thresholds() -> None:
    """docs/report.md and the schema name every check and threshold the code has."""
    finding = SCHEMA["$defs"]["finding"]["properties"]
    assert finding["check"]["enum"] == [check.name for check in CHECKS]
    doc = (REPO / "docs" / "report.md").read_text()
    for field in dataclasses.fields(Thresholds):
        assert f"`{field.name}`" in doc, field.name
    for check in CHECKS:
        assert f"`{check.name}`" in doc, check.name


def test_pgbouncer_client_waiting_for_a_server(postgres: LocalPostgres, database: str) -> None:
    with LocalPgBouncer(postgres, {"app": f"dbname={database} pool_size=1"}) as bouncer:
        config = parse_config(
            {"targets": [{"name": "bouncer", "type": "pgbouncer", "dsn": bouncer.dsn()}]}
        )
        healthy = build_report(config)
        assert healthy.exit_code == 0
        assert [f.severity.value for f in healthy.findings if f.check == "pool"] == ["ok"]
        assert "PgBouncer" in next(f.summary for f in healthy.findings if f.check == "target")

        app = bouncer.dsn("app", user=ADMIN_USER)
        with psycopg.connect(app, autocommit=True) as holder:
            holder.execute("SELECT 1")  # session pooling: holds the pool's only server

            def wait_for_a_server() -> None:
                with psycopg.connect(app, autocommit=True) as conn:
                    conn.execute("SELECT 1")  # queued until the holder lets go

            waiter = threading.Thread(target=wait_for_a_server, daemon=True)
            waiter.start()
            try:

                def waiting() -> list[Finding]:
                    found = build_report(config).findings
                    return [f for f in found if f.check == "pool" and f.severity.value != "ok"]

                [finding] = wait_for(waiting, timeout=20, what="a client waiting in app")
            finally:
                holder.close()  # the waiter gets the server connection and finishes
                waiter.join(timeout=30)
        assert (finding.severity.value, finding.database) == ("warning", "app")
        assert finding.values["client_waiting"] == 1


def test_data_source_name_without_config(
    postgres: LocalPostgres,
    database: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Like the other commands: DATA_SOURCE_NAME alone is one target named `default`."""
    monkeypatch.setenv("DATA_SOURCE_NAME", postgres.dsn(database))
    # Only the quick collectors: the point is where the target comes from.
    switches = ["--no-collector.bloat", "--no-collector.index_health", "--no-collector.sequences"]
    code = main(["report", "--format", "json", *switches])
    document = json.loads(capsys.readouterr().out)
    jsonschema.validate(document, SCHEMA)
    assert code == 0
    assert [t["name"] for t in document["targets"]] == ["default"]
    skipped = {f["object"] for f in document["findings"] if f["check"] == "collectors"}
    assert {"bloat", "index_health", "sequences"} <= skipped  # said, not silently missing
    monkeypatch.delenv("DATA_SOURCE_NAME")
    assert main(["report"]) == 2
    assert "DATA_SOURCE_NAME" in capsys.readouterr().err


def test_bloat_below_the_thresholds_is_not_called_none(
    plant: Plant, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the default thresholds (100 MiB of bloat) the planted table's is not flagged, and
    the report says so with the number it measured, not "no table is bloated"."""
    p = plant.planted
    considered = {"bloat": {"min_bytes": 1024 * 1024}}  # the table is 5 MiB: measure it
    config = write_config(tmp_path, plant.dsn, plant.database, params=considered)
    code, document = json_report(capsys, config)
    assert code == 0
    [table] = [f for f in document["findings"] if f["check"] == "table_bloat"]
    assert table["severity"] == "ok"
    assert "bloated" not in table["summary"]
    assert table["summary"].startswith("no table above the thresholds (50.0% and 100.0 MiB)")
    assert f"largest: {p.qualified(p.bloated_table)} " in table["summary"]
    assert table["values"]["largest_ratio"] > 0.5
