"""The scheduled jobs: probe a target, or run one collector on it; each publishes once.

A job computes everything first (rendered parts, the collector's new status, what it found out
about the target) and then publishes it to the store in one call. A collector job keeps its own
previous status and what its queries remember (sticky choices, slower queries' results),
since only it reads them.
"""

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from psycopg.rows import tuple_row

from exporter.catalogue import Collector
from exporter.collection.run import QueryMemory, plan, run
from exporter.collection.sqltext import statement_rows
from exporter.errors import (
    CollectorFailed,
    CollectorUnavailable,
    ConnectFailed,
    PoolBusy,
    first_line,
)
from exporter.exposition.render import RenderedFamily, merge_families
from exporter.exposition.store import Store
from exporter.status import CollectorStatus, State
from exporter.targets import ServerFacts, Target
from exporter.targets.facts import installed_extensions
from exporter.targets.sessions import STOPPING

log = logging.getLogger(__name__)

# SQL errors that mean "this role or server cannot do this", not "something broke": reported
# once as unavailable with the reason rather than as an error every interval.
_UNAVAILABLE_ERRORS = (
    psycopg.errors.InsufficientPrivilege,
    psycopg.errors.ObjectNotInPrerequisiteState,  # e.g. pg_stat_statements not preloaded
    psycopg.errors.UndefinedTable,  # e.g. a custom collector's table exists in some databases
)


MAX_JITTER_SECONDS = 5.0
# Runs on time in a row after which a collector that fell behind is warned about again.
ON_TIME_STREAK = 10


def jitter(interval: float) -> float:
    """How far past its interval a run may start at random, to spread runs of the same
    interval; beyond that it is late."""
    return min(interval * 0.1, MAX_JITTER_SECONDS)


class ProbeJob:
    """The `up` job: log in anew and refresh the server facts; pg_up follows the outcome."""

    def __init__(self, target: Target, store: Store) -> None:
        self.target = target
        self._store = store
        self._databases: frozenset[str] = frozenset()  # visitable at the last probe

    def __call__(self) -> None:
        target = self.target
        facts = None
        # Down: recorded by the target, with one log line. Busy (every session in use, the
        # server answering): nothing learnt, pg_up stays as it was.
        with contextlib.suppress(ConnectFailed, PoolBusy):
            facts = target.refresh()
        with target.publishing() as still_open:
            if not still_open:
                return  # stopping, or the target was removed: nothing to tell
            if facts is not None:
                databases = frozenset(facts.databases)
                gone, self._databases = self._databases - databases, databases
                if gone:
                    self._store.drop_databases(target.name, gone)
            publish_reach(target, self._store)


def publish_reach(target: Target, store: Store) -> None:
    """The target's up state and its connections' counters (while publishing: see
    Target.publishing)."""
    store.publish_target(
        target.name,
        target.reach,
        pool=target.connections.stats(),
        budget=target.config.database_time_budget,
    )


def heartbeat_limit(target: Target, every: float) -> float:
    """How long a heartbeat waits for its answer: a server that stops answering reads as down
    within connect_timeout, the time a new login would be given (the next heartbeat comes
    within `every` seconds, its wait, and another `every` for a worker, the publish and the
    scrape); a second at least."""
    return max(1.0, target.config.connect_timeout - 2 * every)


class HeartbeatJob:
    """Between probes, a round trip on an idle pooled session of a target that is up (or,
    when a job holds the session and its reply is overdue, a word with the postmaster).

    The probe logs in anew every up_interval (15 s by default); a server that freezes
    (SIGSTOP, a paused VM, a network that drops packets) just after one would read as up until
    the next. The heartbeat finds it within connect_timeout, with no login and no statement.
    It only ever marks the target down: only the probe's new login proves it is up.
    """

    def __init__(self, target: Target, store: Store, every: float) -> None:
        self.target = target
        self._store = store
        self._limit = heartbeat_limit(target, every)

    def __call__(self) -> None:
        target = self.target
        if not target.reach.up:
            return  # down or not yet probed: the probe's to tell
        with contextlib.suppress(ConnectFailed):  # stopping
            why = target.connections.heartbeat(self._limit)
            if why is None:
                return
            target.mark_down(why)
            with target.publishing() as still_open:
                if still_open:
                    publish_reach(target, self._store)


class _PartlyFailed(CollectorFailed):
    """Some databases failed; the others' families are still to be published."""

    def __init__(self, message: str, families: tuple[RenderedFamily, ...]) -> None:
        super().__init__(message)
        self.families = families


@dataclass
class _Outcome:
    """What one run produced: parts to publish (None: keep the old ones) and its state."""

    state: State = State.OK
    message: str = ""
    families: tuple[RenderedFamily, ...] | None = None  # of every database visited
    series: int = 0


# Told how long a run kept the server busy; returns the collector's interval from now on.
CostListener = Callable[["CollectorJob", float], float]


@dataclass
class CollectorJob:
    """Runs one collector on one target (every database it visits) and publishes the result."""

    target: Target
    collector: Collector
    store: Store
    max_age_intervals: float  # data is left out of /metrics after this many intervals
    status: CollectorStatus = field(default_factory=CollectorStatus)  # the previous run's
    # What the queries remember between runs, by database (see run.QueryMemory).
    memory: dict[str, QueryMemory] = field(default_factory=dict)
    # The scheduler's budget: it may stretch the interval after an expensive run.
    on_cost: CostListener | None = None
    _busy: float = 0.0  # this run's database time so far
    _priced: float = 0.0  # ... and as the budget counts it (see Ran.priced_seconds)
    skipped: int = 0  # runs the scheduler skipped (counted on its thread; see Scheduler)
    behind: bool = False  # warned that it cannot keep its interval, and not back on time since
    _on_time_runs: int = 0  # in a row
    _last_started: float | None = None  # monotonic

    @property
    def name(self) -> str:
        return self.collector.name

    def __call__(self) -> None:
        started = time.monotonic()
        late = 0.0
        if self._last_started is not None:
            interval = self.status.interval or self.collector.spec.interval
            late = max(0.0, started - self._last_started - interval - jitter(interval))
        self._last_started = started
        # Back on time only after a streak, so that a collector hovering around its interval
        # (a slow run, a quick failed one, a slow one...) is not warned about at every turn.
        self._on_time_runs = self._on_time_runs + 1 if late == 0.0 else 0
        if self._on_time_runs >= ON_TIME_STREAK:
            self.behind = False
        self._busy = self._priced = 0.0
        outcome = self._outcome()
        if self.target.closing:
            return  # abandoned (stopping, or the target was removed): its sessions were cut
        previous = self.status
        ok = outcome.state == State.OK
        interval = self.collector.spec.interval
        if self.on_cost is not None:
            interval = self.on_cost(self, self._priced)
        self.status = CollectorStatus(
            state=outcome.state,
            last_success=time.time() if ok else previous.last_success,
            last_duration=time.monotonic() - started,
            errors_total=previous.errors_total + (outcome.state == State.ERROR),
            series=outcome.series if ok else previous.series,
            message=outcome.message,
            interval=interval,
            database_seconds_total=previous.database_seconds_total + self._busy,
            runs_skipped_total=self.skipped,
            late_seconds=late,
        )
        with self.target.publishing() as still_open:
            if not still_open:
                return  # removed while it ran: forgotten already
            self.store.publish(
                self.target.name,
                self.collector.name,
                outcome.families,
                self.status,
                max_age=interval * self.max_age_intervals,
                reach=self.target.reach,
                started=started,
            )
        _log_transition(self.target.name, self.collector.name, previous, self.status)

    def _outcome(self) -> _Outcome:
        target, collector = self.target, self.collector
        outcome = _Outcome()
        try:
            if target.down_message is not None:
                # Logged once by the target; the `up` job notices when it returns.
                raise ConnectFailed(f"target is down: {target.down_message}")
            facts = target.current_facts()
            if collector.spec.scope == "server":
                outcome.families = self._visit(facts, None)
            else:
                outcome.families = self._visit_databases(facts)
            outcome.series = sum(f.series for f in outcome.families)
        except ConnectFailed as exc:
            # Reported once by the target (pg_up, one log line), not by each of its collectors.
            outcome.state, outcome.message = State.DOWN, target.redact(str(exc))
            if target.down_message is None and not target.closing:
                target.mark_down(outcome.message)
        except CollectorUnavailable as exc:
            outcome.state, outcome.message, outcome.families = State.UNAVAILABLE, exc.reason, ()
        except _UNAVAILABLE_ERRORS as exc:
            outcome.state, outcome.families = State.UNAVAILABLE, ()
            outcome.message = target.redact(first_line(exc))
        except _PartlyFailed as exc:
            outcome.state, outcome.message = State.ERROR, target.redact(first_line(exc))
            outcome.families = exc.families
        except (psycopg.Error, CollectorFailed, PoolBusy) as exc:
            outcome.state, outcome.message = State.ERROR, target.redact(first_line(exc))
        except Exception as exc:  # a defect (ours or a custom collector's) must still be reported
            log.exception(
                "collector crashed", extra={"target": target.name, "collector": collector.name}
            )
            outcome.state = State.ERROR
            outcome.message = target.redact(f"{type(exc).__name__}: {first_line(exc)}")
        return outcome

    def _visit(
        self, facts: ServerFacts, database: str | None, databases: int = 1
    ) -> tuple[RenderedFamily, ...]:
        """Run the collector in one database (None: the target's own), one of `databases`
        visited this run, and return its families."""
        target, collector = self.target, self.collector
        own = database is None or database == facts.database
        labels = {"target": target.name}
        if collector.spec.scope == "database":
            labels["datname"] = database or facts.database
        wait = target.config.connect_timeout + collector.spec.timeout
        # A first run (at start, when every collector is due at once) may take the visiting
        # slot while it is idle, so two runs on the own database need not queue one behind
        # the other; later runs keep to the pool (no login per run).
        first = self.status.state == State.PENDING
        visited = None if own else database
        with target.connections.connection(visited, wait_seconds=wait, spare=first) as conn:
            if own:
                extensions = facts.extensions
            else:
                with conn.transaction():
                    extensions = installed_extensions(conn)
            steps = plan(collector, facts, extensions)
            texts = statement_rows(collector.spec)  # SQL text columns masked as rows are read
            if texts is not None:
                conn.row_factory = texts
            try:
                ran = run(
                    conn,
                    collector,
                    steps,
                    labels=labels,
                    timeout_seconds=collector.spec.timeout,
                    memory=self.memory.setdefault(database or "", QueryMemory()),
                    databases=databases,
                )
            finally:
                conn.row_factory = tuple_row  # a pooled session goes on to other collectors
            self._busy += ran.busy_seconds
            self._priced += ran.priced_seconds
            return tuple(ran.families)

    def _visit_databases(self, facts: ServerFacts) -> tuple[RenderedFamily, ...]:
        """Visit each database in turn; a database where it cannot run is skipped, not an error.

        The families of every database are merged (one header each, the samples of all): a
        database gone since the last run is simply not in them, and the databases that worked
        are published even when another failed (_PartlyFailed carries them).
        """
        parts: dict[str, tuple[RenderedFamily, ...]] = {}
        reasons: list[str] = []
        errors: list[str] = []
        databases = self.target.databases_for(self.collector, facts)
        for database in databases:
            if self.target.closing:
                raise ConnectFailed(STOPPING)  # no new visit once stopping
            try:
                parts[database] = self._visit(facts, database, len(databases))
            except CollectorUnavailable as exc:
                reasons.append(f"{database}: {exc.reason}")
            except _UNAVAILABLE_ERRORS as exc:
                reasons.append(f"{database}: {first_line(exc)}")
            except (ConnectFailed, PoolBusy, psycopg.Error, CollectorFailed) as exc:
                # One database failing must not hide the others, nor mark the whole target down.
                errors.append(f"{database}: {first_line(exc)}")
        if errors:
            raise _PartlyFailed("; ".join(errors), merge_families(parts.values()))
        if not parts and reasons:
            raise CollectorUnavailable("; ".join(reasons))
        return merge_families(parts.values())


def _log_transition(
    target: str, collector: str, before: CollectorStatus, after: CollectorStatus
) -> None:
    """One log line when a collector's state or error changes, not one every interval."""
    fields = {"target": target, "collector": collector}
    quiet = after.state == before.state and after.message == before.message
    if quiet or State.DOWN in (after.state, before.state):
        log.debug("collector ran", extra={**fields, "state": after.state})
    elif after.state == State.ERROR:
        log.warning("collector failed", extra={**fields, "error": after.message})
    elif after.state == State.UNAVAILABLE:
        log.warning("collector unavailable", extra={**fields, "reason": after.message})
    elif before.state in (State.ERROR, State.UNAVAILABLE):
        log.info("collector recovered", extra=fields)
