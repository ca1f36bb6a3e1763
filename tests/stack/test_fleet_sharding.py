"""A fleet as Prometheus users run one: many clusters behind one exporter's `/probe`, found
through `file_sd`, split between two Prometheus servers by `hashmod`.

Every cluster is scraped by exactly one of the two, together they see every cluster up, and
freezing one cluster changes only its own series.
"""

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from exporter.config import parse_config
from exporter.demo.embedded import LocalPostgres
from support import RunExporter, wait_for
from support.freeze import frozen
from support.promstack import LocalPrometheus

# /probe, file_sd and hashmod do not depend on the server's major version.
pytestmark = pytest.mark.any_major

CLUSTERS = 20
SHARDS = 2
# Small servers: twenty of them share two cores.
SMALL = {"shared_buffers": "16MB", "max_connections": "20", "max_wal_senders": "0"}


@pytest.fixture(scope="module")
def clusters() -> Iterator[list[LocalPostgres]]:
    with ExitStack() as stack:
        servers = []
        for _ in range(CLUSTERS):
            server = LocalPostgres(settings=SMALL, preload_libraries=())
            stack.callback(server.cleanup)
            server.start()
            servers.append(server)
        yield servers


def _scrape_config(exporter: str, sd_file: Path, shard: int) -> dict[str, Any]:
    """The multi-target pattern: each file_sd target becomes `?target=`, the exporter is the
    address scraped, and hashmod keeps this shard's share."""
    return {
        "job_name": "postgres",
        "metrics_path": "/probe",
        "params": {"auth_module": ["default"]},
        "file_sd_configs": [{"files": [str(sd_file)], "refresh_interval": "1s"}],
        "relabel_configs": [
            {"source_labels": ["__address__"], "target_label": "__param_target"},
            {"source_labels": ["__param_target"], "target_label": "instance"},
            {
                "source_labels": ["__param_target"],
                "modulus": SHARDS,
                "target_label": "__tmp_shard",
                "action": "hashmod",
            },
            {"source_labels": ["__tmp_shard"], "regex": str(shard), "action": "keep"},
            {"target_label": "__address__", "replacement": exporter},
        ],
    }


def _up_by_instance(prometheus: LocalPrometheus, expr: str) -> dict[str, float]:
    return {r["metric"]["instance"]: float(r["value"][1]) for r in prometheus.query(expr)}


def test_two_sharded_prometheus_servers_share_a_fleet_behind_one_probe(
    clusters: list[LocalPostgres], run_exporter: RunExporter, tmp_path: Path
) -> None:
    config = parse_config(
        {
            "up_interval": "1s",
            "probe": {"allow": ["127.0.0.1"]},
            "auth_modules": {"default": {"user": "postgres", "connect_timeout": "2s"}},
        }
    )
    exporter = run_exporter(config)
    address = f"127.0.0.1:{exporter.server.port}"
    fleet = [f"127.0.0.1:{server.port}" for server in clusters]
    sd_file = tmp_path / "postgres.json"
    sd_file.write_text(json.dumps([{"targets": fleet, "labels": {"env": "test"}}]))

    with ExitStack() as stack:
        shards = [
            stack.enter_context(
                LocalPrometheus([], scrape_configs=[_scrape_config(address, sd_file, shard)])
            )
            for shard in range(SHARDS)
        ]

        def all_up() -> bool:
            seen = [_up_by_instance(p, 'pg_up{job="postgres"}') for p in shards]
            return sorted(i for s in seen for i in s) == sorted(fleet) and all(
                v == 1 for s in seen for v in s.values()
            )

        wait_for(all_up, timeout=120, what="every cluster up, in one shard or the other")
        # Exactly one shard scrapes each cluster; each scrape was a healthy one.
        scraped = [_up_by_instance(p, 'up{job="postgres"}') for p in shards]
        assert not set(scraped[0]) & set(scraped[1])
        assert sorted(i for s in scraped for i in s) == sorted(fleet)
        assert all(v == 1 for s in scraped for v in s.values())
        assert all(scraped), "hashmod put every cluster in one shard"

        # One cluster frozen: its pg_up goes to 0; every other stays 1.
        victim = fleet[3]
        with frozen(clusters[3]):

            def only_victim_down() -> bool:
                seen = {k: v for p in shards for k, v in _up_by_instance(p, "pg_up").items()}
                return seen.get(victim) == 0 and all(v == 1 for k, v in seen.items() if k != victim)

            wait_for(only_victim_down, timeout=60, what="the frozen cluster down, alone")
