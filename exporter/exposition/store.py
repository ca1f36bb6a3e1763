"""The in-memory store that /metrics is served from.

Jobs swap rendered parts in; a scrape reads a cached snapshot. Nothing here touches the
database, and the lock is only ever held for dictionary updates and byte joins, never while
SQL runs, so a slow database can never slow a scrape.

A part is one collector's output on one target, every database it visited included, and is
compressed whole when it is published (on the job's thread); only the compressed form is kept,
with each family's name and sizes. When no family is published by two parts (one target:
collectors never share a family), the body is the parts one after the other and its gzip form
is their compressed forms joined: about the size of compressing the whole body at once, at the
cost of a join. When families are shared (several targets), each family's header and samples
are also compressed on their own, once per part, and joined. The plain body is inflated only
for a scrape that asks for it: Prometheus asks for gzip, and at 300,000 series the plain text
(33 MB) would be held twice, in the parts and in the body, for no one.
"""

import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from exporter.exposition.render import (
    Deflated,
    RenderedFamily,
    deflate_text,
    escape_label_value,
    gzip_from_pieces,
    inflate,
    merge_families,
)
from exporter.status import CollectorStatus, Reachability, TargetStatus


@dataclass(frozen=True, order=True)
class PartKey:
    """Where a part came from: a collector run on a target."""

    target: str
    collector: str


@dataclass(frozen=True)
class StoredFamily:
    """A family of a part: its text is in the part's compressed pieces."""

    name: str
    series: int
    header_length: int  # bytes of its HELP and TYPE lines
    samples_length: int


@dataclass(frozen=True)
class Part:
    families: tuple[StoredFamily, ...]
    collected_at: float  # wall clock, seconds since the epoch
    published_at: float  # monotonic clock
    expires_at: float  # monotonic clock: left out of /metrics from then on
    # The part's text (each family's header and samples) compressed whole; None when only
    # `alone` was made (the self-metrics of several targets, which share every family).
    whole: Deflated | None
    # Each family's header and samples compressed on their own, made the first time a
    # snapshot needs them.
    alone: list[Deflated] = field(default_factory=list, compare=False)

    @property
    def series(self) -> int:
        return sum(f.series for f in self.families)

    def rendered(self) -> list[RenderedFamily]:
        """The families' text again, inflated (rarely needed: a database dropped)."""
        text, at, out = inflate(self.pieces()), 0, []
        for family in self.families:
            header_end = at + family.header_length
            end = header_end + family.samples_length
            out.append(
                RenderedFamily(
                    family.name, text[at:header_end], text[header_end:end], family.series
                )
            )
            at = end
        return out

    def pieces(self) -> list[Deflated]:
        """The part's text as compressed pieces, in order."""
        return [self.whole] if self.whole is not None else self.alone

    def pieces_alone(self, families: Sequence[RenderedFamily] | None = None) -> list[Deflated]:
        """`alone`, from `families` (this part's text) if given, else inflated. Made by the
        publishing job (with several targets) before the part is shared, else under the
        store's lock: never twice at once."""
        if not self.alone:
            for family in self.rendered() if families is None else families:
                self.alone.extend((deflate_text([family.header]), deflate_text([family.samples])))
        return self.alone


def pack(
    families: Sequence[RenderedFamily],
    *,
    collected_at: float,
    published_at: float,
    expires_at: float,
    whole: bool = True,
) -> Part:
    """A part of `families`, compressed (their text is not kept): whole, or else each
    family's header and samples on their own."""
    part = Part(
        tuple(StoredFamily(f.name, f.series, len(f.header), len(f.samples)) for f in families),
        collected_at,
        published_at,
        expires_at,
        deflate_text(text for f in families for text in (f.header, f.samples)) if whole else None,
    )
    if not whole:
        part.pieces_alone(families)
    return part


class Snapshot:
    """One version of the /metrics body, kept compressed; the gzip file is assembled on the
    first request for it, the plain body inflated on the first request for that."""

    def __init__(self, pieces: list[Deflated], valid_until: float) -> None:
        self.valid_until = valid_until  # monotonic: a part expires then
        self._pieces = pieces
        self._gzip: bytes | None = None
        self._body: bytes | None = None
        self._lock = threading.Lock()

    @property
    def body(self) -> bytes:
        with self._lock:
            if self._body is None:
                self._body = inflate(self._pieces)
            return self._body

    def gzipped(self) -> bytes:
        # The pieces were compressed by the jobs; this is a join and a CRC, not a compression.
        with self._lock:
            if self._gzip is None:
                self._gzip = gzip_from_pieces(self._pieces)
            return self._gzip


# Renders the self-metrics from the statuses; given by the caller to keep this module generic.
SelfMetrics = Callable[[dict[str, TargetStatus]], Iterable[RenderedFamily]]


# Families published besides a run's own, computed from them (compat.GoNames).
Derive = Callable[[Sequence[RenderedFamily]], Sequence[RenderedFamily]]


class Store:
    def __init__(
        self,
        *,
        self_metrics: SelfMetrics,
        clock: Callable[[], float] = time.monotonic,
        derive: Derive | None = None,
        process_metrics: Callable[[], Iterable[RenderedFamily]] | None = None,
    ):
        self._self_metrics = self_metrics
        # The process's own (worker pools): in the whole body only, not in a target's (/probe).
        self._process_metrics = process_metrics
        # Self-metrics rendered per target, kept while its status (replaced, never changed in
        # place) is the same: with hundreds of targets, a publish by one must not re-render
        # all of them on the next scrape. The families of no target (build_info) apart.
        self._common = tuple(self_metrics({}))
        self._own_of: dict[str, tuple[TargetStatus, tuple[RenderedFamily, ...]]] = {}
        self._derive = derive
        self._clock = clock
        self._lock = threading.Lock()
        self._parts: dict[PartKey, Part] = {}
        self._targets: dict[str, TargetStatus] = {}
        self._snapshot: Snapshot | None = None
        # One target's body (/probe), by target: dropped with the whole body's at any change.
        self._of_target: dict[str, Snapshot] = {}
        # By target: when databases were found gone, and the marks of their series.
        self._drops: dict[str, list[tuple[float, list[bytes]]]] = {}

    # -- writers (the jobs, and the scheduler as targets and collectors come and go) ---------

    def publish(
        self,
        target: str,
        collector: str,
        families: Sequence[RenderedFamily] | None,
        status: CollectorStatus,
        *,
        max_age: float,
        reach: Reachability | None = None,
        started: float | None = None,
    ) -> None:
        """One collector run's outcome, in one step.

        `families` become the collector's whole output on the target, every database it
        visited included; None keeps the old part, which expires `max_age` after it was
        collected. `reach` is what the run found out about the target, if anything. A run
        `started` (on the store's clock) before databases were found gone has their series
        taken out: it may have visited them before they went.
        """
        collected_at, published_at = time.time(), self._clock()
        if families is not None and started is not None:
            marks = [m for when, ms in self._drops.get(target, ()) if started < when for m in ms]
            if marks:
                families = [f for f in (_without(f, marks) for f in families) if f.series]
        part = None
        derive = self._derive
        if families is not None and derive is not None:
            families = (*families, *derive(families))
        if families is not None:  # compressed here, on the job's thread, outside the lock
            part = pack(
                families,
                collected_at=collected_at,
                published_at=published_at,
                expires_at=published_at + max_age,
            )
            if len(self._targets) > 1:  # families shared: the snapshot will want these
                part.pieces_alone(families)
        key = PartKey(target, collector)
        with self._lock:
            if part is not None:
                if part.families:
                    self._parts[key] = part
                else:
                    self._parts.pop(key, None)
            current = self._targets.get(target, TargetStatus())
            collectors = {**current.collectors, collector: status}
            self._targets[target] = replace(
                current, collectors=collectors, reach=_newer(current.reach, reach)
            )
            self._changed()

    def set_derive(self, derive: Derive | None) -> None:
        """From each collector's next run on (a reload's `compat`); the self-metrics at once."""
        with self._lock:
            self._derive = derive
            self._changed()

    def publish_target(
        self,
        target: str,
        reach: Reachability,
        pool: dict[str, int] | None = None,
        budget: float | None = None,
    ) -> None:
        """What a probe found out about a target, its pool's counters and its budget."""
        with self._lock:
            current = self._targets.get(target, TargetStatus())
            changes: dict[str, object] = {"reach": _newer(current.reach, reach), "budget": budget}
            if pool is not None:
                changes["pool"] = pool
            self._targets[target] = replace(current, **changes)  # type: ignore[arg-type]
            self._changed()

    def retime(self, target: str, collector: str, interval: float, *, max_age: float) -> None:
        """A collector's interval changed between its runs (another collector's run moved the
        budget): its status shows the new interval now, and its parts expire `max_age` after
        they were published, not at the old interval's."""
        with self._lock:
            for key, part in self._parts.items():
                if (key.target, key.collector) == (target, collector):
                    self._parts[key] = replace(part, expires_at=part.published_at + max_age)
            current = self._targets.get(target)
            status = current.collectors.get(collector) if current is not None else None
            if current is not None and status is not None:
                collectors = {**current.collectors, collector: replace(status, interval=interval)}
                self._targets[target] = replace(current, collectors=collectors)
            self._changed()

    def forget(self, target: str, collector: str | None = None) -> None:
        """Remove a target's parts and status, or only one collector's: it no longer runs."""
        with self._lock:
            self._remove_parts(target, collector)
            current = self._targets.get(target)
            if collector is None:
                self._targets.pop(target, None)
                self._drops.pop(target, None)
                self._own_of.pop(target, None)
            elif current is not None and collector in current.collectors:
                collectors = {k: v for k, v in current.collectors.items() if k != collector}
                self._targets[target] = replace(current, collectors=collectors)
            self._changed()

    def drop_databases(self, target: str, databases: Iterable[str]) -> None:
        """Databases that are gone (dropped, or no longer visited): their series leave now, not
        at each collector's next run, which may be many minutes away."""
        # A label set starts with `{` or follows a `,`: `x_datname="a"` is another label.
        marks = [
            f'{before}datname="{escape_label_value(d)}"'.encode()
            for d in databases
            for before in "{,"
        ]
        with self._lock:
            now = self._clock()
            # A run lasts less than an hour (its timeout is at most its interval).
            recent = [d for d in self._drops.get(target, []) if d[0] > now - 3600]
            self._drops[target] = [*recent, (now, marks)]
            for key, part in list(self._parts.items()):
                if key.target != target:
                    continue
                families = part.rendered()
                kept = [f for f in (_without(f, marks) for f in families) if f.series]
                if kept == families:
                    continue
                # Rare (a database went): compressed again under the lock, as a part is.
                self._parts[key] = pack(
                    kept,
                    collected_at=part.collected_at,
                    published_at=part.published_at,
                    expires_at=part.expires_at,
                )
                if len(self._targets) > 1:
                    self._parts[key].pieces_alone(kept)
            self._changed()

    def _changed(self) -> None:
        """Under the lock: every cached body is out of date."""
        self._snapshot = None
        self._of_target.clear()

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

    def target_snapshot(self, target: str) -> Snapshot | None:
        """One target's series and self-metrics (what /probe serves), cached like the whole
        body's; None for a target the store does not know."""
        now = self._clock()
        with self._lock:
            if target not in self._targets:
                return None
            cached = self._of_target.get(target)
            if cached is None or now >= cached.valid_until:
                cached = self._of_target[target] = self._build(now, target)
            return cached

    def _own(self, target: str, status: TargetStatus) -> tuple[RenderedFamily, ...]:
        """Under the lock: the target's self-metrics, rendered again only if its status changed."""
        cached = self._own_of.get(target)
        if cached is None or cached[0] is not status:
            common = {family.name for family in self._common}
            families = self._self_metrics({target: status})
            cached = (status, tuple(f for f in families if f.name not in common))
            self._own_of[target] = cached
        return cached[1]

    def _build(self, now: float, target: str | None = None) -> Snapshot:
        """The body of every target's series, or of `target`'s only."""
        # Group by family name: one header per family, then the samples of every part.
        live = [
            part
            for key, part in sorted(self._parts.items(), key=_by_key)
            if part.expires_at > now and target in (None, key.target)
        ]
        valid_until = min((part.expires_at for part in live), default=float("inf"))
        statuses = self._targets if target is None else {target: self._targets[target]}
        own = (
            *self._common,
            *merge_families(self._own(name, s) for name, s in sorted(statuses.items())),
        )
        if target is None and self._process_metrics is not None:
            own = (*own, *self._process_metrics())
        if self._derive is not None:  # their names for pg_up, the collectors' states...
            own = (*own, *self._derive(own))
        by_name: dict[str, list[tuple[Part, int]]] = {}
        for part in live:
            for position, family in enumerate(part.families):
                by_name.setdefault(family.name, []).append((part, position))
        shared = any(len(places) > 1 for places in by_name.values()) or any(
            family.name in by_name for family in own
        )
        own_part = pack(
            own, collected_at=0.0, published_at=now, expires_at=math.inf, whole=not shared
        )
        live.append(own_part)
        if not shared:
            # Every family from one part: the body is the parts in order, and so is the stream.
            return Snapshot([piece for part in live for piece in part.pieces()], valid_until)
        for position, family in enumerate(own_part.families):
            by_name.setdefault(family.name, []).append((own_part, position))
        packed = []
        for places in by_name.values():
            first, at = places[0]
            packed.append(first.pieces_alone()[2 * at])
            for part, position in places:
                packed.append(part.pieces_alone()[2 * position + 1])
        return Snapshot(packed, valid_until)


def _by_key(item: tuple[PartKey, Part]) -> tuple[str, str]:
    return item[0].target, item[0].collector  # (a tuple compares in C, a PartKey in Python)


def _newer(current: Reachability, found: Reachability | None) -> Reachability:
    return found if found is not None and found.seq > current.seq else current


def _without(family: RenderedFamily, marks: Sequence[bytes]) -> RenderedFamily:
    """The family without the samples whose labels hold any of `marks`."""
    lines = family.samples.splitlines(keepends=True)
    kept = [line for line in lines if not any(mark in line for mark in marks)]
    if len(kept) == len(lines):
        return family
    return replace(family, samples=b"".join(kept), series=family.series - len(lines) + len(kept))
