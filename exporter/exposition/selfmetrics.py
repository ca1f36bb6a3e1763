"""The exporter's own metrics: is each target up, and how fresh and healthy is each collector."""

import platform
from collections.abc import Iterable

from exporter import __version__
from exporter.exposition.render import FamilyWriter, RenderedFamily, label_set
from exporter.status import State, TargetStatus

# The session pool's get_stats() keys (psycopg_pool's names) -> (metric, kind, help).
POOL_STATS: dict[str, tuple[str, str, str]] = {
    "pool_size": (
        "pg_exporter_pool_connections",
        "gauge",
        "Connections the pool holds (in use, idle or being opened).",
    ),
    "pool_available": (
        "pg_exporter_pool_idle_connections",
        "gauge",
        "Pool connections idle and ready.",
    ),
    "pool_max": (
        "pg_exporter_pool_max_connections",
        "gauge",
        "The most connections the pool may open.",
    ),
    "requests_waiting": (
        "pg_exporter_pool_waiting_requests",
        "gauge",
        "Jobs waiting for a pool connection right now.",
    ),
    "requests_num": (
        "pg_exporter_pool_requests_total",
        "counter",
        "Connections requested from the pool.",
    ),
    "requests_queued": (
        "pg_exporter_pool_requests_queued_total",
        "counter",
        "Requests that had to wait for a connection.",
    ),
    "requests_errors": (
        "pg_exporter_pool_request_errors_total",
        "counter",
        "Requests that timed out or were refused.",
    ),
    "requests_wait_ms": (
        "pg_exporter_pool_request_wait_seconds_total",
        "counter",
        "Time spent waiting for pool connections.",
    ),
    "connections_num": (
        "pg_exporter_pool_connections_opened_total",
        "counter",
        "Connection attempts the pool made.",
    ),
    "connections_errors": (
        "pg_exporter_pool_connection_errors_total",
        "counter",
        "Connection attempts that failed.",
    ),
    "connections_lost": (
        "pg_exporter_pool_connections_lost_total",
        "counter",
        "Connections found broken (server restart, terminated backend).",
    ),
    # The connection beside the pool that visits the other databases (and that the probe's
    # new login takes first): per-database collectors queue here, one database at a time.
    "visits_waiting": (
        "pg_exporter_visits_waiting",
        "gauge",
        "Jobs waiting for the connection that visits other databases, right now.",
    ),
    "visits_num": (
        "pg_exporter_visits_total",
        "counter",
        "Times the visiting connection was taken: visits to other databases, probe logins.",
    ),
    "visits_logins": (
        "pg_exporter_visit_logins_total",
        "counter",
        "New sessions opened to visit databases other than the target's own, failed ones "
        "included (targets[].visit_logins_per_minute bounds their rate).",
    ),
    "visits_queued": (
        "pg_exporter_visits_queued_total",
        "counter",
        "Visits that had to wait for the visiting connection.",
    ),
    "visits_errors": (
        "pg_exporter_visit_wait_timeouts_total",
        "counter",
        "Waits for the visiting connection that timed out (the collector reported it busy).",
    ),
    "visits_wait_ms": (
        "pg_exporter_visit_wait_seconds_total",
        "counter",
        "Time spent waiting for the visiting connection.",
    ),
}

# The scheduler's worker pools (process-wide, label `pool`: collectors, probes) ->
# (metric, kind, help). Rendered with the whole body, which is rebuilt whenever a job publishes.
WORKER_STATS: dict[str, tuple[str, str, str]] = {
    "workers": (
        "pg_exporter_workers",
        "gauge",
        "Jobs the pool runs at once at most: threads, started as jobs wait, shared by all targets.",
    ),
    "busy": (
        "pg_exporter_workers_busy",
        "gauge",
        "Workers running a job.",
    ),
    "queued": (
        "pg_exporter_worker_jobs_queued",
        "gauge",
        "Jobs due that wait for a free worker.",
    ),
    "busy_seconds": (
        "pg_exporter_worker_busy_seconds_total",
        "counter",
        "Time the pool's workers spent on jobs that ended; its rate over pg_exporter_workers "
        "is the pool's use.",
    ),
    "wait_seconds": (
        "pg_exporter_worker_wait_seconds_total",
        "counter",
        "Time due jobs waited for a free worker, summed; rising: more jobs than workers.",
    ),
}


def worker_metrics(pools: dict[str, dict[str, float]]) -> list[RenderedFamily]:
    """The worker pools' size and use (Scheduler.worker_stats)."""
    families = []
    for key, (name, kind, help_text) in WORKER_STATS.items():
        family = _Family(name, help_text, ["pool"], counter=kind == "counter")
        for pool, stats in sorted(pools.items()):
            family.add_metric([pool], stats.get(key, 0))
        if family.samples:
            families.append(family.rendered())
    return families


CONNECTION_STATS: dict[str, tuple[str, str, str]] = {
    "max": (
        "pg_exporter_connections_max",
        "gauge",
        "Sessions the process may hold at once, all targets together (max_connections_total).",
    ),
    "open": (
        "pg_exporter_connections_open",
        "gauge",
        "Sessions the process holds (open or being opened), all targets together, as of the "
        "last publish.",
    ),
    "closed_for_room": (
        "pg_exporter_connections_closed_for_room_total",
        "counter",
        "Idle sessions closed to keep within max_connections_total (the least recently used "
        "first); rising steadily: more targets than the cap, each logging in per run.",
    ),
}


def connection_metrics(stats: dict[str, int]) -> list[RenderedFamily]:
    """The process's sessions against its cap (ConnectionCap.stats)."""
    families = []
    for key, (name, kind, help_text) in CONNECTION_STATS.items():
        family = _Family(name, help_text, [], counter=kind == "counter")
        family.add_metric([], stats.get(key, 0))
        families.append(family.rendered())
    return families


class _Family:
    """A family with fixed label names, written with FamilyWriter (labels sorted by name,
    as prometheus_client writes them)."""

    def __init__(self, name: str, help_text: str, labels: list[str], *, counter: bool) -> None:
        self._writer = FamilyWriter(name, help_text, counter=counter)
        self._order = sorted(range(len(labels)), key=lambda i: labels[i])
        self._names = [labels[i] for i in self._order]

    @property
    def samples(self) -> int:
        return self._writer.series

    def add_metric(self, values: list[str], value: float) -> None:
        self._writer.add(label_set(self._names, [values[i] for i in self._order]), value)

    def rendered(self) -> RenderedFamily:
        return self._writer.rendered()


def _gauge(name: str, help_text: str, labels: list[str]) -> _Family:
    return _Family(name, help_text, labels, counter=False)


def _counter(name: str, help_text: str, labels: list[str]) -> _Family:
    return _Family(name, help_text, labels, counter=True)


def self_metrics(targets: dict[str, TargetStatus]) -> Iterable[RenderedFamily]:
    return [family.rendered() for family in _families(targets) if family.samples]


def _families(targets: dict[str, TargetStatus]) -> list[_Family]:
    build = _gauge(
        "pg_exporter_build_info",
        "pg-health-exporter version and Python version; always 1.",
        labels=["version", "python_version"],
    )
    build.add_metric([__version__, platform.python_version()], 1)
    up = _gauge(
        "pg_up",
        "1 if the last connection to the target succeeded, 0 if it failed.",
        labels=["target"],
    )
    pending = _gauge(
        "pg_exporter_target_pending",
        "1 until the target's first connection attempt has an outcome (pg_up is 0 meanwhile, "
        "without meaning the target is down), then 0.",
        labels=["target"],
    )
    per_collector = ["target", "collector"]
    last_success = _gauge(
        "pg_exporter_collector_last_success_timestamp_seconds",
        "When the collector last completed without error (Unix time).",
        labels=per_collector,
    )
    duration = _gauge(
        "pg_exporter_collector_duration_seconds",
        "How long the collector's last run took, including every database it visited.",
        labels=per_collector,
    )
    errors = _counter(
        "pg_exporter_collector_errors_total",
        "Runs of the collector that failed (SQL error, timeout); not counted while the "
        "target is down, which pg_up reports.",
        labels=per_collector,
    )
    series = _gauge(
        "pg_exporter_collector_series",
        "Series the collector published on its last successful run.",
        labels=per_collector,
    )
    collector_up = _gauge(
        "pg_exporter_collector_up",
        "1 if the collector's last run succeeded, 0 if it failed or cannot run here.",
        labels=per_collector,
    )
    interval = _gauge(
        "pg_exporter_collector_interval_seconds",
        "Seconds between the collector's runs now: as configured, or longer to keep the "
        "target's database time budget.",
        labels=per_collector,
    )
    database_time = _counter(
        "pg_exporter_collector_database_seconds",
        "Time the collector's statements kept the server busy (sent to last reply, on the "
        "exporter's clock): its cost on the monitored database.",
        labels=per_collector,
    )
    skipped = _counter(
        "pg_exporter_collector_runs_skipped",
        "Runs of the collector that did not happen: its last run was still going, or no "
        "worker was free in time. Rising: the target cannot keep this interval.",
        labels=per_collector,
    )
    late = _gauge(
        "pg_exporter_collector_late_seconds",
        "How late the collector's last run started, beyond its interval and jitter "
        "(waiting for a worker, or for its previous run).",
        labels=per_collector,
    )
    budget = _gauge(
        "pg_exporter_database_time_budget_ratio",
        "Database time per second the target's collectors may use (the default, 200 ms a "
        "minute, is 0.0033: a third of a percent of one core); absent without a budget.",
        labels=["target"],
    )
    available = _gauge(
        "pg_exporter_collector_available",
        "0 with a reason when the collector cannot run on this target "
        "(server version, missing extension or privilege), else 1.",
        labels=[*per_collector, "reason"],
    )
    not_visited = _gauge(
        "pg_exporter_database_not_visited",
        "1 for each database per-database collectors cannot visit, with the reason "
        "(CONNECT not granted to the role; a name that is not valid UTF-8).",
        labels=["target", "datname", "reason"],
    )
    pool: dict[str, _Family] = {
        key: (_counter if kind == "counter" else _gauge)(name, help_text, labels=["target"])
        for key, (name, kind, help_text) in POOL_STATS.items()
    }
    for target, status in sorted(targets.items()):
        up.add_metric([target], 1 if status.up else 0)
        pending.add_metric([target], 1 if status.pending else 0)
        for datname, reason in status.reach.not_visited:
            not_visited.add_metric([target, datname, reason], 1)
        if status.budget is not None:
            budget.add_metric([target], status.budget)
        if status.pool:
            for key, family in pool.items():
                scale = 0.001 if key.endswith("_ms") else 1
                family.add_metric([target], status.pool.get(key, 0) * scale)
        for name, collector in sorted(status.collectors.items()):
            labels = [target, name]
            if collector.last_success is not None:
                last_success.add_metric(labels, collector.last_success)
            duration.add_metric(labels, collector.last_duration)
            errors.add_metric(labels, collector.errors_total)
            series.add_metric(labels, collector.series)
            if collector.interval:
                interval.add_metric(labels, collector.interval)
            database_time.add_metric(labels, collector.database_seconds_total)
            skipped.add_metric(labels, collector.runs_skipped_total)
            late.add_metric(labels, collector.late_seconds)
            collector_up.add_metric(labels, 1 if collector.state == State.OK else 0)
            unavailable = collector.state == State.UNAVAILABLE
            reason = collector.message if unavailable else ""
            available.add_metric([*labels, reason], 0 if unavailable else 1)
    return [
        build,
        up,
        pending,
        last_success,
        duration,
        errors,
        series,
        collector_up,
        available,
        interval,
        database_time,
        skipped,
        late,
        *([budget] if budget.samples else []),
        *(family for family in (not_visited, *pool.values()) if family.samples),
    ]
