"""The in-memory store that /metrics is served from.

Jobs swap rendered parts in; a scrape reads a cached snapshot. Nothing here touches the
database, and the lock is only ever held for dictionary updates and byte joins, never while
SQL runs, so a slow database can never slow a scrape.
"""

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from exporter.gzipjoin import gzip_from_pieces
from exporter.render import RenderedFamily


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


@dataclass(frozen=True)
class CollectorStatus:
    """The latest outcome of one (target, collector), for self-metrics and the landing page."""

    state: str = "pending"  # pending | ok | error | unavailable | down (target unreachable)
    last_success: float | None = None  # wall clock
    last_duration: float = 0.0
    errors_total: int = 0
    series: int = 0
    message: str = ""  # the error or the reason it is unavailable


@dataclass(frozen=True)
class TargetStatus:
    up: bool = False
    message: str = ""
    server_version: str = ""
    collectors: dict[str, CollectorStatus] = field(default_factory=dict)
    pool: dict[str, int] = field(default_factory=dict)  # psycopg_pool's get_stats()


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

    # -- writers (scheduler jobs) -----------------------------------------------------------

    def put(self, key: PartKey, families: tuple[RenderedFamily, ...], max_age: float) -> None:
        part = Part(families=families, collected_at=time.time(), expires_at=self._clock() + max_age)
        with self._lock:
            self._parts[key] = part
            self._snapshot = None

    def drop(self, target: str, collector: str | None = None, keep: Iterable[str] = ()) -> None:
        """Remove a target's parts (of one collector), except those of the databases in `keep`."""
        kept = set(keep)
        with self._lock:
            for key in [k for k in self._parts if k.target == target]:
                if (collector is None or key.collector == collector) and key.database not in kept:
                    del self._parts[key]
            if collector is None:
                self._targets.pop(target, None)
            self._snapshot = None

    def forget_collector(self, target: str, collector: str) -> None:
        """Remove a collector's parts and status: it no longer runs on this target."""
        with self._lock:
            for key in [k for k in self._parts if (k.target, k.collector) == (target, collector)]:
                del self._parts[key]
            current = self._targets.get(target)
            if current is not None and collector in current.collectors:
                collectors = {k: v for k, v in current.collectors.items() if k != collector}
                self._targets[target] = replace(current, collectors=collectors)
            self._snapshot = None

    def set_target(self, target: str, **changes: object) -> None:
        with self._lock:
            current = self._targets.get(target, TargetStatus())
            self._targets[target] = replace(current, **changes)  # type: ignore[arg-type]
            self._snapshot = None

    def set_collector(self, target: str, collector: str, status: CollectorStatus) -> None:
        with self._lock:
            current = self._targets.get(target, TargetStatus())
            collectors = {**current.collectors, collector: status}
            self._targets[target] = replace(current, collectors=collectors)
            self._snapshot = None

    # -- readers (HTTP) -------------------------------------------------------------------

    def targets(self) -> dict[str, TargetStatus]:
        with self._lock:
            return dict(self._targets)

    def collector_status(self, target: str, collector: str) -> CollectorStatus:
        with self._lock:
            status = self._targets.get(target, TargetStatus())
            return status.collectors.get(collector, CollectorStatus())

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
