"""Capped per-object queries: flagged objects kept, top N by each rank, sticky without churn."""

import pytest

from exporter.catalogue import CollectorSpec, Limit
from exporter.collection.rowcap import cap_rows

pytestmark = pytest.mark.any_major

COLUMNS = ["relname", "size", "scans", "flagged"]
LIMIT = Limit(max_rows=2, rank_by=("size", "scans"), keep_when="flagged")


def rows(*spec: tuple[str, int, int, bool]) -> list[tuple[object, ...]]:
    return [tuple(r) for r in spec]


def chosen(result: tuple[list[tuple[object, ...]], frozenset[tuple[object, ...]]]) -> set[object]:
    return {row[0] for row in result[0]}


def test_top_n_by_each_rank_and_flagged() -> None:
    table = rows(
        ("big", 100, 0, False),
        ("bigger", 200, 0, False),
        ("busy", 1, 500, False),
        ("busier", 1, 900, False),
        ("small_bad", 1, 0, True),
        ("small", 2, 1, False),
    )
    result = cap_rows(LIMIT, 2, COLUMNS, table, ["relname"], frozenset())
    assert chosen(result) == {"big", "bigger", "busy", "busier", "small_bad"}


def test_sticky_keeps_previous_choice_near_the_top() -> None:
    first = rows(("a", 30, 0, False), ("b", 20, 0, False), ("c", 10, 0, False))
    one_rank = Limit(max_rows=2, rank_by=("size",))
    _, keys = cap_rows(one_rank, 2, COLUMNS, first, ["relname"], frozenset())
    # c overtakes b: b is third but within 2 x max_rows, so it stays; c enters.
    second = rows(("a", 30, 0, False), ("b", 20, 0, False), ("c", 25, 0, False))
    result = cap_rows(one_rank, 2, COLUMNS, second, ["relname"], keys)
    assert chosen(result) == {"a", "b", "c"}
    # Far from the top, b leaves.
    third = rows(*[(f"n{i}", 100 + i, 0, False) for i in range(5)], ("b", 20, 0, False))
    assert "b" not in chosen(cap_rows(one_rank, 2, COLUMNS, third, ["relname"], result[1]))


def test_not_sticky() -> None:
    plain = Limit(max_rows=1, rank_by=("size",), sticky=False)
    table = rows(("a", 2, 0, False), ("b", 1, 0, False))
    result = cap_rows(plain, 1, COLUMNS, table, ["relname"], frozenset({("b",)}))
    assert chosen(result) == {"a"}


def test_a_target_cap_is_shared_by_its_databases() -> None:
    """A 500-database server publishes at most the per-target top N, not 500 times the top N."""
    spec = CollectorSpec.model_validate(
        {
            "help": "per-object",
            "scope": "database",
            "params": {"per_database": 25, "per_target": 500},
            "queries": [
                {
                    "sql": "SELECT 1 AS size, 'a' AS relname",
                    "limit": {
                        "max_rows": "per_database",
                        "target_max_rows": "per_target",
                        "rank_by": ["size"],
                    },
                    "metrics": {"size": "gauge", "relname": "label"},
                }
            ],
        }
    )
    limit = spec.queries[0].limit
    assert limit is not None
    shares = {n: spec.max_rows(limit, databases=n) for n in (1, 20, 21, 100, 500, 1000)}
    assert shares == {1: 25, 20: 25, 21: 23, 100: 5, 500: 1, 1000: 1}
    assert all(share * n <= 500 for n, share in shares.items() if n <= 500)
    assert spec.target_max_rows(limit) == 500
