"""Configuration: every problem named as path.to.key, exit code 2, secrets never echoed."""

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.cli import main
from exporter.config import load_config, parse_config
from exporter.errors import ConfigError
from exporter.targets.sessions import session_options
from support import REPO

pytestmark = pytest.mark.any_major

TARGET = {"name": "main", "dsn": "host=db dbname=postgres user=exporter"}


def problems_of(raw: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    return caught.value.problems


def test_repository_config_is_valid() -> None:
    config = load_config(REPO / "config.yaml")
    assert [t.name for t in config.targets] == ["local"]
    assert {c.name for c in config.catalogue} >= {"database", "connections", "database_size"}


def test_durations_and_defaults() -> None:
    config = parse_config({"targets": [TARGET], "up_interval": "1500ms"})
    target = config.targets[0]
    assert config.up_interval == 1.5
    assert (target.max_connections, target.connect_timeout, target.lock_timeout) == (2, 5.0, 1.0)
    assert config.listen_address == ":9188"


# Every kind of mistake, each with the key its message must name. The command line is run on
# each too (test_cli_exits_2_naming_the_key).
BAD_CONFIGS = [
    ({"targets": [TARGET], "colectors": {}}, "colectors: Extra inputs are not permitted"),
    ({"targets": [{**TARGET, "max_conections": 3}]}, "targets.0.max_conections: Extra"),
    ({"targets": [{**TARGET, "max_connections": 1}]}, "targets.0.max_connections: Input"),
    (
        {"targets": [{**TARGET, "connect_timeout": "soon"}]},
        "targets.0.connect_timeout: expected a duration",
    ),
    (
        {"targets": [{**TARGET, "database_time_budget": "lots"}]},
        "targets.0.database_time_budget: expected database time per minute",
    ),
    (
        {"targets": [{**TARGET, "visit_logins_per_minute": 0}]},
        "targets.0.visit_logins_per_minute: expected a number of times a minute",
    ),
    (
        {"targets": [{**TARGET, "visit_logins_per_minute": "often"}]},
        "targets.0.visit_logins_per_minute: expected a number of times a minute",
    ),
    (
        {"targets": []},
        "targets: none given, and neither DATA_SOURCE_NAME nor DATA_SOURCE_URI is set",
    ),
    ({}, "targets: none given, and neither DATA_SOURCE_NAME nor DATA_SOURCE_URI is set"),
    ({"targets": [TARGET, TARGET]}, "targets: duplicate target name(s): main"),
    ({"targets": [{"name": "x"}]}, "targets.0.dsn: Field required"),
    (
        {"targets": [TARGET], "listen_address": "9188"},
        "listen_address: '9188' is not HOST:PORT",
    ),
    (
        {"targets": [{**TARGET, "databases": {"include": ["("]}}]},
        "targets.0.databases.include: ",
    ),
    (
        {"targets": [TARGET], "collectors": {"database": {"intervall": "5s"}}},
        "collectors.database.intervall: Extra",
    ),
    (
        {"targets": [TARGET], "collectors": {"database": {"interval": "1s"}}},
        "collectors.database: timeout must not be longer",
    ),
    # about 900 queries a second
    (
        {"targets": [TARGET], "collectors": {"database": {"interval": "1ms", "timeout": "1ms"}}},
        "collectors.database: interval must be at least 1s",
    ),
    ({"targets": [TARGET], "up_interval": "1ms"}, "up_interval: must be at least 1s"),
    ([1, 2], "(top level): expected a mapping"),
    # wrong types
    (
        {"targets": [{**TARGET, "max_connections": "two"}]},
        "targets.0.max_connections: Input should be a valid integer",
    ),
    ({"targets": "main"}, "targets: Input should be a valid tuple"),
    ({"targets": [TARGET], "up_interval": [1]}, "up_interval: expected a duration"),
    (
        {"targets": [{**TARGET, "type": "mysql"}]},
        "targets.0.type: Input should be 'postgres' or 'pgbouncer'",
    ),
    ({"targets": [{**TARGET, "dsn": 5}]}, "targets.0.dsn: Input should be a valid string"),
    ({"targets": [TARGET], "collectors": "all"}, "collectors: Input should be a valid dictionary"),
    (
        {"targets": [TARGET], "collectors": {"database": {"enabled": "maybe"}}},
        "collectors.database.enabled: Input should be a valid boolean",
    ),
    (
        {"targets": [TARGET], "max_age_intervals": 0.5},
        "max_age_intervals: Input should be greater than or equal to 1",
    ),
    (
        {"targets": [TARGET], "workers": 8, "max_connections_total": 11},
        "max_connections_total: must be at least workers + 4 (12)",
    ),
    # DSNs libpq would only reject when connecting
    (
        {"targets": [{**TARGET, "dsn": "postgresql://db:notaport/app"}]},
        "targets.0.dsn: port 'notaport' is not a number",
    ),
    (
        {"targets": [{**TARGET, "dsn": "host=db port=5432,x5433"}]},
        "targets.0.dsn: port 'x5433' is not a number",
    ),
    (
        {"targets": [{**TARGET, "dsn": "host=db port"}]},
        "targets.0.dsn: not a valid libpq connection string",
    ),
]


@pytest.mark.parametrize(("raw", "expected"), BAD_CONFIGS)
def test_each_problem_names_its_key(raw: object, expected: str) -> None:
    assert any(expected in p for p in problems_of(raw)), problems_of(raw)


def test_all_problems_reported_at_once() -> None:
    raw = {"targets": [{"name": "a b", "dsn": "host=x", "bogus": 1}], "up_interval": 0}
    found = problems_of(raw)
    assert {p.split(":")[0] for p in found} >= {"targets.0.name", "targets.0.bogus", "up_interval"}


def test_bad_dsn_is_reported_without_echoing_it() -> None:
    found = problems_of({"targets": [{"name": "a", "dsn": "host=x password=Sup3rSecret junk"}]})
    assert found == ["targets.0.dsn: not a valid libpq connection string or postgresql:// URI"]


def test_environment_interpolation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGHE_TEST_PASSWORD", "from-env")
    config = parse_config({"targets": [{**TARGET, "password": "${PGHE_TEST_PASSWORD}"}]})
    assert "password=from-env" in config.targets[0].conninfo()
    assert "from-env" not in config.targets[0].safe_dsn()
    assert "from-env" not in repr(config)


def test_unset_environment_variable_names_key() -> None:
    found = problems_of({"targets": [{**TARGET, "dsn": "host=${PGHE_TEST_UNSET_VARIABLE}"}]})
    assert found == ["targets.0.dsn: environment variable PGHE_TEST_UNSET_VARIABLE is not set"]


def test_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-file\n")
    config = parse_config({"targets": [{**TARGET, "password_file": str(secret)}]})
    assert "password=from-file" in config.targets[0].conninfo()
    missing = problems_of({"targets": [{**TARGET, "password_file": str(tmp_path / "nope")}]})
    assert missing[0].startswith("targets.0.password_file: cannot read")
    both = problems_of({"targets": [{**TARGET, "password_file": str(secret), "password": "x"}]})
    assert any("give password or password_file, not both" in p for p in both)


CUSTOM: dict[str, Any] = {
    "help": "Failed migrations.",
    "scope": "database",
    "interval": "1m",
    "queries": [{"sql": "SELECT 1 AS failed", "metrics": {"failed": "gauge"}}],
}


def test_custom_collector() -> None:
    config = parse_config({"targets": [TARGET], "collectors": {"migrations": CUSTOM}})
    collector = config.collector("migrations")
    assert not collector.builtin
    assert collector.spec.scope == "database"
    assert collector.prefix == "pg_migrations"


BAD_COLLECTORS: list[tuple[dict[str, Any], str]] = [
    ({"queries": [{"metrics": {"x": "gauge"}}]}, "give either `sql` or `branches`"),
    ({"queries": [{"sql": " ", "metrics": {"x": "gauge"}}]}, "queries.main.sql: empty"),
    (
        {"queries": [{"sql": "SELECT %(limit)s AS x", "metrics": {"x": "gauge"}}]},
        "queries.main.sql: uses %(limit)s, which is not in params",
    ),
    (
        {
            "params": {"n": 1},
            "queries": [
                {"sql": "SELECT %(n)s AS x WHERE 'a' LIKE 'a%'", "metrics": {"x": "gauge"}}
            ],
        },
        "queries.main.sql: with params, write a literal % as %%",
    ),
    ({"queries": []}, "collectors.migrations.queries: Tuple should have at least 1 item"),
    ({"scope": "cluster"}, "collectors.migrations.scope: Input should be 'server' or 'database'"),
    (
        {"queries": [{"sql": "SELECT 1 AS x", "metrics": {"x": "gauge"}}] * 2},
        "two queries are named 'main'",
    ),
    ({"queries": [{"sql": "SELECT 1", "metrics": {"x": "label"}}]}, "at least one column"),
    (
        {"queries": [{"sql": "SELECT 1", "metrics": {"x": "gauges"}}]},
        "metrics.x.usage: Input should be",
    ),
    (
        {"queries": [{"sql": "SELECT 1", "metrics": {"x": {"usage": "gauge", "name": "x_total"}}}]},
        "`_total` is reserved",
    ),
    (
        {"queries": [{"sql": "SELECT 1", "metrics": {"x": {"usage": "gauge", "unit": "bytes"}}}]},
        "should carry its unit",
    ),
    (
        {"queries": [{"sql": "SELECT 1", "metrics": {"x": "gauge", "target": "label"}}]},
        "label name 'target' is reserved",
    ),
    (
        {"queries": [{"sql": "SELECT 1", "metrics": {"x": "gauge", "__kind": "label"}}]},
        "metrics.__kind: label names beginning with __ are reserved by Prometheus",
    ),
    (
        {
            "queries": [
                {
                    "sql": "SELECT 1",
                    "metrics": {
                        "x": "gauge",
                        "nspname": {"usage": "label", "name": "relname"},
                        "relname": "label",
                    },
                }
            ]
        },
        "metrics.relname: publishes the label 'relname' as metrics.nspname does",
    ),
    (
        {"queries": [{"sql": "SELECT 1", "metrics": {"x": "gauge", "datname": "label"}}]},
        "metrics.datname: label name 'datname' is the exporter's own",
    ),
    (
        {
            "queries": [
                {
                    "sql": "SELECT 1",
                    "metrics": {
                        "x": {"usage": "gauge", "aliases": ["old"]},
                        "y": {"usage": "gauge", "aliases": ["old"]},
                    },
                }
            ]
        },
        "metrics.y.aliases: 'old' also stands for metrics.x",
    ),
    (
        {"scope": "server", "databases": ["app"]},
        "databases: only for collectors with scope: database",
    ),
    (
        {
            "scope": "server",
            "queries": [
                {
                    "sql": "SELECT 1 AS x, 'a' AS y",
                    "limit": {"max_rows": 5, "target_max_rows": 50, "rank_by": ["x"]},
                    "metrics": {"x": "gauge", "y": "label"},
                }
            ],
        },
        "queries.main.limit.target_max_rows: only for scope: database",
    ),
    (
        {
            "queries": [
                {
                    "sql": "SELECT 1 AS x, 'a' AS y",
                    "limit": {"max_rows": 5, "target_max_rows": "many", "rank_by": ["x"]},
                    "metrics": {"x": "gauge", "y": "label"},
                }
            ],
        },
        "queries.main.limit.target_max_rows: not the name of an integer param",
    ),
    (
        {
            "queries": [
                {
                    "branches": [
                        {"sql": "SELECT 1", "min_version": 130000, "max_version": 150000},
                        {"sql": "SELECT 2", "min_version": 140000},
                    ],
                    "metrics": {"x": "gauge"},
                }
            ]
        },
        "version ranges overlap",
    ),
    (
        {
            "queries": [
                {
                    "sql": "SELECT 1",
                    "min_version": 150000,
                    "max_version": 140000,
                    "metrics": {"x": "gauge"},
                }
            ]
        },
        "min_version must be lower than max_version",
    ),
]


@pytest.mark.parametrize(("change", "expected"), BAD_COLLECTORS)
def test_bad_custom_collector(change: dict[str, object], expected: str) -> None:
    found = problems_of({"targets": [TARGET], "collectors": {"migrations": {**CUSTOM, **change}}})
    assert any(p.startswith("collectors.migrations") and expected in p for p in found), found


def test_bad_collector_name() -> None:
    found = problems_of({"targets": [TARGET], "collectors": {"My-Collector": CUSTOM}})
    assert found == ["collectors.My-Collector: names are lower_snake_case"]


def test_builtin_branches_never_overlap() -> None:
    # Loading validates it; this states the guarantee where someone editing YAML will see it.
    for collector in parse_config({"targets": [TARGET]}).catalogue:
        for query in collector.spec.queries:
            for version in range(130000, 190000, 10000):
                applicable = [b for b in query.alternatives if b.applies_to(version)]
                assert len(applicable) <= 1, (collector.name, query.name, version)


def test_cli_exits_2_and_lists_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "targets:\n  - name: main\n    dsn: 'host=x password=Sup3rSecret'\n    port: 1\n"
    )
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "targets.0.port: Extra inputs are not permitted" in err
    assert "Sup3rSecret" not in err


def test_cli_reports_yaml_syntax_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("targets: [\n")
    assert main(["check-config", "--config", str(path)]) == 2
    assert re.search(r"bad\.yaml:\d+: not valid YAML", capsys.readouterr().err)


def test_cli_check_config_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(REPO / "config.yaml")]) == 0
    assert "config OK" in capsys.readouterr().out


def test_custom_collector_cannot_take_another_collectors_names() -> None:
    clash = {
        "help": "x",
        "queries": [{"sql": "SELECT 1 AS tables", "metrics": {"tables": "gauge"}}],
    }
    own = {"help": "x", "queries": [{"sql": "SELECT 1 AS up", "metrics": {"up": "gauge"}}]}
    found = problems_of(
        {"targets": [TARGET], "collectors": {"tables_all": clash, "exporter_collector": own}}
    )
    assert (
        "collectors.tables_all: 'pg_tables_all_tables' is already published by collector 'tables'"
        in found
    )
    assert (
        "collectors.exporter_collector: 'pg_exporter_collector_up' is the exporter's own" in found
    )


def test_gauge_and_counter_of_one_name_clash() -> None:
    both = {
        "help": "x",
        "queries": [
            {"name": "a", "sql": "SELECT 1 AS x", "metrics": {"x": "gauge"}},
            {"name": "b", "sql": "SELECT 1 AS x", "metrics": {"x": "counter"}},
        ],
    }
    found = problems_of({"targets": [TARGET], "collectors": {"mine": both}})
    assert any("'pg_mine_x_total' is already published" in p for p in found), found


def test_every_kind_of_password_is_kept_out_of_sight() -> None:
    target = parse_config(
        {"targets": [{"name": "a", "dsn": "host=x password=pw1 sslpassword=pw2"}]}
    ).targets[0]
    assert target.safe_dsn() == "host=x"
    assert set(target.secrets()) == {"pw1", "pw2"}


def test_dsn_options_are_kept() -> None:
    target = parse_config(
        {"targets": [{"name": "a", "dsn": "host=x options='-c search_path=app'"}]}
    ).targets[0]
    options = session_options(target)["options"]
    assert options.startswith("-c search_path=app ")
    assert "-c default_transaction_read_only=on" in options


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        *BAD_CONFIGS,
        *(
            ({"targets": [TARGET], "collectors": {"migrations": {**CUSTOM, **change}}}, expected)
            for change, expected in BAD_COLLECTORS
        ),
    ],
)
def test_cli_exits_2_naming_the_key(
    raw: object, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["check-config", "--config", str(path)]) == 2
    assert expected in capsys.readouterr().err


UNKNOWN = "Extra inputs are not permitted"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"targets": [{**TARGET, "max_conections": 3}]},
            f"targets.0.max_conections: {UNKNOWN} (did you mean `max_connections`?)",
        ),
        (
            {"targets": [TARGET], "colectors": {}},
            f"colectors: {UNKNOWN} (did you mean `collectors`?)",
        ),
        (
            {"targets": [{**TARGET, "databases": {"exlude": ["x"]}}]},
            f"targets.0.databases.exlude: {UNKNOWN} (did you mean `exclude`?)",
        ),
        (
            {"targets": [TARGET], "collectors": {"tables": {"intreval": "5m"}}},
            f"collectors.tables.intreval: {UNKNOWN} (did you mean `interval`?)",
        ),
        (
            {
                "targets": [TARGET],
                "collectors": {
                    "mine": {
                        "help": "x",
                        "queries": [
                            {"sql": "SELECT 1 AS x", "metrics": {"x": "gauge"}, "limt": {}}
                        ],
                    }
                },
            },
            f"collectors.mine.queries.0.limt: {UNKNOWN} (did you mean `limit`?)",
        ),
        # Nothing close: no guess.
        ({"targets": [{**TARGET, "zzzz": 1}]}, f"targets.0.zzzz: {UNKNOWN}"),
    ],
)
def test_unknown_key_suggests_the_closest(raw: object, expected: str) -> None:
    assert expected in problems_of(raw)


def test_unknown_web_config_key_suggests_the_closest(tmp_path: Path) -> None:
    from exporter.web.config import load_web_config  # noqa: PLC0415

    path = tmp_path / "web.yml"
    path.write_text("tls_server_config:\n  cert_fil: x\n")
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    expected = f"{path}: tls_server_config.cert_fil: {UNKNOWN} (did you mean `cert_file`?)"
    assert expected in caught.value.problems


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"targets": [TARGET], "up_interval": 15000},
            "up_interval: 15000 has no unit: write `15s` (`15000ms`) for milliseconds or "
            "`15000s` for seconds",
        ),
        (
            {"targets": [{**TARGET, "connect_timeout": "5"}]},
            "targets.0.connect_timeout: 5 has no unit: write `5ms` for milliseconds or `5s`",
        ),
        (
            {"targets": [TARGET], "collectors": {"tables": {"interval": 300}}},
            "collectors.tables.interval: 300 has no unit",
        ),
        (
            {"targets": [TARGET], "collectors": {"migrations": {**CUSTOM, "timeout": 2}}},
            "collectors.migrations.timeout: 2 has no unit",
        ),
        (
            {
                "targets": [TARGET],
                "collectors": {
                    "migrations": {
                        **CUSTOM,
                        "queries": [{**CUSTOM["queries"][0], "interval": 60}],
                    }
                },
            },
            "collectors.migrations.queries.0.interval: 60 has no unit",
        ),
    ],
)
def test_a_duration_without_a_unit_is_an_error(raw: object, expected: str) -> None:
    assert any(p.startswith(expected) for p in problems_of(raw)), problems_of(raw)


def test_durations_with_units_are_still_accepted_everywhere() -> None:
    config = parse_config(
        {
            "targets": [{**TARGET, "connect_timeout": "1500ms", "lock_timeout": "2s"}],
            "up_interval": "1m",
            "collectors": {"tables": {"interval": "5m", "timeout": "30s"}},
        }
    )
    assert (config.up_interval, config.targets[0].connect_timeout) == (60.0, 1.5)
    assert (config.collector("tables").spec.interval, config.collector("tables").spec.timeout) == (
        300.0,
        30.0,
    )


@pytest.mark.parametrize(
    ("collectors", "expected"),
    [
        (
            {"tabels": {"interval": "5m"}},
            "collectors.tabels: no built-in collector named tabels (did you mean tables?)",
        ),
        (
            {"conections": None},
            "collectors.conections: no built-in collector named conections "
            "(did you mean connections?)",
        ),
        (
            {"nothing_like_it": {"enabled": False}},
            "collectors.nothing_like_it: no built-in collector named nothing_like_it; a custom "
            "collector needs `help` and `queries`",
        ),
    ],
)
def test_misspelt_builtin_collector_is_named_as_such(
    collectors: dict[str, Any], expected: str
) -> None:
    assert problems_of({"targets": [TARGET], "collectors": collectors}) == [expected]


def test_a_custom_collector_missing_a_part_is_still_reported_as_one() -> None:
    found = problems_of({"targets": [TARGET], "collectors": {"tabels": {"help": "Mine."}}})
    assert found == ["collectors.tabels.queries: Field required"]


def test_off_written_bare_in_yaml_turns_the_limits_off(tmp_path: Path) -> None:
    """YAML reads a bare `off` as false: the budget and the visits' login rate take it as the
    `off` their error messages offer."""
    path = tmp_path / "config.yaml"
    path.write_text(
        "targets:\n"
        "  - name: pg\n"
        "    dsn: host=db\n"
        "    database_time_budget: off\n"
        "    visit_logins_per_minute: off\n"
    )
    target = load_config(path).targets[0]
    assert target.database_time_budget is None
    assert target.visit_logins_per_minute is None


def test_a_rate_from_the_environment_is_a_number(monkeypatch: pytest.MonkeyPatch) -> None:
    """`${VAR}` interpolates text: "12" is twelve logins a minute."""
    monkeypatch.setenv("VISIT_RATE", "12")
    raw = {"targets": [{**TARGET, "visit_logins_per_minute": "${VISIT_RATE}"}]}
    assert parse_config(raw).targets[0].visit_logins_per_minute == 12.0
