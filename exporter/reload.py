"""Applying a reloaded configuration (SIGHUP) to the running exporter.

The new config has been validated in full before anything here runs, so a bad file never
leaves the exporter half-changed. A target whose settings did not change keeps its pool, its
facts, its sticky selections and its data; one that changed is closed and opened anew (it may
be another server now, or another role); added and removed targets come and go.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass

from exporter.app import Exporter
from exporter.config import Config, ConfigError
from exporter.logs import add_secrets
from exporter.server import LandingPage
from exporter.webconfig import WebSecurity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Changes:
    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    collectors_dropped: tuple[str, ...]


# Reads and validates config.yaml and the web config file, as at start-up.
Loader = Callable[[], tuple[Config, WebSecurity]]


def reload(exporter: Exporter, load: Loader) -> bool:
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
        changes = apply_config(exporter, config, web)
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
        },
    )
    return True


def apply_config(exporter: Exporter, config: Config, web: WebSecurity) -> Changes:
    """Make the running exporter match `config` and `web`."""
    add_secrets([s for t in config.targets for s in t.secrets()])
    old = {t.name: t for t in exporter.config.targets}
    new = {t.name: t for t in config.targets}
    removed = sorted(old.keys() - new.keys())
    added = sorted(new.keys() - old.keys())
    changed = sorted(n for n in old.keys() & new.keys() if old[n] != new[n])

    for name in removed + changed:
        exporter.scheduler.remove_target(name)  # first, so no new run starts on a closing pool
        exporter.registry.remove(name)  # closes its connections, drops its data
    dropped = exporter.scheduler.set_collectors(
        config.catalogue,
        up_interval=config.up_interval,
        max_age_intervals=config.max_age_intervals,
    )
    for target in exporter.registry:
        for collector in dropped:
            exporter.store.forget_collector(target.name, collector)
    for name in added + changed:
        exporter.scheduler.add_target(exporter.registry.add(new[name]))

    exporter.server.set_landing(
        LandingPage(target_dsns={t.name: t.safe_dsn() for t in config.targets})
    )
    exporter.server.set_web(web)
    if config.listen_address != exporter.config.listen_address:
        log.warning(
            "listen_address changes need a restart",
            extra={"running": exporter.config.listen_address, "new": config.listen_address},
        )
    exporter.config = config
    return Changes(tuple(added), tuple(changed), tuple(removed), tuple(sorted(dropped)))
