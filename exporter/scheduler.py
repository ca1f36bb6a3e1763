"""Background jobs: one `up` probe per target and one job per (target, collector).

APScheduler 3.x runs them on a bounded thread pool. Each job runs at most once at a time
(max_instances=1), missed runs collapse into one (coalesce), and a small jitter spreads jobs of
the same interval so they do not all hit the server in the same second.
"""

import datetime as dt
import logging
from collections.abc import Iterable

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from exporter.catalogue import Collector
from exporter.collection import probe_target, run_collector
from exporter.store import Store
from exporter.targets import Target, TargetRegistry

log = logging.getLogger(__name__)

MAX_JITTER_SECONDS = 5.0
PROBE_WORKERS = 2


def _probe_id(target: str) -> str:
    # Not "<target>/up": a custom collector may be named `up`, and its job is "<target>/up".
    return f"{target}/(probe)"


def _jitter(interval: float) -> float:
    return min(interval * 0.1, MAX_JITTER_SECONDS)


class Scheduler:
    def __init__(
        self,
        registry: TargetRegistry,
        store: Store,
        collectors: Iterable[Collector],
        *,
        up_interval: float,
        max_age_intervals: float,
        max_workers: int = 8,
    ) -> None:
        self._registry = registry
        self._store = store
        self._collectors = [c for c in collectors if c.spec.enabled]
        self._up_interval = up_interval
        self._max_age_intervals = max_age_intervals
        self._scheduler = BackgroundScheduler(
            executors={
                "default": ThreadPoolExecutor(max_workers=max_workers),
                # Probes get threads of their own: collectors queueing for a busy connection
                # must never keep pg_up from being measured.
                "probes": ThreadPoolExecutor(max_workers=PROBE_WORKERS),
            },
            job_defaults={"coalesce": True, "max_instances": 1},
            timezone=dt.UTC,
        )

    @property
    def collectors(self) -> list[Collector]:
        return list(self._collectors)

    def start(self) -> None:
        for target in self._registry:
            self.add_target(target)
        self._scheduler.start()

    def add_target(self, target: Target) -> None:
        """Schedule a target's jobs; the first run of each is now, not one interval from now."""
        now = dt.datetime.now(dt.UTC)
        self._scheduler.add_job(
            probe_target,
            "interval",
            args=[target],
            seconds=self._up_interval,
            jitter=_jitter(self._up_interval),
            next_run_time=now,
            id=_probe_id(target.name),
            executor="probes",
            misfire_grace_time=max(1, int(self._up_interval)),
        )
        for collector in self._collectors:
            self._add_collector_job(target, collector, now)

    def _add_collector_job(self, target: Target, collector: Collector, now: dt.datetime) -> None:
        if collector.spec.target_type != target.config.type:
            return
        interval = collector.spec.interval
        self._scheduler.add_job(
            run_collector,
            "interval",
            args=[target, collector, self._store],
            kwargs={"max_age": interval * self._max_age_intervals},
            seconds=interval,
            jitter=_jitter(interval),
            next_run_time=now,
            id=f"{target.name}/{collector.name}",
            misfire_grace_time=max(1, int(interval)),
        )

    def remove_target(self, name: str) -> None:
        for job in self._scheduler.get_jobs():
            if job.id.startswith(f"{name}/"):
                job.remove()

    def set_collectors(
        self, collectors: Iterable[Collector], *, up_interval: float, max_age_intervals: float
    ) -> set[str]:
        """Apply a reloaded catalogue to the targets scheduled now.

        A job whose collector did not change keeps its schedule (a reload does not make every
        slow collector run again); a changed collector's job is replaced and runs now; a
        removed or disabled one's job goes. Returns the names of collectors no longer run,
        whose data the caller drops.
        """
        old = {c.name: c for c in self._collectors}
        new = {c.name: c for c in collectors if c.spec.enabled}
        ages_changed = max_age_intervals != self._max_age_intervals
        self._collectors = list(new.values())
        self._max_age_intervals = max_age_intervals
        now = dt.datetime.now(dt.UTC)
        for target in self._registry:
            if up_interval != self._up_interval:
                self._scheduler.reschedule_job(
                    _probe_id(target.name),
                    trigger="interval",
                    seconds=up_interval,
                    jitter=_jitter(up_interval),
                )
            for name, collector in new.items():
                if old.get(name) == collector and not ages_changed:
                    continue
                if name in old:
                    self._remove_job(f"{target.name}/{name}")
                self._add_collector_job(target, collector, now)
            for name in old.keys() - new.keys():
                self._remove_job(f"{target.name}/{name}")
        self._up_interval = up_interval
        return set(old) - set(new)

    def _remove_job(self, job_id: str) -> None:
        if self._scheduler.get_job(job_id) is not None:  # a pgbouncer target lacks most
            self._scheduler.remove_job(job_id)

    def shutdown(self) -> None:
        """Stop scheduling and wait for running jobs (each is bounded by its statement timeout)."""
        self._scheduler.shutdown(wait=True)


def run_all_once(
    registry: TargetRegistry, store: Store, collectors: Iterable[Collector], *, max_age: float
) -> None:
    """Probe every target and run every enabled collector once, in order (the `once` command)."""
    enabled = [c for c in collectors if c.spec.enabled]
    for target in registry:
        probe_target(target)
        for collector in enabled:
            if collector.spec.target_type != target.config.type:
                continue
            run_collector(target, collector, store, max_age=max_age)
