"""The database-time budget's arithmetic: who is stretched, and by how much."""

import pytest

from exporter.collection.budget import MAX_INTERVAL_SECONDS, RECENT_RUNS, Budget
from exporter.units import parse_budget

pytestmark = pytest.mark.any_major

PER_MINUTE = 1 / 60


def budget(ms_per_minute: float | None, **costs: tuple[float, float]) -> Budget:
    """A budget over collectors given as name=(interval, seconds per run)."""
    per_second = None if ms_per_minute is None else ms_per_minute / 1000 * PER_MINUTE
    found = Budget(per_second, fixed_up_to=15)
    for name, (interval, _) in costs.items():
        found.add(name, interval)
    for name, (_, cost) in costs.items():
        found.record(name, cost)
    return found


def ms_per_minute(found: Budget, **costs: tuple[float, float]) -> float:
    return sum(cost / found.interval(name) * 60_000 for name, (_, cost) in costs.items())


def test_everything_fits_nothing_is_stretched() -> None:
    costs = {"database": (15, 0.002), "tables": (60, 0.05), "bloat": (900, 1.0)}
    found = budget(300, **costs)
    assert {name: found.interval(name) for name in costs} == {
        "database": 15,
        "tables": 60,
        "bloat": 900,
    }


def test_the_expensive_are_stretched_to_fit_and_the_cheap_keep_their_interval() -> None:
    costs = {
        "connections": (15, 0.005),  # 20 ms/min: fast, never stretched
        "statements": (60, 0.04),  # 40 ms/min: under the fair share, kept
        "tables": (60, 2.0),  # 2,000 ms/min
        "bloat": (900, 6.0),  # 400 ms/min
    }
    found = budget(300, **costs)
    assert found.interval("connections") == 15
    assert found.interval("statements") == 60
    assert found.interval("tables") > 60
    assert found.interval("bloat") > 900
    # What is left after the fast and the cheap (300 - 20 - 40) is shared equally.
    assert ms_per_minute(found, **costs) == pytest.approx(300)
    assert 2.0 / found.interval("tables") == pytest.approx(6.0 / found.interval("bloat"))


def test_fast_collectors_alone_over_budget_stretch_the_rest_to_the_limit() -> None:
    found = budget(10, connections=(15, 0.01), tables=(60, 0.1))
    assert found.interval("connections") == 15
    assert found.interval("tables") == MAX_INTERVAL_SECONDS


def test_no_budget_no_stretch() -> None:
    found = budget(None, tables=(60, 50.0))
    assert found.interval("tables") == 60


def test_a_slow_run_on_a_busy_client_does_not_stretch_but_a_lasting_rise_does() -> None:
    found = budget(300, tables=(60, 0.1))
    assert found.interval("tables") == 60
    found.record("tables", 1.0)  # one run the client measured slowly: the least of recent runs
    assert found.interval("tables") == 60
    for _ in range(RECENT_RUNS):  # the schema grew: every run costs 1 s now
        found.record("tables", 1.0)
    assert found.interval("tables") == pytest.approx(1.0 / (0.3 / 60))


def test_a_removed_collector_frees_its_share() -> None:
    found = budget(300, tables=(60, 0.5), indexes=(60, 0.5))
    stretched = found.interval("tables")
    found.remove("indexes")
    assert found.interval("tables") < stretched


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("300ms", 0.005), ("0.5%", 0.005), ("2s", 2 / 60), ("100%", 1.0), ("off", None)],
)
def test_budget_spellings(text: str, per_second: float | None) -> None:
    assert parse_budget(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["0%", "200%", "5m", "lots", "300"])
def test_bad_budgets_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"budget|database time"):
        parse_budget(text)
