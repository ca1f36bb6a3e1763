"""`compat: postgres_exporter` side by side with the real Go exporter on the same server: every
name of theirs that the mapping derives from ours by a rename (or a factor) is published by
ours, with their TYPE and their labels (but `datid`, and those the mapping lists as not ours),
whenever ours publishes the metric it comes from; settings agree exactly, and their
per-database counters, read after ours, are never lower. Ours keep their own labels too
(`target`, `datname`...)."""

import math
import re
from collections.abc import Callable

from exporter.app import Exporter
from exporter.demo.embedded import LocalPostgres
from exporter.gocompat import load_mapping
from exporter.web.config import OPEN
from support import (
    collector_states,
    enabled_postgres_collectors,
    exporter_config,
    parse_exposition,
    scrape_text,
    wait_for,
)
from support.goexporter import declared_types, go_exporter, sample_names, samples_of, scraped

SETTINGS = (
    "pg_settings_max_connections",
    "pg_settings_shared_buffers_bytes",
    "pg_settings_max_wal_size_bytes",
    "pg_settings_checkpoint_timeout_seconds",
    "pg_settings_autovacuum_freeze_max_age",
)


# Counters of theirs derived from ours per database: a read after ours is never lower.
COUNTERS = [
    f"pg_stat_database_{column}"
    for column in (
        "xact_commit",
        "xact_rollback",
        "blks_hit",
        "blks_read",
        "tup_returned",
        "tup_fetched",
        "tup_inserted",
        "temp_files",
        "deadlocks",
        "blk_read_time",
    )
]


def label_names(body: str, name: str) -> set[str]:
    return {n for labels, _ in samples_of(body, name) for n in re.findall(r'(\w+)="', labels)}


def per_database(body: str, name: str) -> dict[str, float]:
    found = {}
    for labels, number in samples_of(body, name):
        datname = re.search(r'datname="([^"]*)"', labels)
        if datname and datname.group(1) and not math.isnan(number):
            found[datname.group(1)] = number
    return found


def not_behind(ours: str, theirs: str, names: list[str]) -> list[str] | None:
    """The names compared, when every database both publish has theirs >= ours."""
    compared = []
    for name in names:
        mine, other = per_database(ours, name), per_database(theirs, name)
        common = mine.keys() & other.keys()
        if not common or any(other[d] < mine[d] * (1 - 1e-9) for d in common):
            return None
        compared.append(name)
    return compared


def every_collector_ran(port: int) -> str | None:
    body = scrape_text(port)
    states = collector_states(parse_exposition(body))
    # Ran: ok (1), or unavailable here (no replication, no archiving): anything but pending.
    ran = set(states) >= enabled_postgres_collectors() and all(
        v == 1 for k, v in states.items() if k in ("database", "checkpointer", "server")
    )
    # And the per-database counters still there: a part older than its max age is left out.
    return body if ran and samples_of(body, COUNTERS[0]) else None


def test_compat_publishes_their_names_with_their_types(
    postgres: LocalPostgres, run_exporter: Callable[..., Exporter]
) -> None:
    # Every collector every 5 s, not every second: a loaded machine keeps up with that.
    config = exporter_config(
        postgres.dsn(), interval="5s", all_collectors=True, compat="postgres_exporter"
    )
    exporter = run_exporter(config)
    ours = wait_for(
        lambda: every_collector_ran(exporter.server.port), timeout=120, what="every collector"
    )
    with go_exporter(postgres) as port:
        theirs = scraped(port) or ""
        # Counters read later are never lower (their reads follow ours; before PostgreSQL 15
        # a backend's statistics may be half a second old, hence a wait, not one read).
        counters = [n for n in COUNTERS if samples_of(ours, n)]
        assert len(counters) >= 10, counters
        wait_for(
            lambda: not_behind(ours, scraped(port) or "", counters),
            timeout=30,
            what="their counters at least ours",
        )

    our_names, our_types = sample_names(ours), declared_types(ours)
    their_types = declared_types(theirs)
    mapping = load_mapping()
    checked, missing, mistyped = [], [], []
    for name in sorted(sample_names(theirs)):
        entry = mapping.find(name)
        conversion = entry.conversion() if entry is not None else None
        if conversion is None or conversion.ours not in our_names:
            continue  # not derived by a rename, or ours has no such series on this server
        checked.append(name)
        if name not in our_names:
            missing.append(name)
        elif our_types.get(name) != their_types.get(name):
            mistyped.append(f"{name}: ours {our_types.get(name)}, theirs {their_types.get(name)}")
    assert not missing, missing
    assert not mistyped, mistyped
    # Their labels, but `datid` and those the mapping lists as not ours.
    unlabelled = []
    for name in checked:
        entry = mapping.find(name)
        assert entry is not None
        lacking = label_names(theirs, name) - label_names(ours, name)
        lacking -= {"datid", *entry.labels_not_ours}
        if lacking:
            unlabelled.append(f"{name}: {sorted(lacking)}")
    assert not unlabelled, unlabelled
    assert len(checked) >= 20, checked  # the comparison is not vacuous

    for name in SETTINGS:
        [(their_labels, their_value)] = samples_of(theirs, name)
        [(labels, our_value)] = samples_of(ours, name)
        assert our_value == their_value, name
        # Their `server` label, the same value as theirs: both were given 127.0.0.1 and the port.
        server = f'server="127.0.0.1:{postgres.port}"'
        assert (their_labels, labels) == (f"{{{server}}}", f'{{target="pg",{server}}}')


def test_compat_is_off_by_default_and_a_reload_switches_it(
    postgres: LocalPostgres, run_exporter: Callable[..., Exporter]
) -> None:
    exporter = run_exporter(exporter_config(postgres.dsn()))

    def body_with(name: str) -> str | None:
        body = scrape_text(exporter.server.port)
        return body if f"\n{name}{{" in body else None

    ours = wait_for(lambda: body_with("pg_database_xact_commit_total"), what="a database run")
    assert "pg_stat_database_xact_commit" not in ours
    exporter.apply(exporter_config(postgres.dsn(), compat="postgres_exporter"), OPEN)
    # From the collectors' next runs (1 s apart here), and at once for the self-metrics.
    wait_for(lambda: body_with("pg_stat_database_xact_commit"), what="their names published")
    assert body_with("pg_scrape_collector_success")
    exporter.apply(exporter_config(postgres.dsn()), OPEN)
    wait_for(
        lambda: body_with("pg_stat_database_xact_commit") is None, what="their names gone again"
    )
