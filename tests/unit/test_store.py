"""Rendering and the in-memory store, without a database."""

import datetime as dt
import gzip
import random
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.utils import floatToGoString

from exporter.catalogue import Collector, CollectorSpec
from exporter.collection.run import to_families
from exporter.errors import CollectorFailed
from exporter.exposition.render import (
    FamilyWriter,
    deflate_text,
    go_float,
    gzip_from_pieces,
    inflate,
    label_set,
    merge_families,
    render,
)
from exporter.exposition.selfmetrics import self_metrics
from exporter.exposition.store import Store
from exporter.status import CollectorStatus, Reachability, State
from support import names, parse_exposition, value

pytestmark = pytest.mark.any_major


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


OK = CollectorStatus(state=State.OK, series=1)


def gauge(name: str, target: str, val: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, "help text", labels=["target"])
    family.add_metric([target], val)
    return family


def demo_collector(metrics: dict[str, object]) -> Collector:
    """A custom collector `demo` of one query with this column mapping."""
    spec = {"help": "test", "queries": [{"sql": "SELECT", "metrics": metrics}]}
    return Collector(name="demo", builtin=False, spec=CollectorSpec.model_validate(spec))


COLLECTOR = demo_collector(
    {
        "datname": "label",
        "size": {"usage": "gauge", "name": "size_bytes", "unit": "bytes"},
        "calls": "counter",
        "time": {"usage": "counter", "name": "time_seconds", "scale": 0.001},
        "reset": {"usage": "gauge", "name": "reset_timestamp_seconds"},
        "note": "ignore",
    }
)
QUERY = COLLECTOR.spec.queries[0]


def test_rows_become_families() -> None:
    reset = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rows: list[tuple[object, ...]] = [
        ("app", 10, Decimal(3), 1500.0, reset, "x"),
        ("other", None, 1, 0.0, None, "y"),
    ]
    columns = ["datname", "size", "calls", "time", "reset", "note"]
    families = to_families(COLLECTOR, QUERY, columns, rows, {"target": "t"})
    text = b"".join(f.header + f.samples for f in families).decode()
    samples = parse_exposition(text)
    assert value(samples, "pg_demo_size_bytes", datname="app") == 10
    assert value(samples, "pg_demo_size_bytes", datname="other") is None  # NULL: no sample, not 0
    assert value(samples, "pg_demo_calls_total", datname="app", target="t") == 3
    assert value(samples, "pg_demo_time_seconds_total", datname="app") == 1.5
    assert value(samples, "pg_demo_reset_timestamp_seconds", datname="app") == reset.timestamp()
    assert "note" not in text
    assert "# TYPE pg_demo_calls_total counter" in text


def test_unmapped_column_is_an_error() -> None:
    with pytest.raises(CollectorFailed, match=r"column.*extra.*not mapped"):
        to_families(COLLECTOR, QUERY, ["datname", "size", "extra"], [("a", 1, 2)], {})


def test_duplicate_label_sets_are_an_error_not_a_broken_scrape() -> None:
    with pytest.raises(CollectorFailed, match="two rows share the labels"):
        to_families(
            COLLECTOR,
            QUERY,
            ["datname", "size", "calls", "time", "reset"],
            [("a", 1, 1, 0.0, None), ("a", 2, 1, 0.0, None)],
            {"target": "t"},
        )


def test_a_narrowed_metric_given_one_label_set_twice_is_an_error() -> None:
    # Rows unique as a whole, but `total` carries datname only: two samples of one series.
    narrowed = demo_collector(
        {
            "datname": "label",
            "relname": "label",
            "size": {"usage": "gauge"},
            "total": {"usage": "gauge", "labels": ["datname"]},
        }
    )
    query = narrowed.spec.queries[0]
    columns = ["datname", "relname", "size", "total"]
    one_each: list[tuple[object, ...]] = [("a", "t1", 1, 5), ("b", "t2", 2, 6)]
    text = b"".join(f.samples for f in to_families(narrowed, query, columns, one_each, {}))
    assert text.count(b"pg_demo_total{") == 2
    with pytest.raises(CollectorFailed, match="two rows give 'total' the labels"):
        twice: list[tuple[object, ...]] = [("a", "t1", 1, 5), ("a", "t2", 2, 5)]
        to_families(narrowed, query, columns, twice, {})


def test_a_family_written_in_many_chunks_reads_as_one() -> None:
    writer = FamilyWriter("pg_demo_rows", "rows", counter=False)
    for i in range(1300):  # beyond two of the writer's chunks
        writer.add(label_set(["n"], [str(i)]), i)
    family = writer.rendered()
    assert family.series == 1300
    lines = family.samples.decode().splitlines()
    assert lines[0] == 'pg_demo_rows{n="0"} 0.0' and lines[-1] == 'pg_demo_rows{n="1299"} 1299.0'
    assert len(lines) == 1300


def test_a_mapped_column_missing_from_the_result_is_an_error_not_silence() -> None:
    with pytest.raises(CollectorFailed, match=r"mapped column\(s\) calls, time, reset not in"):
        to_families(COLLECTOR, QUERY, ["datname", "size"], [("a", 1)], {"target": "t"})


def test_families_of_many_parts_share_one_header() -> None:
    store = Store(self_metrics=self_metrics)
    for target in ("a", "b"):
        store.publish(target, "demo", render([gauge("pg_demo_x", target, 1)]), OK, max_age=60)
    body = store.snapshot().body.decode()
    assert body.count("# TYPE pg_demo_x gauge") == 1
    samples = parse_exposition(body)  # the parser rejects a family split in two
    assert value(samples, "pg_demo_x", target="a") == 1
    assert value(samples, "pg_demo_x", target="b") == 1


def test_snapshot_is_cached_until_something_changes() -> None:
    store = Store(self_metrics=self_metrics)
    store.publish("a", "demo", render([gauge("pg_demo_x", "a", 1)]), OK, max_age=60)
    first = store.snapshot()
    assert store.snapshot() is first
    assert first.gzipped() is first.gzipped()
    assert gzip.decompress(first.gzipped()) == first.body
    store.publish("a", "demo", None, CollectorStatus(state=State.OK, series=2), max_age=60)
    assert store.snapshot() is not first


def test_stale_parts_leave_the_exposition() -> None:
    clock = FakeClock()
    store = Store(self_metrics=self_metrics, clock=clock)
    store.publish_target("a", Reachability(up=True, seq=1))
    store.publish("a", "demo", render([gauge("pg_demo_x", "a", 1)]), OK, max_age=45)
    assert b"pg_demo_x{" in store.snapshot().body
    clock.now += 44.9
    assert b"pg_demo_x{" in store.snapshot().body
    clock.now += 0.2
    body = store.snapshot().body
    assert b"pg_demo_x{" not in body
    assert b'pg_up{target="a"} 1.0' in body  # self-metrics are never stale


def test_a_run_replaces_the_parts_of_every_database() -> None:
    store = Store(self_metrics=self_metrics)
    parts = {db: render([gauge("pg_demo_x", db, 1)]) for db in ("app", "gone")}
    store.publish("a", "demo", merge_families(parts.values()), OK, max_age=60)
    store.publish("a", "demo", parts["app"], OK, max_age=60)
    body = store.snapshot().body
    assert b'target="app"' in body
    assert b'target="gone"' not in body


def _by_database(*databases: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily("pg_demo_x", "help text", labels=["datname", "x_datname"])
    for database in databases:
        family.add_metric([database, "gone"], 1)
    return family


def test_a_gone_database_leaves_every_part_at_once_and_runs_begun_before() -> None:
    clock = FakeClock()
    store = Store(self_metrics=self_metrics, clock=clock)
    store.publish("a", "demo", render([_by_database("app", 'g"o\\ne')]), OK, max_age=60)
    store.publish("a", "other", render([gauge("pg_other", "a", 1)]), OK, max_age=60)
    started = clock.now
    clock.now += 1
    store.drop_databases("a", ['g"o\\ne'])
    samples = parse_exposition(store.snapshot().body.decode())
    assert value(samples, "pg_demo_x", datname="app") == 1  # `x_datname="gone"` is not it
    assert value(samples, "pg_demo_x", datname='g"o\\ne') is None
    assert value(samples, "pg_other", target="a") == 1
    # A run that began before the database went may have visited it: taken out too.
    store.publish(
        "a", "demo", render([_by_database("app", 'g"o\\ne')]), OK, max_age=60, started=started
    )
    assert (
        value(parse_exposition(store.snapshot().body.decode()), "pg_demo_x", datname='g"o\\ne')
        is None
    )
    # One begun since (the database made again) keeps it.
    store.publish(
        "a", "demo", render([_by_database("app", 'g"o\\ne')]), OK, max_age=60, started=clock.now
    )
    assert (
        value(parse_exposition(store.snapshot().body.decode()), "pg_demo_x", datname='g"o\\ne') == 1
    )


def test_self_metrics() -> None:
    store = Store(self_metrics=self_metrics)
    store.publish_target("a", Reachability(up=False, message="connection refused", seq=1))
    unavailable = CollectorStatus(state=State.UNAVAILABLE, message="no extension")
    store.publish("a", "demo", (), unavailable, max_age=60)
    ok = CollectorStatus(state=State.OK, last_success=5.0, series=3)
    store.publish("a", "ok", None, ok, max_age=60)
    samples = parse_exposition(store.snapshot().body.decode())
    assert value(samples, "pg_up", target="a") == 0
    assert value(samples, "pg_exporter_collector_available", collector="demo") == 0
    assert value(samples, "pg_exporter_collector_available", reason="no extension") == 0
    assert value(samples, "pg_exporter_collector_up", collector="ok") == 1
    assert value(samples, "pg_exporter_collector_series", collector="ok") == 3
    assert (
        value(samples, "pg_exporter_collector_last_success_timestamp_seconds", collector="ok") == 5
    )
    assert value(samples, "pg_exporter_build_info") == 1


def test_forget_collector_removes_its_data_and_status_only() -> None:
    store = Store(self_metrics=self_metrics)
    for collector in ("gone", "kept"):
        families = render([gauge(f"pg_{collector}_x", "app", 1)])
        store.publish("a", collector, families, OK, max_age=60)
    store.publish_target("a", Reachability(up=True, seq=1))
    store.forget("a", "gone")
    samples = parse_exposition(store.snapshot().body.decode())
    assert "pg_gone_x" not in names(samples)
    assert value(samples, "pg_exporter_collector_up", collector="gone") is None
    assert "pg_kept_x" in names(samples)
    assert value(samples, "pg_exporter_collector_up", collector="kept") == 1
    assert value(samples, "pg_up", target="a") == 1


def test_an_older_finding_about_a_target_never_overwrites_a_newer_one() -> None:
    """A collector that saw the target down publishes after the probe that saw it come back."""
    store = Store(self_metrics=self_metrics)
    seen_down = Reachability(up=False, message="connection refused", seq=1)
    seen_up = Reachability(up=True, server_version="18.1", seq=2)
    store.publish_target("a", seen_up)
    store.publish("a", "demo", None, OK, max_age=60, reach=seen_down)
    assert store.targets()["a"].reach == seen_up
    samples = parse_exposition(store.snapshot().body.decode())
    assert value(samples, "pg_up", target="a") == 1


@pytest.mark.parametrize("counter", [False, True])
def test_text_written_directly_is_prometheus_clients_text(counter: bool) -> None:
    """The rows-to-text path writes byte for byte what prometheus_client would."""
    hostile = ["plain", 'quote " and \\ backslash', "new\nline", "", "ünïcødé", "tab\there"]
    values = [0.0, 1.0, -2.5, 1e20, 12345678901234.0, 0.1, float("inf"), float("nan")]
    help_text = "help with \\ and\nnewline"
    family_type = CounterMetricFamily if counter else GaugeMetricFamily
    expected = family_type("pg_demo_x", help_text, labels=["relname", "target"])
    writer = FamilyWriter("pg_demo_x_total" if counter else "pg_demo_x", help_text, counter=counter)
    for name, number in zip(hostile, values, strict=False):
        expected.add_metric([name, "t"], number)
        writer.add(label_set(["relname", "target"], [name, "t"]), number)
    [reference] = render([expected])
    mine = writer.rendered()
    assert (mine.name, mine.header, mine.samples, mine.series) == (
        reference.name,
        reference.header,
        reference.samples,
        reference.series,
    )


def whole_body_gzip(body: bytes) -> int:
    return len(gzip.compress(body, compresslevel=6))


def test_one_target_gzips_about_as_well_as_the_whole_body() -> None:
    """Parts compressed in context: the gzip body is within 1.3x of compressing it whole."""
    store = Store(self_metrics=self_metrics)
    for collector in ("alpha", "beta", "gamma"):
        families = [gauge(f"pg_{collector}_m{i}", "a", i) for i in range(40)]
        store.publish("a", collector, render(families), OK, max_age=60)
    snapshot = store.snapshot()
    assert gzip.decompress(snapshot.gzipped()) == snapshot.body
    assert len(snapshot.gzipped()) <= 1.3 * whole_body_gzip(snapshot.body)


def test_families_shared_by_targets_still_make_a_valid_gzip_body() -> None:
    store = Store(self_metrics=self_metrics)
    for target in ("a", "b", "c"):
        families = [gauge(f"pg_demo_m{i}", target, i) for i in range(10)]
        store.publish(target, "demo", render(families), OK, max_age=60)
    snapshot = store.snapshot()
    assert gzip.decompress(snapshot.gzipped()) == snapshot.body
    samples = parse_exposition(snapshot.body.decode())  # one header per family
    assert value(samples, "pg_demo_m3", target="c") == 3


def test_floats_are_spelled_as_prometheus_client_spells_them() -> None:
    rng = random.Random(7)
    values = [0.0, -0.0, 1.0, -1.0, 0.1, 1e-9, 123456.0, 1234567.0, -1234567.0, 2**53, 1e300]
    values += [rng.uniform(-1e12, 1e12) for _ in range(500)]
    values += [10 ** rng.uniform(-20, 20) for _ in range(500)]
    values += [float("inf"), float("-inf"), float("nan")]
    for number in values:
        assert go_float(number) == floatToGoString(number), number  # type: ignore[no-untyped-call]


@given(st.lists(st.lists(st.binary(max_size=3000), max_size=4), max_size=6))
def test_pieces_compressed_apart_are_one_gzip_file_of_their_texts(
    texts: list[list[bytes]],
) -> None:
    """gzip checks the trailer's CRC-32 and length, which the store computes from the pieces'
    own (their texts are not kept): crc32_combine must be exact."""
    pieces = [deflate_text(chunks) for chunks in texts]
    body = b"".join(b"".join(chunks) for chunks in texts)
    assert gzip.decompress(gzip_from_pieces(pieces)) == body
    assert inflate(pieces) == body


def test_a_piece_larger_than_the_zeros_buffer_combines_exactly() -> None:
    big = random.Random(7).randbytes(3 << 20 | 5)
    pieces = [deflate_text([b"head"]), deflate_text([big]), deflate_text([b"tail"])]
    assert gzip.decompress(gzip_from_pieces(pieces)) == b"head" + big + b"tail"
