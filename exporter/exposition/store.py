"""The in-memory store that /metrics is served from.

Jobs swap rendered parts in; a scrape reads a cached snapshot. Nothing here touches the
database, and the lock is only ever held for dictionary updates and byte joins, never while
SQL runs, so a slow database can never slow a scrape.
"""

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from exporter.exposition.render import RenderedFamily, gzip_from_pieces
from exporter.status import CollectorStatus, Reachability, TargetStatus

# One collector run's rendered output, by database ("" for a server-scope collector).
Parts = Mapping[str, tuple[RenderedFamily, ...]]


@dataclass(frozen=True, order=True)
class PartKey:
    """Where a part came from: a collector run on a target (and a database, when per-database)."""

    target: str
    collector: str
    database: str = ""


@dataclass(frozen=True)
class Part:
    families: tuple[RenderedFamily, ...]
    collected_at: float  # wall clock, seconds since the epoch
    expires_at: float  # monotonic clock: left out of /metrics from then on

    @property
    def series(self) -> int:
        return sum(f.series for f in self.families)


class Snapshot:
    """One version of the /metrics body; its gzip form is assembled on first request."""

    def __init__(self, body: bytes, gzip_pieces: list[bytes], valid_until: float) -> None:
        self.body = body
        self.valid_until = valid_until  # monotonic: a part expires then
        self._gzip_pieces = gzip_pieces
        self._gzip: bytes | None = None
        self._gzip_lock = threading.Lock()

    def gzipped(self) -> bytes:
        # The pieces were compressed by the jobs; this is a join and a CRC, not a compression.
        with self._gzip_lock:
            if self._gzip is None:
                self._gzip = gzip_from_pieces(self._gzip_pieces, self.body)
            return self._gzip


# Renders the self-metrics from the statuses; given by the caller to keep this module generic.
SelfMetrics = Callable[[dict[str, TargetStatus]], Iterable[RenderedFamily]]


class Store:
    def __init__(self, *, self_metrics: SelfMetrics, clock: Callable[[], float] = time.monotonic):
        self._self_metrics = self_metrics
        self._clock = clock
        self._lock = threading.Lock()
        self._parts: dict[PartKey, Part] = {}
        self._targets: dict[str, TargetStatus] = {}
        self._snapshot: Snapshot | None = None

    # -- writers (the jobs, and the scheduler as targets and collectors come and go) ---------

    def publish(
        self,
        target: str,
        collector: str,
        parts: Parts | None,
        status: CollectorStatus,
        *,
        max_age: float,
        reach: Reachability | None = None,
    ) -> None:
        """One collector run's outcome, in one step.

        `parts` become the collector's whole output on the target (a database missing from them
        has its old part removed); None keeps the old parts, which expire `max_age` after they
        were collected. `reach` is what the run found out about the target, if anything.
        """
        collected_at, expires_at = time.time(), self._clock() + max_age
        with self._lock:
            if parts is not None:
                self._remove_parts(target, collector)
                for database, families in parts.items():
                    key = PartKey(target, collector, database)
                    self._parts[key] = Part(families, collected_at, expires_at)
            current = self._targets.get(target, TargetStatus())
            collectors = {**current.collectors, collector: status}
            self._targets[target] = replace(
                current, collectors=collectors, reach=_newer(current.reach, reach)
            )
            self._snapshot = None

    def publish_target(
        self, target: str, reach: Reachability, pool: dict[str, int] | None = None
    ) -> None:
        """What a probe found out about a target, and its pool's counters."""
        with self._lock:
            current = self._targets.get(target, TargetStatus())
            changes: dict[str, object] = {"reach": _newer(current.reach, reach)}
            if pool is not None:
                changes["pool"] = pool
            self._targets[target] = replace(current, **changes)  # type: ignore[arg-type]
            self._snapshot = None

    def forget(self, target: str, collector: str | None = None) -> None:
        """Remove a target's parts and status, or only one collector's: it no longer runs."""
        with self._lock:
            self._remove_parts(target, collector)
            current = self._targets.get(target)
            if collector is None:
                self._targets.pop(target, None)
            elif current is not None and collector in current.collectors:
                collectors = {k: v for k, v in current.collectors.items() if k != collector}
                self._targets[target] = replace(current, collectors=collectors)
            self._snapshot = None

    def _remove_parts(self, target: str, collector: str | None) -> None:
        for key in [k for k in self._parts if k.target == target]:
            if collector is None or key.collector == collector:
                del self._parts[key]

    # -- readers (HTTP) -------------------------------------------------------------------

    def targets(self) -> dict[str, TargetStatus]:
        with self._lock:
            return dict(self._targets)

    def snapshot(self) -> Snapshot:
        """The current body; rebuilt only after a change or when a part has expired."""
        now = self._clock()
        with self._lock:
            if self._snapshot is None or now >= self._snapshot.valid_until:
                self._snapshot = self._build(now)
            return self._snapshot

    def _build(self, now: float) -> Snapshot:
        # Group by family name: one header per family, then the samples of every part.
        by_name: dict[str, list[RenderedFamily]] = {}
        valid_until = float("inf")
        for _, part in sorted(self._parts.items()):
            if part.expires_at <= now:
                continue
            valid_until = min(valid_until, part.expires_at)
            for family in part.families:
                by_name.setdefault(family.name, []).append(family)
        for family in self._self_metrics(dict(self._targets)):
            by_name.setdefault(family.name, []).append(family)
        plain: list[bytes] = []
        packed: list[bytes] = []
        for families in by_name.values():
            plain.append(families[0].header)
            packed.append(families[0].header_z)
            for family in families:
                plain.append(family.samples)
                packed.append(family.samples_z)
        return Snapshot(b"".join(plain), packed, valid_until)


def _newer(current: Reachability, found: Reachability | None) -> Reachability:
    return found if found is not None and found.seq > current.seq else current
