"""The exposition passes Prometheus' own linter, with every collector enabled."""

from exporter.collection import run_once
from exporter.demo.embedded import LocalPostgres
from support import exporter_config, promtool_check_metrics


def test_once_output_passes_promtool_check_metrics(postgres: LocalPostgres) -> None:
    config = exporter_config(postgres.dsn())
    enabled = tuple(
        c.model_copy(update={"spec": c.spec.model_copy(update={"enabled": True})})
        for c in config.catalogue
    )
    body = run_once(config.model_copy(update={"catalogue": enabled})).body
    problems = promtool_check_metrics(body)
    assert problems.strip() == "", problems
