"""A ceiling on the database time the exporter spends on one target, kept by the exporter.

Each collector run measures how long its statements kept the server busy (the time between
sending them and having their results, on the client's clock: an upper bound of the server's
execution time). With a budget, in seconds of database time per second (the default,
200 ms a minute, is a third of a percent of one core), the collectors share it:

- The fast collectors (interval at most the probe's, 15 s by default: pg_up, connections,
  database counters) always run at their interval; their cost comes off the budget first.
- The rest share what is left by max-min fairness: each may use up to an equal share, a
  collector that would use less keeps its interval and leaves the rest to the others, and one
  that would use more runs less often, just enough to fit its share.

A run that skips a query of a slower cadence of its own (the sizes of every relation, every
10 minutes) is still charged its share of that query (collection.run.Ran.priced_seconds).

So cheap collectors are never slowed, and the expensive ones (per-table statistics, bloat,
index health on a large schema) are stretched only as far as the budget needs.
"""

import threading
from dataclasses import dataclass, field

# A collector's cost is the least of its last few runs: the client's clock can only add to
# what the server spent (a loaded client, the GIL), never take away, and a real change of cost
# (a schema that grew) shows within this many runs.
RECENT_RUNS = 5
# The longest a collector is stretched to, whatever the budget: a day.
MAX_INTERVAL_SECONDS = 86_400.0


@dataclass
class _Collector:
    interval: float  # as configured
    stretchable: bool
    recent: list[float] = field(default_factory=list)  # seconds per run, the latest last

    @property
    def cost(self) -> float | None:
        """Seconds of database time per run; None before the first run."""
        return min(self.recent) if self.recent else None


class Budget:
    """The effective intervals of one target's collectors under a database-time budget."""

    def __init__(self, seconds_per_second: float | None, *, fixed_up_to: float) -> None:
        self.seconds_per_second = seconds_per_second  # None: no budget
        self._fixed_up_to = fixed_up_to  # collectors at most this interval are never stretched
        self._lock = threading.Lock()
        self._collectors: dict[str, _Collector] = {}
        self._effective: dict[str, float] = {}

    def add(self, name: str, interval: float) -> None:
        """A collector scheduled on the target (again: a reload may change its interval)."""
        with self._lock:
            old = self._collectors.get(name)
            recent = old.recent if old is not None else []
            self._collectors[name] = _Collector(interval, interval > self._fixed_up_to, recent)
            self._solve()

    def remove(self, name: str) -> None:
        with self._lock:
            self._collectors.pop(name, None)
            self._effective.pop(name, None)
            self._solve()

    def record(self, name: str, seconds: float) -> None:
        """A run of the collector kept the server busy for `seconds`."""
        with self._lock:
            collector = self._collectors.get(name)
            if collector is None:
                return
            collector.recent = [*collector.recent[-(RECENT_RUNS - 1) :], seconds]
            self._solve()

    def interval(self, name: str) -> float:
        """The collector's interval now: as configured, or stretched to fit the budget."""
        with self._lock:
            return self._effective.get(name, 0.0)

    def _solve(self) -> None:
        effective = {name: c.interval for name, c in self._collectors.items()}
        if self.seconds_per_second is not None:
            fixed = sum(
                c.cost / c.interval
                for c in self._collectors.values()
                if not c.stretchable and c.cost is not None
            )
            rates = {
                name: c.cost / c.interval
                for name, c in self._collectors.items()
                if c.stretchable and c.cost
            }
            share = _fair_share(rates, self.seconds_per_second - fixed)
            for name, rate in rates.items():
                if rate > share:
                    cost = self._collectors[name].cost or 0.0
                    stretched = cost / share if share > 0 else MAX_INTERVAL_SECONDS
                    effective[name] = min(stretched, MAX_INTERVAL_SECONDS)
        self._effective = effective


def _fair_share(rates: dict[str, float], allowance: float) -> float:
    """The most each may use so that the capped rates add up to `allowance` (max-min fair).

    Infinite when everything fits; 0 when nothing is left after the fixed collectors.
    """
    if sum(rates.values()) <= allowance:
        return float("inf")
    if allowance <= 0:
        return 0.0
    remaining, left = allowance, sorted(rates.values())
    while left:
        share = remaining / len(left)
        if left[0] > share:
            return share
        remaining -= left.pop(0)
    return float("inf")
