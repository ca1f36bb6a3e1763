"""The scheduled jobs: probe a target, or run one collector on it; each publishes once.

A job computes everything first (rendered parts, the collector's new status, what it found out
about the target) and then publishes it to the store in one call. A collector job keeps its own
previous status and what its queries remember (sticky choices, slower queries' results),
since only it reads them.
"""

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

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


@dataclass
class _Visits:
    """What a per-database collector found in each database of one run."""

    parts: dict[str, tuple[RenderedFamily, ...]] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)  # databases where it cannot run
    errors: list[str] = field(default_factory=list)  # databases where it failed
    crash: Exception | None = None  # a defect (ours or a custom collector's): ends its run

    def record(self, database: str, exc: Exception) -> None:
        """A database where the collector did not run: unavailable there, or failed."""
        if isinstance(exc, CollectorUnavailable):
            self.reasons.append(f"{database}: {exc.reason}")
        elif isinstance(exc, _UNAVAILABLE_ERRORS):
            self.reasons.append(f"{database}: {first_line(exc)}")
        elif isinstance(exc, (ConnectFailed, PoolBusy, psycopg.Error, CollectorFailed)):
            # One database failing must not hide the others, nor mark the whole target down.
            self.errors.append(f"{database}: {first_line(exc)}")
        else:
            self.crash = exc

    def families(self) -> tuple[RenderedFamily, ...]:
        """The families of every database, merged (one header each, the samples of all): a
        database gone since the last run is simply not in them, and the databases that worked
        are published even when another failed (_PartlyFailed carries them). A database where
        it cannot run is skipped, not an error."""
        if self.crash is not None:
            raise self.crash
        if self.errors:
            raise _PartlyFailed("; ".join(self.errors), merge_families(self.parts.values()))
        if not self.parts and self.reasons:
            raise CollectorUnavailable("; ".join(self.reasons))
        return merge_families(self.parts.values())


# Told how long a run kept the server busy; returns the collector's interval from now on.
CostListener = Callable[["CollectorJob", float], float]


@dataclass
class CollectorJob:
    """Runs one collector on one target (every database it visits) and publishes the result.

    A per-database collector's run may share its visits with the target's other per-database
    collectors (run_together): each database then gets one session for all of them.
    """

    target: Target
    collector: Collector
    store: Store
    max_age_intervals: float  # data is left out of /metrics after this many intervals
    status: CollectorStatus = field(default_factory=CollectorStatus)  # the previous run's
    # What the queries remember between runs, by database (see run.QueryMemory).
    memory: dict[str, QueryMemory] = field(default_factory=dict)
    # The scheduler's budget: it may stretch the interval after an expensive run.
    on_cost: CostListener | None = None
    # The shortest interval it may publish: how far apart its visits' logins are spaced
    # (collection.rounds); what it published must not expire before its next run.
    floor: float = 0.0
    # How far past its interval a run may start before it is late, besides the jitter: how
    # long a collector due between two rounds of visits waits for the next (rounds.py).
    slack: float = 0.0
    _busy: float = 0.0  # this run's database time so far
    _priced: float = 0.0  # ... and as the budget counts it (see Ran.priced_seconds)
    skipped: int = 0  # runs the scheduler skipped (counted on its thread; see Scheduler)
    behind: bool = False  # warned that it cannot keep its interval, and not back on time since
    _on_time_runs: int = 0  # in a row
    _last_started: float | None = None  # monotonic
    _late: float = 0.0  # how late this run started, in seconds
    _interval: float = 0.0  # in force; 0 before the first run: as configured

    @property
    def name(self) -> str:
        return self.collector.name

    @property
    def interval(self) -> float:
        """The interval in force: as configured, or stretched by the budget or by the spacing
        of its round's visits."""
        return self._interval or self.collector.spec.interval

    def retime(self, interval: float) -> None:
        """The budget changed this collector's interval after another collector's run: it is
        in force, and published, now rather than from this collector's next run on (which
        would otherwise count as late, and its data expire, by the old one)."""
        self._interval = max(interval, self.floor)
        self.store.retime(
            self.target.name,
            self.name,
            self._interval,
            max_age=self._interval * self.max_age_intervals,
        )

    @property
    def fresh(self) -> bool:
        """Whether this job has not run yet (at start, or replaced by a reload)."""
        return self._last_started is None

    def due(self, now: float, interval: float, slack: float) -> bool:
        """Whether a run is due at `now` (monotonic) at `interval`, up to `slack` early."""
        return self._last_started is None or now - self._last_started >= interval - slack

    def __call__(self) -> None:
        if self.collector.spec.scope == "database":
            run_together([self])
            return
        started = self._begin()
        self._finish(started, self._outcome(lambda facts: self._visit(facts, None)))

    def _begin(self) -> float:
        """A run starts: how late it is (see `late`), its database time reset; returns when it
        started (monotonic)."""
        started = time.monotonic()
        late = 0.0
        if self._last_started is not None:
            interval = self.interval
            allowed = interval + max(jitter(interval), self.slack)
            late = max(0.0, started - self._last_started - allowed)
        self._last_started = started
        self._late = late
        # Back on time only after a streak, so that a collector hovering around its interval
        # (a slow run, a quick failed one, a slow one...) is not warned about at every turn.
        self._on_time_runs = self._on_time_runs + 1 if late == 0.0 else 0
        if self._on_time_runs >= ON_TIME_STREAK:
            self.behind = False
        self._busy = self._priced = 0.0
        return started

    @property
    def late(self) -> float:
        """How many seconds past its interval (and jitter) the last run started."""
        return self._late

    def _finish(self, started: float, outcome: "_Outcome") -> None:
        """The run's status, and its outcome published."""
        if self.target.closing:
            return  # abandoned (stopping, or the target was removed): its sessions were cut
        previous = self.status
        ok = outcome.state == State.OK
        interval = self.collector.spec.interval
        if self.on_cost is not None:
            interval = self.on_cost(self, self._priced)
        interval = self._interval = max(interval, self.floor)
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
            late_seconds=self._late,
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

    def _outcome(self, families: Callable[[ServerFacts], tuple[RenderedFamily, ...]]) -> _Outcome:
        """The run's outcome: `families` of the target's current facts, or why there are
        none."""
        target, collector = self.target, self.collector
        outcome = _Outcome()
        try:
            if target.down_message is not None:
                # Logged once by the target; the `up` job notices when it returns.
                raise ConnectFailed(f"target is down: {target.down_message}")
            outcome.families = families(target.current_facts())
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

    def _visit(self, facts: ServerFacts, database: str | None) -> tuple[RenderedFamily, ...]:
        """Run the collector in one database (None: the target's own) on a session of its own
        and return its families."""
        own = database is None or database == facts.database
        with self.target.connections.connection(
            None if own else database, wait_seconds=self.session_wait, spare=self.fresh_run
        ) as conn:
            extensions = facts.extensions if own else extensions_in(conn)
            return self.visit_in(conn, facts, database, extensions)

    @property
    def session_wait(self) -> float:
        """How long a run waits for a session: a login, and another run's query."""
        return self.target.config.connect_timeout + self.collector.spec.timeout

    @property
    def fresh_run(self) -> bool:
        """Whether this run is the collector's first. A first run (at start, when every
        collector is due at once) may take the visiting slot while it is idle, so two runs on
        the own database need not queue one behind the other; later runs keep to the pool (no
        login per run)."""
        return self.status.state == State.PENDING

    def visit_in(
        self,
        conn: psycopg.Connection[Any],
        facts: ServerFacts,
        database: str | None,
        extensions: frozenset[str],
        databases: int = 1,
    ) -> tuple[RenderedFamily, ...]:
        """Run the collector on `conn`, a session on `database` (None: the target's own) with
        `extensions` installed, one of `databases` visited this run; its families."""
        collector = self.collector
        labels = {"target": self.target.name}
        if collector.spec.scope == "database":
            labels["datname"] = database or facts.database
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


def extensions_in(conn: psycopg.Connection[Any]) -> frozenset[str]:
    """The extensions installed in the database of `conn`."""
    with conn.transaction():
        return installed_extensions(conn)


def run_together(
    jobs: Sequence[CollectorJob], *, floor: Callable[[int], float] | None = None
) -> int:
    """Run per-database collectors of one target as one round: each database is visited once,
    on one session, for every collector that goes there; each collector then publishes its
    run as it would alone. Returns the visits that logged in (databases other than the
    target's own, one login each). With `floor`, each job's floor becomes floor(logins)
    before it publishes (collection.rounds: the spacing those logins call for).

    A visit that fails (no login, the session cut) fails that database for each of them; a
    collector that cannot run in a database, or fails there, keeps no other from it.
    """
    target = jobs[0].target
    started = [job._begin() for job in jobs]
    runs = [_Run(job) for job in jobs]
    logins = 0
    failure: Exception | None = None  # before any visit: the target down, or stopping
    try:
        if target.down_message is not None:
            raise ConnectFailed(f"target is down: {target.down_message}")
        logins = _visit_each_database(target, target.current_facts(), runs)
    except Exception as exc:  # each job's outcome tells it (_outcome)
        failure = exc

    def families_of(visits: _Visits) -> Callable[[ServerFacts], tuple[RenderedFamily, ...]]:
        def families(_: ServerFacts) -> tuple[RenderedFamily, ...]:
            if failure is not None:
                raise failure
            return visits.families()

        return families

    for began, one in zip(started, runs, strict=True):
        if floor is not None:
            one.job.floor = floor(logins)
        one.job._finish(began, one.job._outcome(families_of(one.visits)))
    return logins


@dataclass
class _Run:
    """One collector's part of a round (run_together)."""

    job: CollectorJob
    visits: _Visits = field(default_factory=_Visits)
    databases: frozenset[str] = frozenset()  # that it visits


def _visit_each_database(target: Target, facts: ServerFacts, runs: list[_Run]) -> int:
    """The visits of run_together, the own database first; how many logged in."""
    for one in runs:
        one.databases = frozenset(target.databases_for(one.job.collector, facts))
    logins = 0
    for database in sorted(facts.databases, key=lambda db: db != facts.database):  # own first
        here = [r for r in runs if database in r.databases and r.visits.crash is None]
        if not here:
            continue
        if target.closing:
            raise ConnectFailed(STOPPING)  # no new visit once stopping
        own = database == facts.database
        logins += not own
        try:
            with target.connections.connection(
                None if own else database,
                wait_seconds=max(r.job.session_wait for r in here),
                spare=any(r.job.fresh_run for r in here),
            ) as conn:
                extensions = facts.extensions if own else extensions_in(conn)
                for one in here:
                    try:
                        one.visits.parts[database] = one.job.visit_in(
                            conn, facts, database, extensions, len(one.databases)
                        )
                    except Exception as exc:  # that collector's alone (_Visits.record)
                        one.visits.record(database, exc)
        except Exception as exc:  # the session's: no login, or cut; each that had no turn yet
            for one in here:
                if database not in one.visits.parts:
                    one.visits.record(database, exc)
    return logins


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
