"""`pg-health-exporter report`: collect everything once and judge the samples (cli prints them).

The collection is the `once` command's (every enabled collector of the catalogue, run once per
target by collection.run_once); the report then reads the exposition text back and judges
it (the checks package), so it says exactly what /metrics would show. The store is kept as well:
it holds what the exposition cannot say, why a collector failed or a target is down.
"""

import getpass
import os
from collections.abc import Mapping

from exporter.collection import run_once
from exporter.config import Config, TargetConfig
from exporter.errors import ConfigError
from exporter.report import checks
from exporter.report.checks import Context, Thresholds, judge
from exporter.report.findings import Finding, Report, TargetInfo
from exporter.report.samples import Samples
from exporter.status import TargetStatus
from exporter.targets import ServerFacts


def select_target(config: Config, name: str | None) -> Config:
    """The config with only the named target (all of them for None)."""
    if name is None:
        return config
    chosen = [t for t in config.targets if t.name == name]
    if not chosen:
        known = ", ".join(t.name for t in config.targets)
        raise ConfigError([f"--target: no target named {name!r} (targets: {known})"])
    return config.model_copy(update={"targets": tuple(chosen)})


def build_report(
    config: Config, *, target: str | None = None, thresholds: Thresholds | None = None
) -> Report:
    """Collect once from the configured targets (or the one named) and judge what came back."""
    config = select_target(config, target)
    collected = run_once(config)
    samples = Samples.parse(collected.body.decode())
    return judge_collected(
        config, samples, collected.statuses, collected.facts, thresholds=thresholds
    )


def judge_collected(
    config: Config,
    samples: Samples,
    statuses: Mapping[str, TargetStatus],
    facts: Mapping[str, ServerFacts],
    *,
    thresholds: Thresholds | None = None,
) -> Report:
    """The report on what was collected from the config's targets (once, or by a daemon)."""
    thresholds = thresholds or Thresholds()
    catalogue = {c.name: c for c in config.catalogue}
    infos: list[TargetInfo] = []
    findings: list[Finding] = []
    for target_config in config.targets:
        name = target_config.name
        status = statuses.get(name, TargetStatus())
        mine = samples.where(target=name)
        databases = sorted(
            {s["datname"] for s in mine.all("pg_statio_heap_blks_hit_total")}
            | {s["datname"] for s in mine.all("pg_tables_all_tables")}
        )
        info = TargetInfo(
            name=name,
            up=status.up,
            type=target_config.type,
            server_version=status.server_version or None,
            databases=tuple(databases),
            message=status.message,
        )
        infos.append(info)
        findings.append(checks.target_finding(info))
        if not status.up:
            continue
        probed = facts.get(name)
        context = Context(
            target=name,
            target_type=target_config.type,
            samples=mine,
            thresholds=thresholds,
            catalogue=catalogue,
            statuses=status.collectors,
            monitoring_role=_monitoring_role(target_config, probed),
            facts=probed,
            forbidden_databases=tuple(
                db
                for db in (probed.forbidden_databases if probed else ())
                if target_config.databases.allows(db)
            ),
        )
        findings.extend(judge(context))
    return Report(
        targets=tuple(infos),
        findings=tuple(sorted(findings, key=checks.sort_key)),
        thresholds=checks.thresholds(thresholds, {c.name: c.spec.params for c in config.catalogue}),
    )


def _monitoring_role(target: TargetConfig, facts: ServerFacts | None) -> str | None:
    """The exporter's role when it is a monitoring role (pg_monitor, not a superuser).

    Its statements are then the exporter's own collector queries, left out of the slowest
    statements. A superuser or an application's role may run the application's statements
    too, so theirs are kept.
    """
    if facts is None or facts.superuser or "pg_monitor" not in facts.roles:
        return None
    user = target.dsn_params.get("user")
    # libpq's defaults when the DSN names no user.
    return str(user or os.environ.get("PGUSER") or getpass.getuser())
