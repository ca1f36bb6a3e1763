"""Every collector once against every target, in order: the `once` and `report` commands."""

import math
from dataclasses import dataclass

from exporter.collection.jobs import CollectorJob, ProbeJob, run_together
from exporter.config import Config
from exporter.exposition.compat import derive_for
from exporter.exposition.selfmetrics import self_metrics
from exporter.exposition.store import Store
from exporter.status import TargetStatus
from exporter.targets import ServerFacts, TargetRegistry


@dataclass(frozen=True)
class Collected:
    """What one pass collected: the filled store, and the facts of each target that answered."""

    store: Store
    facts: dict[str, ServerFacts]

    @property
    def body(self) -> bytes:
        """The exposition, as /metrics would serve it."""
        return self.store.snapshot().body

    @property
    def statuses(self) -> dict[str, TargetStatus]:
        return self.store.targets()


def run_once(config: Config) -> Collected:
    """Probe every target and run each enabled collector on it once, one after another."""
    store = Store(self_metrics=self_metrics, derive=derive_for(config))
    registry = TargetRegistry()
    enabled = [c for c in config.catalogue if c.spec.enabled]
    try:
        targets = [registry.add(t) for t in config.targets]  # every pool starts connecting
        for target in targets:
            ProbeJob(target, store)()
            # Nothing collected now expires before the caller reads it.
            jobs = [
                CollectorJob(target, collector, store, max_age_intervals=math.inf)
                for collector in enabled
                if collector.spec.target_type == target.config.type
            ]
            for job in jobs:
                if job.collector.spec.scope == "server":
                    job()
            # One visit per database for all the per-database collectors, as in the daemon.
            if per_database := [job for job in jobs if job.collector.spec.scope == "database"]:
                run_together(per_database)
        return Collected(store, {t.name: t.facts for t in registry if t.facts is not None})
    finally:
        registry.close()
