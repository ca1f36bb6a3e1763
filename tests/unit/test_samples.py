"""The report's samples: the exporter's own exposition read back exactly as prometheus_client's
parser reads it, and label lookups that give what a scan would."""

import math
import random

import pytest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from exporter.exposition.render import render
from exporter.report.samples import Sample, Samples, _parse_own

pytestmark = pytest.mark.any_major

# Label values as a database may name things: every character the text format escapes, the
# characters the format itself uses, and text that looks like more of a sample line.
HOSTILE = [
    "plain",
    "",
    'quote " inside',
    "back\\slash",
    "\\n not a newline",
    "new\nline",
    "brace } and {",
    'ends like a sample"} 1',
    "a=b,c",
    "ünïcødé ✓",
    "trailing\\",
    "tab\there",
]


def families() -> list[Metric]:
    gauge = GaugeMetricFamily(
        "pg_t_size_bytes",
        'help with "quotes" \\ and\nnewline',
        labels=["target", "datname", "relname"],
    )
    for i, name in enumerate(HOSTILE):
        gauge.add_metric(["pg", HOSTILE[-i - 1], name], float(i) * 1.5)
    gauge.add_metric(["pg", "db", "nan"], math.nan)
    gauge.add_metric(["pg", "db", "inf"], math.inf)
    gauge.add_metric(["pg", "db", "-inf"], -math.inf)
    gauge.add_metric(["pg", "db", "big"], 1.2345678901234567e300)
    counter = CounterMetricFamily("pg_t_calls", "calls", labels=["target"])
    counter.add_metric(["pg"], 12345678901234567890)
    plain = GaugeMetricFamily("pg_up_like", "no labels", value=1)
    return [gauge, counter, plain]


def exposition() -> str:
    return b"".join(f.header + f.samples for f in render(families())).decode()


def general(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def ours(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, dict(s.labels), s.value) for s in Samples.parse(text)]


def same(
    a: list[tuple[str, dict[str, str], float]], b: list[tuple[str, dict[str, str], float]]
) -> bool:
    def key(s: tuple[str, dict[str, str], float]) -> tuple[str, dict[str, str], str]:
        return (s[0], s[1], repr(float(s[2])))  # NaN equals NaN here; 1 equals 1.0

    return [key(s) for s in a] == [key(s) for s in b]


def test_own_exposition_reads_as_the_general_parser_reads_it() -> None:
    text = exposition()
    expected = general(text)
    assert len(expected) == len(HOSTILE) + 6
    assert _parse_own(text) is not None  # read by the fast path, not the fallback
    assert same(ours(text), expected)
    labels = {s[1].get("relname") for s in ours(text)}
    assert set(HOSTILE) <= labels


@pytest.mark.parametrize(
    "line",
    [
        'pg_x{target="pg"} 1 1700000000000',  # a timestamp
        'pg_x{target="pg",} 1',  # a trailing comma after the last label
        'pg_x{a="1"b="2"} 1',  # no comma between labels
        "pg_x 0x10",  # not a float of the text format
    ],
)
def test_other_text_is_read_by_the_general_parser(line: str) -> None:
    text = exposition() + "# TYPE pg_x gauge\n" + line + "\n"
    try:
        expected = general(text)
    except ValueError:
        with pytest.raises(ValueError):
            Samples.parse(text)
        return
    assert same(ours(text), expected)


def test_label_lookups_give_what_a_scan_gives() -> None:
    rng = random.Random(7)
    samples = [
        Sample(
            "m",
            {k: rng.choice("abc") for k in ("x", "y", "z") if rng.random() < 0.8},
            float(i),
        )
        for i in range(300)
    ]
    indexed = Samples(samples)
    for _ in range(200):
        wanted = {k: rng.choice("abcd") for k in rng.sample(["x", "y", "z"], rng.randint(0, 3))}
        scanned = [s for s in samples if all(s.labels.get(k) == v for k, v in wanted.items())]
        assert indexed.all("m", **wanted) == scanned
        assert indexed.get("m", **wanted) == (scanned[0].value if scanned else None)
    assert indexed.all("absent", x="a") == []
