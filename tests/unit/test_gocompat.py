"""The migration guide's mapping stays true to our catalogue, and its tables to the mapping."""

import pytest
from pydantic import ValidationError

from exporter.catalogue import Collector, Usage, builtin_specs
from exporter.config import parse_config
from exporter.errors import ConfigError
from exporter.exposition.compat import GoNames, server_label
from exporter.exposition.render import FamilyWriter
from exporter.gocompat import Mapping, MetricMapping, load_mapping
from exporter.gocompat.guide import GUIDE, regenerate
from exporter.metricsdoc import render_families_for_doc
from exporter.status import CollectorStatus, State, TargetStatus
from support import REPO
from support.promql import metric_names

MAPPING = load_mapping()


def our_names() -> set[str]:
    """Every metric name the catalogue's built-in collectors and the exporter itself publish."""
    names = set()
    for name, spec in builtin_specs().items():
        collector = Collector(name=name, spec=spec, builtin=True)
        for query in spec.queries:
            for column, column_spec in query.metrics.items():
                if column_spec.usage in (Usage.GAUGE, Usage.COUNTER):
                    names.add(collector.metric_name(column, column_spec))
    example = {"t": TargetStatus(collectors={"c": CollectorStatus(state=State.OK)})}
    for row in render_families_for_doc(example):
        names.add(row.split("`")[1])
    return names


def test_every_name_of_ours_exists() -> None:
    ours = our_names()
    assert {"pg_up", "pg_exporter_build_info", "pg_database_xact_commit_total"} <= ours
    missing = {
        f"{m.go}: {name}"
        for m in MAPPING.metrics
        for name in {m.ours or "", *(metric_names(m.promql) if m.promql else ())} - {""}
        if name not in ours
    }
    assert not missing, sorted(missing)


def test_the_promql_names_ours() -> None:
    # An expression that does not use its own replacement would convert something else.
    for m in MAPPING.metrics:
        if m.promql is not None:
            assert m.ours in metric_names(m.promql), m.go


def test_the_guide_is_current() -> None:
    text = (REPO / GUIDE).read_text()
    assert regenerate(text) == text, "stale: run make migration-doc"


def test_the_readme_links_the_guide() -> None:
    assert f"]({GUIDE})" in (REPO / "README.md").read_text()


def test_exact_names_win_over_globs() -> None:
    assert MAPPING.find("pg_settings_max_connections").ours == "pg_connections_max"  # type: ignore[union-attr]
    other = MAPPING.find("pg_settings_work_mem_bytes")
    assert other is not None and other.go == "pg_settings_*" and other.why
    assert MAPPING.find("pg_not_theirs") is None


@pytest.mark.parametrize(
    "entry",
    [
        {"go": "pg_x", "collector": "c"},  # neither ours nor why
        {"go": "pg_x", "collector": "c", "ours": "pg_y", "why": "both"},
        {"go": "pg_x", "collector": "c", "why": "none", "promql": "pg_y * 2"},
    ],
)
def test_an_entry_says_ours_or_why(entry: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        MetricMapping.model_validate(entry)


def test_a_name_is_listed_once() -> None:
    entry = {"go": "pg_x", "collector": "c", "ours": "pg_y"}
    with pytest.raises(ValidationError, match="listed twice: pg_x"):
        Mapping.model_validate({"metrics": [entry, entry], "flags": []})


def test_compat_renames_and_scales_without_sql() -> None:
    ours = FamilyWriter("pg_database_blk_read_time_seconds_total", "Read time.", counter=True)
    ours.add('{datname="a b",target="pg"}', 1.5)  # a space in a label value
    unmapped = FamilyWriter("pg_tables_seq_scan_total", "Scans.", counter=True)
    unmapped.add('{target="pg"}', 1.0)
    [theirs] = GoNames()([ours.rendered(), unmapped.rendered()])
    assert theirs.name == "pg_stat_database_blk_read_time"
    assert theirs.header.decode().splitlines()[1] == "# TYPE pg_stat_database_blk_read_time counter"
    assert theirs.samples == b'pg_stat_database_blk_read_time{datname="a b",target="pg"} 1500.0\n'
    assert theirs.series == 1
    # Their `server` label, for the targets it knows.
    [served] = GoNames(servers={"pg": "db:5432"})([ours.rendered()])
    assert served.samples == (
        b'pg_stat_database_blk_read_time{datname="a b",target="pg",server="db:5432"} 1500.0\n'
    )


def test_the_server_label_is_host_and_port() -> None:
    config = parse_config(
        {
            "targets": [
                {"name": "a", "dsn": "postgresql://u:secret@db.example:6432/app"},
                {"name": "b", "dsn": "dbname=app"},
            ]
        }
    )
    assert [server_label(t) for t in config.targets] == ["db.example:6432", "localhost:5432"]


def test_compat_names_never_clash_with_ours() -> None:
    derived = {m.go for entries in MAPPING.renames().values() for m, _ in entries}
    assert len(derived) > 50
    assert not derived & our_names()


def test_compat_is_a_config_key() -> None:
    target = {"name": "t", "dsn": "host=h"}
    assert parse_config({"targets": [target]}).compat == "none"
    on = parse_config({"targets": [target], "compat": "postgres_exporter"})
    assert on.compat == "postgres_exporter"
    with pytest.raises(
        ConfigError, match=r"^compat: Input should be 'none' or 'postgres_exporter'"
    ):
        parse_config({"targets": [target], "compat": "go"})


def test_collectors_name_ours_and_aliases_never_shadow_ours() -> None:
    builtins = set(builtin_specs())
    assert {c.ours for c in MAPPING.collectors if c.ours} <= builtins
    flags = MAPPING.collector_flags()
    assert {"stat_statements": "statements", "postmaster": "server"}.items() <= flags.items()
    assert not set(flags) & builtins  # `--collector.database` stays ours


def test_compat_sums_over_the_labels_theirs_lacks() -> None:
    ours = FamilyWriter("pg_connections_backends", "Backends.", counter=False)
    ours.add('{application_name="a",datname="d",state="idle",target="pg",user="u"}', 2.0)
    ours.add('{application_name="b",datname="d",state="idle",target="pg",user="v"}', 3.0)
    ours.add('{application_name="a",datname="d\\"q",state="active",target="pg",user="u"}', 1.0)
    derived = {f.name: f for f in GoNames(servers={"pg": "db:5432"})([ours.rendered()])}
    assert derived["pg_stat_activity_count"].samples.decode().splitlines() == [
        'pg_stat_activity_count{target="pg",datname="d",state="idle",server="db:5432"} 5.0',
        'pg_stat_activity_count{target="pg",datname="d\\"q",state="active",server="db:5432"} 1.0',
    ]
    assert derived["pg_stat_database_numbackends"].series == 2
