"""The monitored targets as the running exporter holds them.

Targets live in a registry object, never in module globals, so they can be added and removed at
run time (config reload today, service discovery later). A target knows its own state; the jobs
that use it publish that state to the store.
"""

import itertools
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from exporter.catalogue import Collector
from exporter.config import DatabaseFilter, TargetConfig
from exporter.errors import ConnectFailed, first_line
from exporter.logs import SecretMasker
from exporter.status import Reachability
from exporter.targets.connection_cap import ConnectionCap
from exporter.targets.facts import ServerFacts, probe, probe_pgbouncer
from exporter.targets.sessions import TargetConnections

log = logging.getLogger(__name__)

# Orders Reachability findings across every target (see Reachability.seq).
_SEQ = itertools.count(1)


class Target:
    """One monitored server: its connections, what we know about it, and its up state."""

    def __init__(self, config: TargetConfig, cap: ConnectionCap | None = None) -> None:
        self.config = config
        self.connections = TargetConnections(config, cap)
        self._masker = SecretMasker(config.secrets())
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()  # one probe at a time (see current_facts)
        # Held by a job while it publishes, and by close(): nothing is published once the
        # target is closed, so a removed target's series cannot come back after it is forgotten.
        self._publishing = threading.Lock()
        self._facts: ServerFacts | None = None
        self._down_message: str | None = None
        self._reach = Reachability(pending=True, message="connecting", seq=next(_SEQ))

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def facts(self) -> ServerFacts | None:
        with self._lock:
            return self._facts

    @property
    def down_message(self) -> str | None:
        """Why the target is down, or None while it is up (or not yet tried)."""
        with self._lock:
            return self._down_message

    @property
    def closing(self) -> bool:
        """Closed (stopping, or removed by a reload): its jobs abandon their runs."""
        return self.connections.closing

    @property
    def reach(self) -> Reachability:
        """Whether it answered, for publishing (see Reachability.seq)."""
        with self._lock:
            return self._reach

    def refresh(self) -> ServerFacts:
        """Connect, read the server's facts, and record the target as up (or down, raising)."""
        with self._refreshing:
            return self._refresh()

    def _refresh(self) -> ServerFacts:
        # A new login every time, within connect_timeout: a pooled session proves neither that
        # the server still answers (it may be frozen, the pool's sessions stuck) nor that it
        # still lets the role in. The pool is for the collectors.
        timeout = self.config.connect_timeout
        try:
            with self.connections.fresh_session(timeout) as conn:
                if self.config.type == "pgbouncer":
                    facts = probe_pgbouncer(conn)
                else:
                    with conn.transaction():
                        facts = probe(conn, timeout_seconds=timeout)
        except ConnectFailed as exc:
            if not self.closing:  # a probe cut short by a shutdown says nothing of the server
                self.mark_down(self.redact(str(exc)))
            raise
        except psycopg.Error as exc:  # connected, but the probe's statement failed or hung
            message = self.redact(first_line(exc))
            if not self.closing:
                self.mark_down(message)
            raise ConnectFailed(message) from None
        with self._lock:
            self._facts = facts
        self.mark_up(facts)
        return facts

    def current_facts(self) -> ServerFacts:
        """Facts from the last probe, probing now if there has not been a successful one."""
        facts = self.facts
        if facts is not None:
            return facts
        # At start-up every collector job asks at once. One probes; the others wait for its
        # outcome instead of all queueing on the pool, where all but one would time out and
        # report a busy pool (an error each) for a target that is simply down.
        with self._refreshing:
            facts = self.facts
            if facts is not None:
                return facts
            message = self.down_message
            if message is not None:
                raise ConnectFailed(f"target is down: {message}")
            return self._refresh()

    def mark_up(self, facts: ServerFacts) -> None:
        with self._lock:
            was_down, self._down_message = self._down_message, None
            self._reach = Reachability(
                up=True,
                server_version=facts.version,
                seq=next(_SEQ),
                not_visited=tuple(
                    (db, why) for db, why in facts.not_visited if self.config.databases.allows(db)
                ),
            )
        if was_down is not None:
            log.info("target is up", extra={"target": self.name, "version": facts.version})

    def mark_down(self, message: str) -> None:
        with self._lock:
            was_up, self._down_message = self._down_message is None, message
            version = self._reach.server_version
            self._reach = Reachability(message=message, server_version=version, seq=next(_SEQ))
        if was_up:  # one line per outage, however often the probe fails or its message changes
            log.warning("target is down", extra={"target": self.name, "error": message})

    def databases_for(self, collector: Collector, facts: ServerFacts) -> list[str]:
        """The databases a per-database collector visits on this target."""
        wanted = DatabaseFilter(include=collector.spec.databases or (".*",))
        return [
            db for db in facts.databases if self.config.databases.allows(db) and wanted.allows(db)
        ]

    def redact(self, text: str) -> str:
        """The text with this target's passwords masked (defence in depth for error messages)."""
        return self._masker.mask(text)

    def open(self) -> None:
        self.connections.open()

    @contextmanager
    def publishing(self) -> Iterator[bool]:
        """Around a job's publishing: whether the target is still open (publish only then)."""
        with self._publishing:
            yield not self.closing

    def close(self) -> None:
        with self._publishing:
            self.connections.close()


class TargetRegistry:
    """The set of targets, safe to change while jobs run, and the cap on their sessions."""

    def __init__(self, cap: ConnectionCap | None = None) -> None:
        self._lock = threading.Lock()
        self._targets: dict[str, Target] = {}
        self.cap = cap if cap is not None else ConnectionCap(None)

    def add(self, config: TargetConfig) -> Target:
        target = Target(config, self.cap)
        with self._lock:
            if config.name in self._targets:
                raise ValueError(f"target {config.name!r} already exists")
            self._targets[config.name] = target
        target.open()
        return target

    def remove(self, name: str) -> None:
        with self._lock:
            target = self._targets.pop(name, None)
        if target is not None:
            target.close()

    def get(self, name: str) -> Target | None:
        with self._lock:
            return self._targets.get(name)

    def __iter__(self) -> Iterator[Target]:
        with self._lock:
            return iter(list(self._targets.values()))

    def close(self) -> None:
        with self._lock:
            targets, self._targets = list(self._targets.values()), {}
        for target in targets:
            target.close()
