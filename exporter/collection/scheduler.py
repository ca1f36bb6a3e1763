"""Background jobs: one `up` probe per target, one job per (target, collector) of server
scope, and one round of visits per target for its per-database collectors (rounds.py).

APScheduler 3.x runs them on a bounded pool of daemon threads. Each job runs at most once at a
time (max_instances=1), missed runs collapse into one (coalesce), and a small jitter spreads
jobs of the same interval so they do not all hit the server in the same second.
"""

import datetime as dt
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.executors.pool import BasePoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from exporter.catalogue import Collector
from exporter.collection.budget import Budget
from exporter.collection.jobs import CollectorJob, HeartbeatJob, ProbeJob, jitter
from exporter.collection.rounds import DatabaseRound
from exporter.collection.run import QueryMemory
from exporter.config import PROBE_WORKERS
from exporter.exposition.store import Store
from exporter.targets import Target

log = logging.getLogger(__name__)

# At start-up, the slower collectors' first runs follow the fast ones' this far apart: only to
# keep their order (APScheduler runs jobs due at the same time in the order of their ids).
FIRST_RUN_SPACING_SECONDS = 0.001
# At start-up, collectors of a longer interval (bloat, index_health, sequences...) have their
# first run once every collector of at most this interval has had its own (or one up interval
# after start at the latest): their heavy catalog queries, run alongside, would slow the
# others' first runs (at 10,000 tables two such queries at once take twice as long each).
PROMPT_INTERVAL_SECONDS = 60.0
# An interval the budget wants is applied when it differs from the scheduled one by more.
RESCHEDULE_TOLERANCE = 0.1
# Between probes, a target that is up gets a round trip on an idle session this often (see
# HeartbeatJob), unless its probes already come at least every other such interval.
HEARTBEAT_SECONDS = 1.0


@dataclass
class _HeldBack:
    """A target's slower collectors, whose first runs wait for its prompt ones'."""

    target: str
    awaited: set[str]  # prompt collectors whose first run has not ended yet
    jobs: list[str]  # the slower collectors' job ids, in the order they are to run
    until: dt.datetime  # when the last of them runs at the latest


def _probe_id(target: str) -> str:
    # Not "<target>/up": a custom collector may be named `up`, and its job is "<target>/up".
    return f"{target}/(probe)"


def _heartbeat_id(target: str) -> str:
    return f"{target}/(heartbeat)"


def _round_id(target: str) -> str:
    return f"{target}/(databases)"


# A job handed to the pool: its future, the call, its target (None: no per-target share) and
# when it was queued (monotonic).
_Task = tuple["Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any], str | None, float]


def _job_id(args: tuple[Any, ...]) -> str | None:
    """The id (target/collector) of a job APScheduler submits (run_job(job, ...))."""
    job_id = getattr(args[0], "id", None) if args else None
    return job_id if isinstance(job_id, str) else None


def _target_of(job_id: str | None) -> str | None:
    return job_id.rpartition("/")[0] or None if job_id is not None else None


class _DaemonThreads:
    """What APScheduler's pool executor uses of concurrent.futures' thread pool (submit,
    shutdown), on daemon threads. concurrent.futures joins its threads when the interpreter
    exits, so a job stuck on a frozen server would hold the process however stop() ended;
    these are abandoned instead, their sessions cut (TargetConnections.close).

    One pool serves every target, fairly: a target runs at most `share(target)` jobs at once
    (its connection cap: more would only wait for a connection), and its other due jobs wait in
    the queue without a worker. So a slow or frozen target holds no more workers than it has
    connections, and the pool does not have to grow with the targets to keep the others going.
    Jobs for which `ahead(job id)` holds go before the others waiting (the fast collectors, at
    start-up above all, when every target's first runs queue at once).
    """

    def __init__(
        self,
        max_workers: int,
        name: str,
        share: Callable[[str], int] | None = None,
        ahead: Callable[[str], bool] | None = None,
    ) -> None:
        self._max = max_workers
        self._name = name
        self._share = share
        self._ahead = ahead
        self._lock = threading.Condition()
        # Jobs waiting for a worker: those that go ahead, then the others; each in order.
        self._queues: tuple[deque[_Task], deque[_Task]] = (deque(), deque())
        self._by_target: dict[str, int] = {}  # jobs running, per target
        self._threads = 0
        self._idle = 0
        self._running = 0
        self._closed = False
        # Saturation, for the self-metrics (WORKER_STATS): time spent running jobs and time
        # jobs waited for a free worker, summed.
        self._busy_seconds = 0.0
        self._wait_seconds = 0.0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> "Future[Any]":
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot run new jobs after shutdown")
            job_id = _job_id(args)
            target = _target_of(job_id) if self._share is not None else None
            ahead = self._ahead is not None and job_id is not None and self._ahead(job_id)
            waiting = self._queues[0 if ahead else 1]
            waiting.append((future, fn, args, kwargs, target, time.monotonic()))
            if self._idle == 0 and self._threads < self._max and self._may_run(target):
                self._threads += 1
                name = f"{self._name}-{self._threads}"
                threading.Thread(target=self._work, name=name, daemon=True).start()
            else:
                self._lock.notify()
        return future

    def _may_run(self, target: str | None) -> bool:
        """Under the lock: whether a job of `target` may start now (its share not used up)."""
        if target is None or self._share is None:
            return True
        return self._by_target.get(target, 0) < self._share(target)

    def _next(self) -> _Task | None:
        """Under the lock: the first queued job whose target may run one more, of those that
        go ahead if there is one, taken out."""
        for waiting in self._queues:
            for position, task in enumerate(waiting):
                if self._may_run(task[4]):
                    del waiting[position]
                    return task
        return None

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
                task = None
                while not self._closed and (task := self._next()) is None:
                    self._lock.wait()
                self._idle -= 1
                if task is None:  # closed
                    self._threads -= 1
                    return
                future, fn, args, kwargs, target, queued_at = task
                self._running += 1
                if target is not None:
                    self._by_target[target] = self._by_target.get(target, 0) + 1
                started = time.monotonic()
                self._wait_seconds += started - queued_at
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        result = fn(*args, **kwargs)
                    except BaseException as exc:  # the executor's callback reports it
                        future.set_exception(exc)
                    else:
                        future.set_result(result)
            finally:
                with self._lock:
                    self._running -= 1
                    if target is not None:
                        left = self._by_target.pop(target) - 1
                        if left:
                            self._by_target[target] = left
                    self._busy_seconds += time.monotonic() - started
                    self._lock.notify_all()

    def stats(self) -> dict[str, float]:
        """The pool's size and use now (keys of selfmetrics.WORKER_STATS)."""
        with self._lock:
            return {
                "workers": self._max,
                "busy": self._running,
                "queued": sum(len(waiting) for waiting in self._queues),
                "busy_seconds": self._busy_seconds,
                "wait_seconds": self._wait_seconds,
            }

    def shutdown(self, wait: bool = True) -> None:
        """Run nothing more (jobs not started yet are dropped); with `wait`, wait for the
        running ones."""
        with self._lock:
            self._closed = True
            for waiting in self._queues:
                waiting.clear()
            self._lock.notify_all()
        if wait:
            self.wait(None)

    def wait(self, timeout: float | None) -> int:
        """Wait up to `timeout` for the running jobs to end; how many still run."""
        with self._lock:
            self._lock.wait_for(lambda: self._running == 0, timeout)
            return self._running


class _Executor(BasePoolExecutor):  # type: ignore[misc]  # APScheduler ships no types
    def __init__(self, threads: _DaemonThreads) -> None:
        super().__init__(threads)


class Scheduler:
    def __init__(
        self,
        store: Store,
        collectors: Iterable[Collector],
        *,
        up_interval: float,
        max_age_intervals: float,
        max_workers: int = 16,
    ) -> None:
        self._store = store
        self._targets: dict[str, Target] = {}
        self._jobs: dict[str, CollectorJob] = {}  # by job id: their status outlives a reload
        self._budgets: dict[str, Budget] = {}  # by target
        self._lock = threading.Lock()  # the jobs' intervals, changed from the jobs' threads
        self._intervals: dict[str, float] = {}  # by job id: as the budget wants it now
        # Interval changes (job id, old, new) and held-back first runs now due, applied on a
        # thread of their own: a job must not call APScheduler, whose shutdown holds its
        # job-store lock while it waits for the jobs.
        self._changes: queue.SimpleQueue[tuple[str, float, float] | _HeldBack | None] = (
            queue.SimpleQueue()
        )
        self._held: dict[str, _HeldBack] = {}  # by target, until its prompt collectors ran
        self._rounds: dict[str, DatabaseRound] = {}  # by job id
        self._rescheduler = threading.Thread(
            target=self._apply_changes, name="budget-rescheduler", daemon=True
        )
        self._collectors = [c for c in collectors if c.spec.enabled]
        self._up_interval = up_interval
        self._max_age_intervals = max_age_intervals
        self._threads = {
            "default": _DaemonThreads(
                max_workers, "job", share=self._connection_cap, ahead=self._is_fast
            ),
            # Probes get threads of their own: collectors queueing for a busy connection must
            # never keep pg_up from being measured.
            "probes": _DaemonThreads(PROBE_WORKERS, "probe"),
        }
        self._scheduler = BackgroundScheduler(
            executors={name: _Executor(threads) for name, threads in self._threads.items()},
            job_defaults={"coalesce": True, "max_instances": 1},
            timezone=dt.UTC,
        )

    def _connection_cap(self, target: str) -> int:
        """The most jobs of `target` that run at once: one per connection it may hold."""
        found = self._targets.get(target)
        return found.config.max_connections if found is not None else 1

    def _is_fast(self, job_id: str) -> bool:
        """Whether the job is a collector of the probes' interval or shorter (pg_up's
        companions: connections, database counters), which go ahead of the others."""
        with self._lock:
            interval = self._intervals.get(job_id)
        return interval is not None and interval <= self._up_interval

    @property
    def collectors(self) -> list[Collector]:
        return list(self._collectors)

    def start(self) -> None:
        self._scheduler.add_listener(self._on_skipped, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
        self._scheduler.start()
        self._rescheduler.start()

    def add_target(self, target: Target) -> None:
        """Schedule a target's jobs; the first run of each is now, not one interval from now.

        The fast collectors (pg_up's companions) go first; the others follow in order of their
        interval, so the cheap ones have run before a slow one holds the connection. Those of an
        interval above PROMPT_INTERVAL_SECONDS wait until the others' first runs have ended.
        """
        now = dt.datetime.now(dt.UTC)
        self._targets[target.name] = target
        self._budgets[target.name] = Budget(
            target.config.database_time_budget, fixed_up_to=self._up_interval
        )
        self._scheduler.add_job(
            ProbeJob(target, self._store),
            "interval",
            seconds=self._up_interval,
            jitter=jitter(self._up_interval),
            next_run_time=now,
            id=_probe_id(target.name),
            executor="probes",
            misfire_grace_time=max(1, int(self._up_interval)),
        )
        self._schedule_heartbeat(target)
        runs = [c for c in self._collectors if c.spec.target_type == target.config.type]
        slower = sorted(
            (c for c in runs if c.spec.interval > self._up_interval), key=lambda c: c.spec.interval
        )
        held = {c.name for c in slower if c.spec.interval > PROMPT_INTERVAL_SECONDS}
        awaited = {c.name for c in runs if c.spec.interval <= PROMPT_INTERVAL_SECONDS}
        # Held back one up interval at the latest (a prompt collector removed by a reload
        # meanwhile never ends its first run); the last prompt one to end releases them sooner.
        later = dt.timedelta(seconds=self._up_interval if held and awaited else 0)
        if later:
            with self._lock:
                self._held[target.name] = _HeldBack(
                    target.name,
                    awaited,
                    [f"{target.name}/{c.name}" for c in slower if c.name in held],
                    now + later + dt.timedelta(seconds=FIRST_RUN_SPACING_SECONDS * len(slower)),
                )
        for collector in runs:
            if collector.spec.interval <= self._up_interval:
                self._add_collector_job(target, collector, now)
        for order, collector in enumerate(slower):
            start = now + dt.timedelta(seconds=FIRST_RUN_SPACING_SECONDS * (order + 1))
            if collector.name in held:
                start += later
            self._add_collector_job(target, collector, start)
        self._schedule_round(target, now + dt.timedelta(seconds=FIRST_RUN_SPACING_SECONDS))

    def _schedule_heartbeat(self, target: Target) -> None:
        """The target's heartbeat job, if it is a PostgreSQL server (PgBouncer's console has
        no Sync to answer) and its probes are further apart than two heartbeats."""
        job_id = _heartbeat_id(target.name)
        wanted = target.config.type == "postgres" and self._up_interval > 2 * HEARTBEAT_SECONDS
        scheduled = self._scheduler.get_job(job_id) is not None
        if wanted and not scheduled:
            self._scheduler.add_job(
                HeartbeatJob(target, self._store, HEARTBEAT_SECONDS),
                "interval",
                seconds=HEARTBEAT_SECONDS,
                id=job_id,
                executor="probes",
                misfire_grace_time=1,
            )
        elif scheduled and not wanted:
            self._scheduler.remove_job(job_id)

    def _add_collector_job(
        self,
        target: Target,
        collector: Collector,
        now: dt.datetime,
        previous: CollectorJob | None = None,
    ) -> None:
        """Schedule a collector on a target; a job it replaces hands over its state."""
        if collector.spec.target_type != target.config.type:
            return
        interval = collector.spec.interval
        self._budgets[target.name].add(collector.name, interval)
        job = CollectorJob(
            target, collector, self._store, self._max_age_intervals, on_cost=self._cost_of
        )
        if previous is not None:
            # The status goes on (errors_total is a counter); the capped queries' choices too,
            # so a reload does not churn series. Results of the old definition do not.
            job.status = previous.status
            job.skipped = previous.skipped
            job.memory = {db: QueryMemory(chosen=m.chosen) for db, m in previous.memory.items()}
        job_id = f"{target.name}/{collector.name}"
        with self._lock:
            self._jobs[job_id] = job
            self._intervals[job_id] = interval
        if collector.spec.scope == "database":
            return  # run by the target's round (_schedule_round)
        self._scheduler.add_job(
            job,
            "interval",
            seconds=interval,
            jitter=jitter(interval),
            next_run_time=now,
            id=job_id,
            misfire_grace_time=max(1, int(interval)),
        )

    def _schedule_round(self, target: Target, start: dt.datetime | None = None) -> None:
        """The round of the target's per-database collectors, ticking as often as the most
        frequent of them (at most the probes' interval), its next tick at `start` (a new
        round's: now) at the latest; none if it has none."""
        job_id = _round_id(target.name)
        with self._lock:
            jobs = [job for job, _ in self._round_jobs(target.name, locked=True)]
        scheduled = self._scheduler.get_job(job_id)
        if not jobs:
            if scheduled is not None:
                self._scheduler.remove_job(job_id)
                self._rounds.pop(job_id, None)
            return
        tick = min(self._up_interval, *(job.collector.spec.interval for job in jobs))
        round_ = self._rounds.get(job_id)
        if round_ is not None and scheduled is not None:
            if round_.tick != tick:
                round_.tick = tick
                self._scheduler.reschedule_job(job_id, trigger="interval", seconds=tick)
            later = scheduled.next_run_time
            if start is not None and later is not None and start < later:
                self._scheduler.modify_job(job_id, next_run_time=start)
            return
        round_ = DatabaseRound(
            target,
            lambda: self._round_jobs(target.name),
            tick=tick,
            logins_per_minute=target.config.visit_logins_per_minute,
        )
        self._rounds[job_id] = round_
        self._scheduler.add_job(
            round_,
            "interval",
            seconds=tick,
            next_run_time=start or dt.datetime.now(dt.UTC),
            id=job_id,
            misfire_grace_time=max(1, int(tick)),
        )

    def _round_jobs(
        self, target: str, *, locked: bool = False
    ) -> list[tuple[CollectorJob, float | None]]:
        """The target's per-database collectors, each with its interval now, or None while
        its first run is held back (see add_target)."""
        if not locked:
            with self._lock:
                return self._round_jobs(target, locked=True)
        held = self._held.get(target)
        holding = held is not None and dt.datetime.now(dt.UTC) < held.until
        waiting = set(held.jobs) if held is not None and holding else set()
        return [
            (job, None if job_id in waiting else self._intervals.get(job_id))
            for job_id, job in self._jobs.items()
            if job.target.name == target and job.collector.spec.scope == "database"
        ]

    def _on_skipped(self, event: JobEvent) -> None:
        """A run that did not happen: the last one still runs (max_instances), or it could
        not start within its misfire grace time (every worker busy). On the scheduler's
        thread: counts and logs, and calls nothing of APScheduler's."""
        round_ = self._rounds.get(event.job_id)
        if round_ is not None:  # each of its collectors that was due then missed a run
            for due in round_.due(time.monotonic()):
                self._skipped(due, event)
            return
        with self._lock:
            job = self._jobs.get(event.job_id)
        if job is not None:  # (a probe's lateness is pg_up's staleness)
            self._skipped(job, event)

    def _skipped(self, job: CollectorJob, event: JobEvent) -> None:
        job.skipped += 1
        if not job.behind:
            job.behind = True
            still_running = event.code == EVENT_JOB_MAX_INSTANCES
            log.warning(
                "collector cannot keep its interval",
                extra={
                    "target": job.target.name,
                    "collector": job.name,
                    "interval": job.interval,
                    "reason": "its last run is still running"
                    if still_running
                    else "no worker was free in time",
                },
            )

    def remove_target(self, name: str) -> None:
        self._targets.pop(name, None)
        self._budgets.pop(name, None)
        prefix = f"{name}/"

        def own(job_id: str) -> bool:
            # Its own jobs only: a probed target `h:5432` is not `h:5432/app`'s prefix owner.
            return job_id.startswith(prefix) and "/" not in job_id[len(prefix) :]

        for job in self._scheduler.get_jobs():
            if own(job.id):
                job.remove()
                self._rounds.pop(job.id, None)
        with self._lock:
            self._held.pop(name, None)
            for job_id in [job_id for job_id in self._jobs if own(job_id)]:
                self._jobs.pop(job_id, None)
                self._intervals.pop(job_id, None)

    def _cost_of(self, job: CollectorJob, seconds: float) -> float:
        """A run's database time, on the job's thread: the budget may change the intervals of
        the target's collectors. Returns the job's own interval from now on. (Told after every
        run: the last prompt first run releases the target's held-back collectors.)"""
        target = job.target.name
        with self._lock:
            held = self._held.get(target)
            if held is not None and job.name in held.awaited:
                held.awaited.discard(job.name)
                if not held.awaited:
                    del self._held[target]
                    self._changes.put(held)
        budget = self._budgets.get(target)
        if budget is None:  # removed meanwhile
            return job.collector.spec.interval
        if seconds > 0:  # a run that never reached the server (target down) says nothing
            budget.record(job.name, seconds)
        with self._lock:
            for job_id, scheduled in list(self._intervals.items()):
                other = self._jobs.get(job_id)
                if other is None or other.target.name != target:
                    continue
                wanted = budget.interval(other.name)
                # Not for every small change: each one moves the job's next run.
                if abs(wanted - scheduled) > RESCHEDULE_TOLERANCE * scheduled:
                    self._intervals[job_id] = wanted
                    self._changes.put((job_id, scheduled, wanted))
            return self._intervals.get(f"{target}/{job.name}", job.collector.spec.interval)

    def _apply_changes(self) -> None:
        while (change := self._changes.get()) is not None:
            if isinstance(change, _HeldBack):
                self._release(change)
                continue
            job_id, old, new = change
            with self._lock:
                job = self._jobs.get(job_id)
            if job is None:
                continue  # removed meanwhile
            try:
                self._reschedule(job_id, job, old, new)
            except Exception:  # a job removed or the scheduler stopped meanwhile
                log.debug("interval change not applied", extra={"job": job_id}, exc_info=True)

    def _release(self, held: _HeldBack) -> None:
        """The held-back collectors' first runs, now (those that have not run meanwhile);
        the target's round of visits now too, for its held-back collectors."""
        now = dt.datetime.now(dt.UTC)
        round_id = _round_id(held.target)
        if round_id in self._rounds:
            try:
                self._scheduler.modify_job(round_id, next_run_time=now)
            except Exception:  # removed or the scheduler stopped meanwhile
                log.debug("round not moved", extra={"job": round_id}, exc_info=True)
        for order, job_id in enumerate(held.jobs):
            try:
                scheduled = self._scheduler.get_job(job_id)
                first = scheduled.next_run_time if scheduled is not None else None
                if first is not None and now < first <= held.until:
                    start = now + dt.timedelta(seconds=FIRST_RUN_SPACING_SECONDS * order)
                    self._scheduler.modify_job(job_id, next_run_time=start)
            except Exception:  # a job removed or the scheduler stopped meanwhile
                log.debug("first run not moved", extra={"job": job_id}, exc_info=True)

    def _reschedule(self, job_id: str, job: CollectorJob, old: float, interval: float) -> None:
        scheduled = self._scheduler.get_job(job_id)
        if scheduled is None and job.collector.spec.scope != "database":
            return  # removed meanwhile (a per-database collector's round reads the interval)
        if scheduled is not None:
            # Keep the phase: the next run comes `interval` after the last one, not after now,
            # so repeated changes can never keep postponing a run.
            now = dt.datetime.now(dt.UTC)
            start = now
            if scheduled.next_run_time is not None:
                last = scheduled.next_run_time - dt.timedelta(seconds=old)
                start = max(now, last + dt.timedelta(seconds=interval))
            self._scheduler.reschedule_job(
                job_id,
                trigger="interval",
                seconds=interval,
                jitter=jitter(interval),
                start_date=start,
            )
        # Published now; what it published stays until its next run, however far that moved
        # (and no sooner than its round's spacing allows: CollectorJob.floor).
        job.retime(interval)
        log.info(
            "collector interval changed to fit the database time budget",
            extra={
                "target": job.target.name,
                "collector": job.name,
                "interval": f"{interval:.0f}s",
            },
        )

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
        probes_changed, self._up_interval = up_interval != self._up_interval, up_interval
        for target in list(self._targets.values()):
            replaced = False  # a per-database collector: its round runs now, for its first run
            if probes_changed:
                self._scheduler.reschedule_job(
                    _probe_id(target.name),
                    trigger="interval",
                    seconds=up_interval,
                    jitter=jitter(up_interval),
                )
            for name, collector in new.items():
                if old.get(name) == collector and not ages_changed:
                    continue
                previous = self._remove_job(f"{target.name}/{name}")
                self._add_collector_job(target, collector, now, previous)
                replaced |= collector.spec.scope == "database"
            for name in old.keys() - new.keys():
                self._remove_job(f"{target.name}/{name}")
                self._budgets[target.name].remove(name)
            self._schedule_round(target, now if replaced else None)
        for target in list(self._targets.values()):
            self._schedule_heartbeat(target)  # probes may now come often enough, or not
        return set(old) - set(new)

    def _remove_job(self, job_id: str) -> CollectorJob | None:
        if self._scheduler.get_job(job_id) is not None:  # a pgbouncer target lacks most
            self._scheduler.remove_job(job_id)
        with self._lock:
            self._intervals.pop(job_id, None)
            return self._jobs.pop(job_id, None)

    def worker_stats(self) -> dict[str, dict[str, float]]:
        """Each worker pool's size and use, by pool: collectors' jobs, and the probes'."""
        return {
            ("collectors" if name == "default" else name): threads.stats()
            for name, threads in self._threads.items()
        }

    def shutdown(self) -> None:
        """Start no more runs; running jobs go on (see `wait`)."""
        self._changes.put(None)  # the rescheduler stops; it is not waited for
        self._scheduler.shutdown(wait=False)

    def wait(self, timeout: float) -> int:
        """Wait up to `timeout` seconds for running jobs to end; how many are left running
        (on daemon threads: abandoned, they hold nothing)."""
        deadline = time.monotonic() + timeout
        return sum(t.wait(max(0.0, deadline - time.monotonic())) for t in self._threads.values())
