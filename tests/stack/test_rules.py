"""The Prometheus rules in alerts/: promtool accepts them and their unit tests pass, and they
stay usable: every alert is labelled, annotated and documented in docs/runbooks.md, is tested
firing and quiet, and reads only metrics the exporter publishes or the recording rules define.
"""

import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import REPO, tool
from support.promql import metric_names

pytestmark = pytest.mark.any_major

ALERTS = REPO / "alerts"
RULE_FILES = sorted(ALERTS.glob("*.yml"))
TEST_FILES = sorted((ALERTS / "tests").glob("*.yml"))
RUNBOOKS = REPO / "docs" / "runbooks.md"
RUNBOOK_BASE = "https://github.com/pg-health-exporter/pg-health-exporter/blob/main/docs/runbooks.md"
SEVERITIES = {"critical", "warning", "info"}

# The dashboards and the end-to-end test refer to these by name.
REQUIRED_RECORDING_RULES = {
    "pg:heap_cache_hit_ratio:rate5m",
    "pg:index_cache_hit_ratio:rate5m",
    "pg:database_cache_hit_ratio:rate5m",
    "pg:statement_mean_exec_time_seconds:rate5m",
    "pg:statement_calls:rate5m",
    "pg:statement_exec_time_seconds:rate5m",
    "pg:transactions:rate5m",
    "pg:rollback_ratio:rate5m",
    "pg:connections_used_ratio:max5m",
}


# --- loading ----------------------------------------------------------------------------------


@cache
def rules() -> list[dict[str, Any]]:
    found = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            found.extend(group["rules"])
    return found


def alerting_rules() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def alert_names() -> set[str]:
    return {rule["alert"] for rule in alerting_rules()}


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


@cache
def metric_table() -> dict[str, tuple[str, set[str]]]:
    """METRICS.md: metric name -> (type, labels)."""
    row = re.compile(
        r"^\| `([a-zA-Z_:][a-zA-Z0-9_:]*)` \| (counter|gauge|info|histogram|summary) \| ([^|]*) \|"
    )
    table = {}
    for line in (REPO / "METRICS.md").read_text().splitlines():
        match = row.match(line)
        if match:
            labels = {label.strip() for label in match.group(3).split(",") if label.strip()}
            table[match.group(1)] = (match.group(2), labels)
    assert len(table) > 100, "METRICS.md's table format changed: fix the parser in this test"
    return table


@cache
def unit_tests() -> dict[Path, dict[str, Any]]:
    return {path: yaml.safe_load(path.read_text()) for path in TEST_FILES}


def alert_cases() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, case)
        for path, suite in unit_tests().items()
        for group in suite["tests"]
        for case in group.get("alert_rule_test", [])
    ]


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading: lower case, punctuation dropped, spaces
    to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@cache
def runbook_headings() -> list[str]:
    headings, fenced = [], False
    for line in RUNBOOKS.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"^#{1,6}\s+(.+?)\s*#*$", line)):
            headings.append(match.group(1))
    return headings


def section(heading: str) -> str:
    """The text of the runbook section under `heading`, up to the next heading of its level."""
    lines = RUNBOOKS.read_text().splitlines()
    start = next(
        i for i, line in enumerate(lines) if re.match(rf"^(#+)\s+{re.escape(heading)}\s*$", line)
    )
    level = len(lines[start]) - len(lines[start].lstrip("#"))
    end = next(
        (i for i in range(start + 1, len(lines)) if re.match(rf"^#{{1,{level}}}\s", lines[i])),
        len(lines),
    )
    return "\n".join(lines[start + 1 : end])


# --- promtool ---------------------------------------------------------------------------------


def test_promtool_checks_the_rule_files() -> None:
    assert {path.name for path in RULE_FILES} >= {"alerts.yml", "recording.yml"}
    result = subprocess.run(
        [tool("promtool", "prometheus"), "check", "rules", *map(str, RULE_FILES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for path in RULE_FILES:
        count = sum(len(g["rules"]) for g in yaml.safe_load(path.read_text())["groups"])
        assert f"Checking {path}\n  SUCCESS: {count} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    assert TEST_FILES, "alerts/tests/ has no promtool test files"
    result = subprocess.run(
        [tool("promtool", "prometheus"), "test", "rules", *map(str, TEST_FILES)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(TEST_FILES), result.stdout


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.name)
def test_unit_test_files_load_the_rule_files(path: Path) -> None:
    # A quiet case ("exp_alerts: []") passes vacuously when the alert is not even loaded.
    suite = unit_tests()[path]
    loaded = {(path.parent / name).resolve() for name in suite["rule_files"]}
    if any("alert_rule_test" in group for group in suite["tests"]):
        assert (ALERTS / "alerts.yml").resolve() in loaded
    assert (ALERTS / "recording.yml").resolve() in loaded


# --- every alert: labels, annotations, runbook ------------------------------------------------


@pytest.mark.parametrize(
    "rule", alerting_rules(), ids=lambda r: f"{r['alert']}-{r['labels']['severity']}"
)
def test_alert_is_labelled_and_annotated(rule: dict[str, Any]) -> None:
    assert re.fullmatch(r"Pg[A-Z][A-Za-z]+", rule["alert"]), "alert names are PgCamelCase"
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert set(annotations) >= {"summary", "description", "runbook_url"}
    for key in ("summary", "description"):
        assert "{{ $labels.target }}" in annotations[key], f"{key} must name the target"
    base, _, anchor = annotations["runbook_url"].partition("#")
    assert base == RUNBOOK_BASE
    assert anchor == rule["alert"].lower(), "one runbook section per alert, named after it"


def test_alerts_sharing_a_name_differ_in_severity() -> None:
    seen: dict[str, list[str]] = {}
    for rule in alerting_rules():
        seen.setdefault(rule["alert"], []).append(rule["labels"]["severity"])
    for name, severities in seen.items():
        assert len(severities) == len(set(severities)), f"{name}: {severities}"


def test_annotations_use_labels_the_alert_has() -> None:
    # A misspelt $labels.x renders as nothing: a summary without the object it names.
    for rule in alerting_rules():
        available = set().union(*(labels_of(name) for name in metric_names(rule["expr"])))
        available |= set(re.findall(r'label_replace\([^,]+,\s*"(\w+)"', rule["expr"]))
        for text in rule["annotations"].values():
            used = set(re.findall(r"\$labels\.(\w+)", text))
            assert used <= available, f"{rule['alert']}: {used - available}"


def labels_of(name: str) -> set[str]:
    if name in metric_table():
        return metric_table()[name][1]
    # A recording rule keeps every label of the series it is computed from. (An unknown name
    # has none: test_rule_reads_only_published_metrics_and_recording_rules reports it.)
    exprs = [r["expr"] for r in rules() if r.get("record") == name]
    return set().union(*(labels_of(source) for expr in exprs for source in metric_names(expr)))


def test_every_runbook_url_points_at_a_heading() -> None:
    anchors = {github_anchor(heading) for heading in runbook_headings()}
    for rule in alerting_rules():
        anchor = rule["annotations"]["runbook_url"].partition("#")[2]
        assert anchor in anchors, f"{rule['alert']}: no heading for #{anchor} in docs/runbooks.md"


def test_runbooks_document_exactly_the_alerts() -> None:
    documented = {h for h in runbook_headings() if re.fullmatch(r"Pg[A-Z][A-Za-z]+", h)}
    assert documented == alert_names()
    for name in alert_names():
        text = section(name)
        # What it means, how to confirm it (SQL), what to do.
        assert "```sql" in text, f"{name}: no SQL to confirm it"
        assert "**What to do**" in text, f"{name}: no 'What to do'"


def test_thresholds_table_lists_every_alert() -> None:
    text = section("Thresholds")
    rows = [line for line in text.splitlines() if line.startswith("| `Pg")]
    assert {row.split("`")[1] for row in rows} == alert_names()
    # One row per rule (a name with two severities has two), each ending with its `for`.
    assert len(rows) == len(alerting_rules())
    for rule in alerting_rules():
        wanted = f"`{rule['for']}`" if "for" in rule else "none"
        row = [
            r for r in rows if r.startswith(f"| `{rule['alert']}` | {rule['labels']['severity']} |")
        ]
        assert len(row) == 1, f"{rule['alert']} ({rule['labels']['severity']}): one row"
        assert row[0].rstrip(" |").endswith(wanted), f"{row[0]}: `for` should be {wanted}"


# --- every alert tested, firing and quiet -----------------------------------------------------


def test_every_alert_is_tested_firing_and_quiet() -> None:
    firing: dict[str, set[str]] = {}
    quiet: set[str] = set()
    for _, case in alert_cases():
        if case.get("exp_alerts"):
            for alert in case["exp_alerts"]:
                firing.setdefault(case["alertname"], set()).add(alert["exp_labels"]["severity"])
        else:
            quiet.add(case["alertname"])
    expected: dict[str, set[str]] = {}
    for rule in alerting_rules():
        expected.setdefault(rule["alert"], set()).add(rule["labels"]["severity"])
    assert firing == expected, "every alert, at each severity, must fire in a test"
    assert quiet == alert_names(), "every alert must stay quiet in a test"


def test_firing_cases_check_labels_and_annotations() -> None:
    for path, case in alert_cases():
        for alert in case.get("exp_alerts", []):
            where = f"{path.name}: {case['alertname']}"
            assert "target" in alert["exp_labels"], where
            # promtool compares the whole set, so extra annotations (a query) are tested too.
            assert {"summary", "description", "runbook_url"} <= set(alert["exp_annotations"]), where


def test_test_series_are_metrics_the_exporter_publishes() -> None:
    # Tests of made-up series prove nothing about the real exporter.
    known = metric_table().keys()
    for path, suite in unit_tests().items():
        for group in suite["tests"]:
            for series in group.get("input_series", []):
                name = series["series"].split("{", 1)[0].strip()
                assert name in known, f"{path.name}: {name} is not in METRICS.md"


# --- what the rules read ----------------------------------------------------------------------


def test_required_recording_rules_exist() -> None:
    assert recorded_names() >= REQUIRED_RECORDING_RULES


def test_every_recording_rule_is_tested() -> None:
    exprs = [
        test["expr"]
        for suite in unit_tests().values()
        for group in suite["tests"]
        for test in group.get("promql_expr_test", [])
    ]
    tested = set().union(*(metric_names(expr) for expr in exprs))
    assert recorded_names() <= tested, recorded_names() - tested


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r.get("alert") or r["record"])
def test_rule_reads_only_published_metrics_and_recording_rules(rule: dict[str, Any]) -> None:
    names = metric_names(rule["expr"])
    assert names, "no metric found in the expression: is the parser wrong?"
    unknown = names - metric_table().keys() - recorded_names()
    assert not unknown, f"not in METRICS.md nor recorded: {sorted(unknown)}"


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r.get("alert") or r["record"])
def test_rates_only_of_counters_and_trends_only_of_gauges(rule: dict[str, Any]) -> None:
    expr = rule["expr"]
    for function, kind in (
        (r"(?:rate|irate|increase)", "counter"),
        (r"(?:deriv|predict_linear|\w+_over_time)", "gauge"),
    ):
        for name in re.findall(rf"\b{function}\s*\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", expr):
            assert name in metric_table(), f"{name}: only raw metrics are rated"
            assert metric_table()[name][0] == kind, (
                f"{function} of {name}, a {metric_table()[name][0]}"
            )


def test_ratios_of_recording_rules_guard_the_denominator() -> None:
    # 0/0 (an idle database) must give no sample, not NaN: every division by a rate is by
    # "(...) > 0".
    for rule in rules():
        if "record" not in rule or "/" not in rule["expr"]:
            continue
        denominator = rule["expr"].split("/", 1)[1].strip()
        assert re.search(r">\s*0\s*\)$", denominator), f"{rule['record']}: unguarded division"


# --- the metric-name extraction itself --------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("pg_up == 0", {"pg_up"}),
        (
            'pg_exporter_collector_available{collector="statements"} == 0',
            {"pg_exporter_collector_available"},
        ),
        (
            "rate(pg_statio_heap_blks_hit_total[5m]) / ((rate(pg_statio_heap_blks_hit_total[5m]) + rate(pg_statio_heap_blks_read_total[5m])) > 0)",
            {"pg_statio_heap_blks_hit_total", "pg_statio_heap_blks_read_total"},
        ),
        # Recording rule names with colons and digits; numbers, durations and offsets.
        ("pg:heap_cache_hit_ratio:rate5m < 0.90", {"pg:heap_cache_hit_ratio:rate5m"}),
        ("rate(x_total[1h] offset 1d) > 1e6 * 0x10 + .5 - 1h30m", {"x_total"}),
        ("x @ 1609746000 > bool 2", {"x"}),
        ("x @ start()", {"x"}),
        # Label lists of aggregations and vector matching are not metric names.
        ("sum by (datname, target) (a) / on (target) group_left (datname) b", {"a", "b"}),
        ("sum(a) without (instance) > ignoring(job) b unless on(target) (c == 0)", {"a", "b", "c"}),
        ("max by(target)(a) and on() group_right b", {"a", "b"}),
        # Keywords are case-insensitive; inf and nan are numbers.
        ("a AND b OR c UNLESS d > Inf < -NaN", {"a", "b", "c", "d"}),
        # Strings: label values and function arguments that look like names.
        ('label_replace(a > 0.5, "id_type", "transaction", "__name__", ".*")', {"a"}),
        ('a{job="pg_up", instance=~"rate(x)"} + b{le="0.5"}', {"a", "b"}),
        ("a{job='single quoted pg_up'} + `raw` * b", {"a", "b"}),
        (r'a{job="escaped \" quote pg_up"} + b', {"a", "b"}),
        # A name given as __name__ counts; one given as a regular expression cannot be known.
        ('{__name__="pg_up", target="db1"} + {__name__=~"pg_.*"}', {"pg_up"}),
        # Subqueries, comments, nested functions.
        (
            "max_over_time(rate(a_total[5m])[1h:5m]) # a comment naming pg_up\n + b",
            {"a_total", "b"},
        ),
        ("histogram_quantile(0.9, sum by (le) (rate(h_bucket[5m])))", {"h_bucket"}),
        (
            "time() - pg_exporter_collector_last_success_timestamp_seconds > 2700",
            {"pg_exporter_collector_last_success_timestamp_seconds"},
        ),
        ("vector(1)", set()),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
