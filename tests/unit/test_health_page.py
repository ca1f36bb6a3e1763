"""The health page on a real store, without a database: caching per store version, escaping,
and the thresholds each check names."""

import dataclasses
import json
import time

import jsonschema
import pytest
from prometheus_client.core import GaugeMetricFamily

from exporter.config import Config, parse_config
from exporter.exposition.render import render
from exporter.exposition.selfmetrics import self_metrics
from exporter.exposition.store import Store
from exporter.report.checks import CHECKS, Thresholds
from exporter.status import CollectorStatus, Reachability, State
from exporter.web.health import OWN_THRESHOLDS, HealthPage, thresholds_of
from support import REPO
from support.pages import page_text

pytestmark = pytest.mark.any_major

SCHEMA = json.loads((REPO / "docs" / "report.schema.json").read_text())
# What a database allows in names; each is a label value in /metrics.
DATABASE = "db <u>\"'&"
SCHEMA_NAME = "s<script>document.title=1</script>"
TABLE = "t\n<em>"
INDEX = "idx\"'<img src=x onerror=alert(1)>&amp;"
# As the report writes them: quoted identifiers, double quotes doubled.
QUALIFIED_INDEX = '"s<script>document.title=1</script>"."idx""\'<img src=x onerror=alert(1)>&amp;"'


def config() -> Config:
    return parse_config({"targets": [{"name": "pg", "dsn": "host=db.example dbname=app"}]})


def unused_index(size: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "pg_index_health_unused_index_size_bytes",
        "Unused indexes.",
        labels=["target", "datname", "schemaname", "relname", "indexrelname"],
    )
    family.add_metric(["pg", DATABASE, SCHEMA_NAME, TABLE, INDEX], size)
    return family


def publish(store: Store, size: float) -> None:
    status = CollectorStatus(state=State.OK, last_success=time.time(), series=1)
    store.publish("pg", "index_health", render([unused_index(size)]), status, max_age=3600)


@pytest.fixture
def store() -> Store:
    store = Store(self_metrics=self_metrics)
    store.publish_target("pg", Reachability(up=True, server_version="18.1", seq=1))
    publish(store, 5 * 1024 * 1024)
    return store


def test_hostile_names_are_text_not_markup(store: Store) -> None:
    page = HealthPage(config())
    parsed = page_text(page.html(store))
    # Only the page's own elements: one <script> (the copy button), no <img>, <u> or <em>.
    assert parsed.tags.count("script") == 1
    assert {"img", "u", "em"}.isdisjoint(parsed.tags)
    assert parsed.title == "PostgreSQL health · pg-health-exporter"
    # Every name reads back exactly, as text: the object, its database and the fix.
    text = parsed.text
    assert QUALIFIED_INDEX in text
    assert DATABASE in text
    assert f"DROP INDEX CONCURRENTLY {QUALIFIED_INDEX};" in text
    assert any('"t\n<em>"' in t for t in text)  # the table, in the detail line
    document = json.loads(page.json(store))
    jsonschema.validate(document, SCHEMA)
    [finding] = [f for f in document["findings"] if f["check"] == "unused_index"]
    assert (finding["object"], finding["database"]) == (QUALIFIED_INDEX, DATABASE)


def test_judged_once_per_store_version(store: Store) -> None:
    page = HealthPage(config())
    first = page.html(store)
    assert page.html(store) is first  # the cached bytes
    assert page.json(store) is page.json(store)
    assert page.builds == 1
    assert b"5.0 MiB" in first
    publish(store, 7 * 1024 * 1024)  # a collector run: a new store version
    second = page.html(store)
    assert page.builds == 2
    assert b"7.0 MiB" in second and b"5.0 MiB" not in second
    assert json.loads(page.json(store))["findings"] == page.report(store).as_json()["findings"]
    assert page.builds == 2


def test_page_shows_states_times_and_thresholds(store: Store) -> None:
    store.publish(
        "pg",
        "bloat",
        None,
        CollectorStatus(state=State.UNAVAILABLE, message="pgstattuple <is> not installed"),
        max_age=3600,
    )
    html = HealthPage(config()).html(store).decode()
    parsed = page_text(html)
    text = "".join(parsed.text)
    # Why it cannot run: in the collectors table and as a finding, as text.
    assert text.count("pgstattuple <is> not installed") == 2
    assert "is" not in parsed.tags
    # Collectors not run yet are listed as pending; the data's time is given.
    assert "<span class='state pending'>pending</span>" in html
    assert "Data collected at " in text
    # The threshold the unused index was judged by (the collector's param), readable.
    assert "index_health.unused_min_bytes 1.0 MiB" in text
    assert "stats_reset_timestamp_seconds" in text and "never" in text


def test_every_threshold_belongs_to_a_check() -> None:
    """The page names each finding's thresholds: every one of the report's own is claimed by a
    check, and the table names only real checks and thresholds."""
    names = {f.name for f in dataclasses.fields(Thresholds)}
    claimed = {name for own in OWN_THRESHOLDS.values() for name in own}
    assert claimed == names
    assert set(OWN_THRESHOLDS) <= {check.name for check in CHECKS}


def test_thresholds_of_a_check(store: Store) -> None:
    report = HealthPage(config()).report(store)
    assert thresholds_of("connections", report) == {
        "connections_warning": 0.8,
        "connections_critical": 0.95,
    }
    assert thresholds_of("unused_index", report) == {"index_health.unused_min_bytes": 1048576.0}
    assert thresholds_of("schema", report) == {}
