"""What people read: durations and versions, spelt as they would write them."""

import pytest

from exporter.report.checks.base import human_seconds
from exporter.units import (
    format_duration,
    format_server_version,
    human_milliseconds,
    parse_duration,
)


@pytest.mark.parametrize(
    ("seconds", "spelt"),
    [
        (0.0, "0ms"),
        (0.00004, "<0.1ms"),
        (0.0004, "0.4ms"),
        (0.00094, "0.9ms"),
        (0.0015, "2ms"),
        (0.5, "500ms"),
        (15.0, "15s"),
        (300.0, "5m"),
        (7200.0, "2h"),
    ],
)
def test_format_duration_never_rounds_a_real_value_to_zero(seconds: float, spelt: str) -> None:
    assert format_duration(seconds) == spelt


@pytest.mark.parametrize("seconds", [0.001, 0.5, 15.0, 300.0, 7200.0, 1.5])
def test_format_duration_reads_back(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.0, "0 ms"), (0.00001, "<0.1 ms"), (0.0004, "0.4 ms"), (0.012, "12 ms")],
)
def test_human_milliseconds(seconds: float, shown: str) -> None:
    assert human_milliseconds(seconds) == shown


def test_the_report_shows_a_sub_millisecond_mean() -> None:
    assert human_seconds(0.0004) == "0.4 ms"
    assert human_seconds(0.25) == "250 ms"
    assert human_seconds(5.0) == "5.0 s"


@pytest.mark.parametrize(
    ("number", "version"),
    [(180006, "18.6"), (170000, "17.0"), (130022, "13.22"), (90624, "9.6.24"), (100001, "10.1")],
)
def test_server_version_as_people_write_it(number: int, version: str) -> None:
    assert format_server_version(number) == version
