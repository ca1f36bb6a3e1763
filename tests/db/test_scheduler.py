"""Scheduling: the probe's job and the collectors' jobs never collide."""

from collections.abc import Callable

from exporter.app import Exporter
from exporter.config import Config
from exporter.demo.embedded import LocalPostgres
from support import exporter_config, scrape, value, wait_for


def test_custom_collector_named_up(
    postgres: LocalPostgres, run_exporter: Callable[[Config], Exporter]
) -> None:
    """`up` is a valid collector name; its job must not clash with the target's probe."""
    up = {
        "help": "Named like the probe.",
        "interval": "1s",
        "timeout": "1s",
        "queries": [{"sql": "SELECT 1 AS answering", "metrics": {"answering": "gauge"}}],
    }
    exporter = run_exporter(exporter_config(postgres.dsn(), collectors={"up": up}))
    port = exporter.server.port

    def both() -> bool:
        samples = scrape(port)
        return (
            value(samples, "pg_up", target="pg") == 1
            and value(samples, "pg_up_answering", target="pg") == 1
        )

    wait_for(both, what="pg_up and the `up` collector's metric")
