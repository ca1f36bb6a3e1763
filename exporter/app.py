"""Wiring: config to registry, scheduler, store and HTTP server, started and stopped as one."""

from types import TracebackType

from exporter.config import Config
from exporter.facts import ServerFacts
from exporter.scheduler import Scheduler, run_all_once
from exporter.selfmetrics import self_metrics
from exporter.server import LandingPage, MetricsServer
from exporter.store import Store
from exporter.targets import TargetRegistry
from exporter.webconfig import OPEN, WebSecurity


class Exporter:
    """The running daemon: background collection and the HTTP server."""

    def __init__(
        self, config: Config, *, listen_address: str | None = None, web: WebSecurity = OPEN
    ) -> None:
        self.config = config
        self.store = Store(self_metrics=self_metrics)
        self.registry = TargetRegistry(self.store)
        # Jobs beyond the connection cap would only wait for a connection; a few extra threads
        # keep one target's slow collector from starving another target.
        workers = max(4, sum(t.max_connections for t in config.targets) + 2)
        self.scheduler = Scheduler(
            self.registry,
            self.store,
            config.catalogue,
            up_interval=config.up_interval,
            max_age_intervals=config.max_age_intervals,
            max_workers=workers,
        )
        landing = LandingPage(target_dsns={t.name: t.safe_dsn() for t in config.targets})
        self.server = MetricsServer(
            self.store, landing, listen_address or config.listen_address, web=web
        )

    def start(self) -> None:
        for target in self.config.targets:
            self.registry.add(target)
        self.scheduler.start()
        self.server.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.scheduler.shutdown()
        self.registry.close()

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


def run_once(config: Config) -> tuple[Store, dict[str, ServerFacts]]:
    """Run every collector once against every target: the filled store, and the facts of each
    target that answered."""
    store = Store(self_metrics=self_metrics)
    registry = TargetRegistry(store)
    try:
        for target in config.targets:
            registry.add(target)
        # Data collected now stays valid for as long as the slowest collector's max age, so
        # nothing expires before the caller reads it.
        max_age = max(c.spec.interval for c in config.catalogue) * config.max_age_intervals
        run_all_once(registry, store, config.catalogue, max_age=max_age)
        return store, {t.name: t.facts for t in registry if t.facts is not None}
    finally:
        registry.close()


def collect_once(config: Config) -> bytes:
    """Run every collector once against every target and return the exposition."""
    store, _ = run_once(config)
    return store.snapshot().body
