"""What the exporter knows about how collection went: per target, and per collector on it.

The jobs write these (through the store), the self-metrics, the landing page and the report read
them. They hold no data from the database beyond the server's version.
"""

from dataclasses import dataclass, field
from enum import StrEnum


class State(StrEnum):
    """How a collector's last run ended."""

    PENDING = "pending"  # not run yet
    OK = "ok"
    ERROR = "error"  # SQL error or timeout; counted in errors_total
    UNAVAILABLE = "unavailable"  # version, extension or privilege; with the reason
    DOWN = "down"  # the target is unreachable (pg_up says so, once)


@dataclass(frozen=True)
class CollectorStatus:
    """The latest outcome of one (target, collector), for self-metrics and the landing page."""

    state: State = State.PENDING
    last_success: float | None = None  # wall clock
    last_duration: float = 0.0
    errors_total: int = 0
    series: int = 0
    message: str = ""  # the error or the reason it is unavailable
    interval: float = 0.0  # seconds between runs now: as configured, or stretched by the budget
    database_seconds_total: float = 0.0  # how long its statements kept the server busy, in all
    # Saturation: runs that did not happen (the previous one still running, or no worker free
    # in time), and how late the last one started after its interval (and jitter).
    runs_skipped_total: int = 0
    late_seconds: float = 0.0


@dataclass(frozen=True)
class Reachability:
    """Whether a target answered, as it last found out.

    Both the probe and a collector that fails to connect may find out, on different threads;
    `seq` orders what they found, so an older finding published late never overwrites a newer.
    """

    up: bool = False
    pending: bool = False  # before the first attempt's outcome
    message: str = ""  # why it is down ("connecting" before the first attempt)
    server_version: str = ""
    seq: int = 0
    # Databases per-database collectors cannot visit, with why (the probe's last finding).
    not_visited: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TargetStatus:
    reach: Reachability = Reachability()
    collectors: dict[str, CollectorStatus] = field(default_factory=dict)
    pool: dict[str, int] = field(default_factory=dict)  # the session pool's get_stats()
    budget: float | None = None  # database time per second the collectors may use

    @property
    def up(self) -> bool:
        return self.reach.up

    @property
    def pending(self) -> bool:
        return self.reach.pending

    @property
    def message(self) -> str:
        return self.reach.message

    @property
    def server_version(self) -> str:
        return self.reach.server_version
