"""METRICS.md is generated from the catalogue and must be current."""

import pytest

from exporter.metricsdoc import metrics_doc
from support import REPO

pytestmark = pytest.mark.any_major


def test_metrics_md_is_current() -> None:
    committed = (REPO / "METRICS.md").read_text()
    assert committed == metrics_doc(), "METRICS.md is stale: run `make metrics-doc`"


def test_every_builtin_metric_is_documented() -> None:
    doc = metrics_doc()
    for name in ("pg_database_xact_commit_total", "pg_connections_backends", "pg_up"):
        assert f"`{name}`" in doc
