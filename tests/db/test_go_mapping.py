"""The migration guide's mapping against the real Go exporter: Debian's
prometheus-postgres-exporter runs on its defaults against the test server, and every metric name
it publishes must be in exporter/gocompat/mapping.yaml, with ours or with the reason there is
none. Its names depend on the server's version (PostgreSQL 17 broke its bgwriter collector;
each major adds settings and columns), so this runs on every major."""

from exporter.demo.embedded import LocalPostgres
from exporter.gocompat import load_mapping
from support.goexporter import go_exporter, sample_names, scraped


def test_every_go_metric_is_in_the_mapping(postgres: LocalPostgres) -> None:
    with go_exporter(postgres) as port:
        body = scraped(port) or ""
    names = sample_names(body)
    assert {"pg_stat_database_xact_commit", "pg_stat_activity_count", "pg_locks_count"} <= names
    mapping = load_mapping()
    unlisted = sorted(name for name in names if mapping.find(name) is None)
    assert not unlisted, (
        "published by the Go exporter, missing from exporter/gocompat/mapping.yaml "
        f"(give ours, or why there is none): {unlisted}"
    )
