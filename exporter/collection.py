"""The work of one scheduled job: probe a target, or run one collector on it and publish."""

import logging
import time

import psycopg
from prometheus_client.core import Metric

from exporter.catalogue import Collector
from exporter.collect import CollectorFailed, CollectorUnavailable, plan, run
from exporter.connections import ConnectFailed, PoolBusy, first_line
from exporter.facts import ServerFacts, installed_extensions
from exporter.render import render
from exporter.store import CollectorStatus, PartKey, Store
from exporter.targets import Target

log = logging.getLogger(__name__)

# SQL errors that mean "this role or server cannot do this", not "something broke": reported
# once as unavailable with the reason rather than as an error every interval.
_UNAVAILABLE_ERRORS = (
    psycopg.errors.InsufficientPrivilege,
    psycopg.errors.ObjectNotInPrerequisiteState,  # e.g. pg_stat_statements not preloaded
    psycopg.errors.UndefinedTable,  # e.g. a custom collector's table exists in some databases
)


def probe_target(target: Target) -> None:
    """The `up` job: connect and refresh the server facts; pg_up follows the outcome."""
    try:
        target.refresh()
    except ConnectFailed:
        pass  # already recorded by the target as down, with one log line
    except PoolBusy:
        pass  # reachable, but busy before its first facts were read: the next probe tries again
    except psycopg.Error as exc:
        target.mark_down(target.redact(first_line(exc)))
    target.publish_pool_stats()


def run_collector(target: Target, collector: Collector, store: Store, *, max_age: float) -> None:
    """Run one collector on one target (every database it visits) and publish the result."""
    started = time.monotonic()
    previous = store.collector_status(target.name, collector.name)
    state, message, series = "ok", "", 0
    try:
        if target.down_message is not None:
            # Logged once by the target; the `up` job notices when it returns.
            raise ConnectFailed(f"target is down: {target.down_message}")
        facts = target.current_facts()
        if collector.spec.scope == "server":
            families = _visit(target, collector, facts, None)
            rendered = render(families)
            store.put(PartKey(target.name, collector.name), rendered, max_age)
            series = sum(f.series for f in rendered)
        else:
            series = _visit_databases(target, collector, facts, store, max_age)
    except ConnectFailed as exc:
        # Reported once by the target (pg_up, one log line), not by each of its collectors.
        state, message = "down", target.redact(str(exc))
        if target.down_message is None:
            target.mark_down(message)
    except CollectorUnavailable as exc:
        state, message = "unavailable", exc.reason
        store.drop(target.name, collector.name)
    except _UNAVAILABLE_ERRORS as exc:
        state, message = "unavailable", target.redact(first_line(exc))
        store.drop(target.name, collector.name)
    except (psycopg.Error, CollectorFailed, PoolBusy) as exc:
        state, message = "error", target.redact(first_line(exc))
    except Exception as exc:  # a defect (ours or a custom collector's) must still be reported
        log.exception(
            "collector crashed", extra={"target": target.name, "collector": collector.name}
        )
        state, message = "error", target.redact(f"{type(exc).__name__}: {first_line(exc)}")
    duration = time.monotonic() - started
    status = CollectorStatus(
        state=state,
        last_success=time.time() if state == "ok" else previous.last_success,
        last_duration=duration,
        errors_total=previous.errors_total + (state == "error"),
        series=series if state == "ok" else previous.series,
        message=message,
    )
    store.set_collector(target.name, collector.name, status)
    _log_transition(target.name, collector.name, previous, status)


def _visit(
    target: Target, collector: Collector, facts: ServerFacts, database: str | None
) -> list[Metric]:
    """Run the collector in one database (None: the target's own) and return its families."""
    own = database is None or database == facts.database
    labels = {"target": target.name}
    if collector.spec.scope == "database":
        labels["datname"] = database or facts.database
    wait = target.config.connect_timeout + collector.spec.timeout
    with target.connections.connection(None if own else database, wait_seconds=wait) as conn:
        if own:
            extensions = facts.extensions
        else:
            with conn.transaction():
                extensions = installed_extensions(conn)
        steps = plan(collector, facts, extensions)
        selections = target.selections(collector.name, database or "")
        return run(
            conn,
            collector,
            steps,
            labels=labels,
            timeout_seconds=collector.spec.timeout,
            selections=selections,
        )


def _visit_databases(
    target: Target, collector: Collector, facts: ServerFacts, store: Store, max_age: float
) -> int:
    """Visit each database in turn; a database where it cannot run is skipped, not an error."""
    published: list[str] = []
    reasons: list[str] = []
    errors: list[str] = []
    series = 0
    for database in target.databases_for(collector, facts):
        try:
            rendered = render(_visit(target, collector, facts, database))
        except CollectorUnavailable as exc:
            reasons.append(f"{database}: {exc.reason}")
            continue
        except _UNAVAILABLE_ERRORS as exc:
            reasons.append(f"{database}: {first_line(exc)}")
            continue
        except (ConnectFailed, PoolBusy, psycopg.Error, CollectorFailed) as exc:
            # One database failing must not hide the others, nor mark the whole target down.
            errors.append(f"{database}: {first_line(exc)}")
            continue
        store.put(PartKey(target.name, collector.name, database), rendered, max_age)
        published.append(database)
        series += sum(f.series for f in rendered)
    store.drop(target.name, collector.name, keep=published)  # databases gone since last run
    if errors:
        raise CollectorFailed("; ".join(errors))
    if not published and reasons:
        raise CollectorUnavailable("; ".join(reasons))
    return series


def _log_transition(
    target: str, collector: str, before: CollectorStatus, after: CollectorStatus
) -> None:
    """One log line when a collector's state or error changes, not one every interval."""
    fields = {"target": target, "collector": collector}
    quiet = after.state == before.state and after.message == before.message
    if quiet or "down" in (after.state, before.state):
        log.debug("collector ran", extra={**fields, "state": after.state})
    elif after.state == "error":
        log.warning("collector failed", extra={**fields, "error": after.message})
    elif after.state == "unavailable":
        log.warning("collector unavailable", extra={**fields, "reason": after.message})
    elif before.state in ("error", "unavailable"):
        log.info("collector recovered", extra=fields)
