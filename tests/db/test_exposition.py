"""The exposition passes Prometheus' own linter, with every collector enabled."""

import subprocess

from exporter.collection import run_once
from exporter.demo.embedded import LocalPostgres
from support import exporter_config, tool


def test_once_output_passes_promtool_check_metrics(postgres: LocalPostgres) -> None:
    config = exporter_config(postgres.dsn())
    enabled = tuple(
        c.model_copy(update={"spec": c.spec.model_copy(update={"enabled": True})})
        for c in config.catalogue
    )
    body = run_once(config.model_copy(update={"catalogue": enabled})).body
    result = subprocess.run(
        [tool("promtool", "prometheus"), "check", "metrics"],
        input=body,
        capture_output=True,
        timeout=60,
        check=False,
    )
    problems = (result.stdout + result.stderr).decode()
    assert result.returncode == 0, problems
    assert problems.strip() == "", problems
