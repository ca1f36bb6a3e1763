"""Choosing which rows of a per-object query become series: caps without churn.

Per-object collectors (tables, indexes, statements) could publish one series per object, which
is how exporters end up with unbounded cardinality. A query's `limit` keeps the objects a
health check flags, the top N by each ranking column, and (sticky) last run's choices while
they stay near the top, so a table hovering around rank N does not appear and vanish every
interval.
"""

from collections.abc import Hashable, Iterable, Sequence

from exporter.catalogue import Limit

Row = tuple[object, ...]
# The identity of a row across runs: its label values.
RowKey = tuple[Hashable, ...]

STICKY_FACTOR = 2  # a previously chosen row stays while within this many times max_rows


def cap_rows(  # noqa: PLR0917 (one call site; the names say what each is)
    limit: Limit,
    max_rows: int,
    columns: Sequence[str],
    rows: Sequence[Row],
    key_columns: Sequence[str],
    previous: frozenset[RowKey],
) -> tuple[list[Row], frozenset[RowKey]]:
    """The rows to publish, in their original order, and their keys for next time."""
    index = {c: i for i, c in enumerate(columns)}
    key_at = [index[c] for c in key_columns if c in index]

    def key(row: Row) -> RowKey:
        # As text, like the label values they become: arrays and JSON are not hashable.
        return tuple("" if row[i] is None else str(row[i]) for i in key_at)

    best_rank: dict[int, int] = {}  # row position -> best rank over all rank_by columns (0: top)
    for column in limit.rank_by:
        if column not in index:
            continue  # e.g. a column this server version does not have
        at = index[column]
        ranks: Iterable[tuple[int, int]]  # (row position, rank)
        if limit.ranked:  # ranked by the SQL, among all objects, from 1
            ranks = enumerate(_rank(row[at], len(rows)) for row in rows)
        else:
            order = sorted(range(len(rows)), key=lambda r: _sort_value(rows[r][at]), reverse=True)
            ranks = ((position, rank) for rank, position in enumerate(order))
        for position, rank in ranks:
            best_rank[position] = min(rank, best_rank.get(position, rank))
    keep_at = index.get(limit.keep_when) if limit.keep_when else None
    chosen: list[Row] = []
    keys: set[RowKey] = set()
    for position, row in enumerate(rows):
        rank = best_rank.get(position, len(rows))
        flagged = keep_at is not None and bool(row[keep_at])
        row_key = key(row)
        near_top = limit.sticky and row_key in previous and rank < STICKY_FACTOR * max_rows
        if flagged or rank < max_rows or near_top:
            chosen.append(row)
            keys.add(row_key)
    return chosen, frozenset(keys)


def _rank(value: object, fallback: int) -> int:
    """A rank from the SQL (1 = first) as a position from 0; none ranks last."""
    return int(value) - 1 if isinstance(value, int) else fallback


def _sort_value(value: object) -> float:
    if value is None:
        return float("-inf")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("-inf")
