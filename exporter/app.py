"""Wiring: config to registry, scheduler, store and HTTP server, started, changed and stopped
as one. `apply` is how a reloaded configuration (SIGHUP) reaches the running exporter."""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from exporter.collection import Scheduler
from exporter.config import Config, TargetConfig
from exporter.errors import ConfigError
from exporter.exposition.compat import derive_for
from exporter.exposition.selfmetrics import connection_metrics, self_metrics, worker_metrics
from exporter.exposition.store import Store
from exporter.logs import add_secrets
from exporter.targets import ServerFacts, TargetRegistry
from exporter.targets.connection_cap import ConnectionCap
from exporter.targets.probed import ProbedTargets
from exporter.web.config import OPEN, WebSecurity
from exporter.web.health import HealthPage
from exporter.web.html import LandingPage
from exporter.web.server import METRICS_PATH, MetricsServer

log = logging.getLogger(__name__)

# Kubernetes waits 30 s after SIGTERM before killing; a stop well within it, whatever happens.
STOP_SECONDS = 4.0

# Reads and validates config.yaml and the web config file, as at start-up.
Loader = Callable[[], tuple[Config, WebSecurity]]


@dataclass(frozen=True)
class Changes:
    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    collectors_dropped: tuple[str, ...]
    probes_dropped: tuple[str, ...] = ()


class Exporter:
    """The running daemon: background collection and the HTTP server."""

    def __init__(
        self,
        config: Config,
        *,
        listen_address: str | None = None,
        web: WebSecurity = OPEN,
        metrics_path: str = METRICS_PATH,
    ) -> None:
        self.config = config
        self.metrics_path = metrics_path
        self.store = Store(
            self_metrics=self_metrics,
            derive=derive_for(config),
            process_metrics=lambda: [
                *worker_metrics(self.scheduler.worker_stats()),
                *connection_metrics(self.registry.cap.stats()),
            ],
        )
        # Sized once, as the workers: a reload keeps the cap.
        self.registry = TargetRegistry(ConnectionCap(config.max_connections_total))
        # One pool for every target, fixed: a target runs at most its connection cap of jobs
        # at once, so none can take the workers of the others. Threads start only as jobs
        # wait. Sized once: a reload keeps the pool.
        self.scheduler = Scheduler(
            self.store,
            config.catalogue,
            up_interval=config.up_interval,
            max_age_intervals=config.max_age_intervals,
            max_workers=config.workers,
        )
        self.health = self._health(config)
        self.probed = ProbedTargets(config, add=self._add_target, remove=self._remove_target)
        self.server = MetricsServer(
            self.store,
            _landing(config, metrics_path),
            self.health,
            listen_address or config.listen_address,
            web=web,
            metrics_path=metrics_path,
            prober=lambda target, module: self.probed.probe(target, module)[0],
        )

    def start(self) -> None:
        self.scheduler.start()
        for target in self.config.targets:
            self._add_target(target)
        self.probed.start()
        self.server.start()

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """Stop within `timeout` seconds, whatever the databases do.

        No run starts after this; no job opens a session or visits another database; the
        sessions jobs are using are cut, so a job waiting on a frozen server fails at once.
        Jobs still running at the deadline (in a connect, which cannot be cut) are abandoned:
        they run on daemon threads and publish nothing.
        """
        deadline = time.monotonic() + timeout
        self.probed.stop()
        self.scheduler.shutdown()
        self.registry.close()
        self.server.shutdown()
        left = self.scheduler.wait(max(0.0, deadline - time.monotonic()))
        if left:
            log.info("stopped with jobs still waiting on a database", extra={"jobs": left})

    def _add_target(self, config: TargetConfig) -> None:
        target = self.registry.add(config)
        # "connecting", until probed
        self.store.publish_target(target.name, target.reach, budget=config.database_time_budget)
        self.scheduler.add_target(target)

    def _remove_target(self, name: str) -> None:
        self.scheduler.remove_target(name)  # first, so no new run starts on a closing pool
        self.registry.remove(name)  # closes its connections
        self.store.forget(name)

    def reload(self, load: Loader) -> bool:
        """Re-read the configuration and apply it; on any problem keep the running one."""
        try:
            config, web = load()
        except ConfigError as exc:
            log.error(
                "config reload failed, keeping the running config",
                extra={"problems": "; ".join(exc.problems)},
            )
            return False
        try:
            changes = self.apply(config, web)
        except Exception:  # a defect must not take the daemon down with it
            log.exception("config reload failed while applying it")
            return False
        log.info(
            "config reloaded",
            extra={
                "added": ",".join(changes.added),
                "changed": ",".join(changes.changed),
                "removed": ",".join(changes.removed),
                "collectors_dropped": ",".join(changes.collectors_dropped),
                "probed_targets_dropped": ",".join(changes.probes_dropped),
            },
        )
        return True

    def apply(self, config: Config, web: WebSecurity) -> Changes:
        """Make the running exporter match `config` and `web`, validated in full beforehand.

        A target whose settings did not change keeps its pool, its facts and its data; one
        that changed is closed and opened anew (it may be another server now, or another
        role); added and removed targets come and go.
        """
        add_secrets(config.secrets())
        # Probed targets first: one whose name a configured target now takes goes before it
        # comes, and one its auth module no longer describes is dropped (its next probe
        # registers it anew).
        probes_dropped = self.probed.apply(config)
        old = {t.name: t for t in self.config.targets}
        new = {t.name: t for t in config.targets}
        removed = sorted(old.keys() - new.keys())
        added = sorted(new.keys() - old.keys())
        changed = sorted(n for n in old.keys() & new.keys() if old[n] != new[n])

        for name in removed + changed:
            self._remove_target(name)
        dropped = self.scheduler.set_collectors(
            config.catalogue,
            up_interval=config.up_interval,
            max_age_intervals=config.max_age_intervals,
        )
        for target in self.registry:
            for collector in dropped:
                self.store.forget(target.name, collector)
        for name in added + changed:
            self._add_target(new[name])

        self.store.set_derive(derive_for(config))
        self.health = self._health(config)
        self.server.set_pages(_landing(config, self.metrics_path), self.health)
        self.server.set_web(web)
        if config.listen_address != self.config.listen_address:
            log.warning(
                "listen_address changes need a restart",
                extra={"running": self.config.listen_address, "new": config.listen_address},
            )
        self.config = config
        return Changes(
            tuple(added),
            tuple(changed),
            tuple(removed),
            tuple(sorted(dropped)),
            tuple(probes_dropped),
        )

    def _health(self, config: Config) -> HealthPage:
        return HealthPage(config, facts=self._facts)

    def _facts(self) -> dict[str, ServerFacts]:
        return {t.name: t.facts for t in self.registry if t.facts is not None}

    def __enter__(self) -> "Exporter":
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _landing(config: Config, metrics_path: str = METRICS_PATH) -> LandingPage:
    return LandingPage(
        metrics_path=metrics_path,
        target_dsns={t.name: t.safe_dsn() for t in config.targets},
        collectors={
            t.name: [
                c.name for c in config.catalogue if c.spec.enabled and c.spec.target_type == t.type
            ]
            for t in config.targets
        },
    )
