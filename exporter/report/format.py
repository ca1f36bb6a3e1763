"""A report as text for a terminal, as Markdown for a pull request comment, or as JSON."""

import json
import os
from collections.abc import Sequence
from typing import TextIO

from exporter.report import checks
from exporter.report.findings import Finding, Report, Severity

FORMATS = ("text", "markdown", "json")

_ANSI = {
    Severity.CRITICAL: "\033[1;31m",
    Severity.WARNING: "\033[33m",
    Severity.INFO: "\033[36m",
    Severity.OK: "\033[32m",
}
_RESET = "\033[0m"
# Long statement texts are cut in tables; the JSON form has them as collected.
_QUERY_WIDTH = 70


def use_colour(stream: TextIO) -> bool:
    """Colour only for a terminal, and never when NO_COLOR is set (no-color.org)."""
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def format_report(report: Report, output_format: str, *, colour: bool = False) -> str:
    if output_format == "json":
        return format_json(report)
    if output_format == "markdown":
        return format_markdown(report)
    if output_format == "text":
        return format_text(report, colour=colour)
    raise ValueError(f"unknown format {output_format!r}; one of {', '.join(FORMATS)}")


def format_json(report: Report) -> str:
    return json.dumps(report.as_json(), indent=2, allow_nan=False) + "\n"


def _headline(report: Report) -> str:
    counts = report.counts()
    parts = [f"{counts[s]} {s.value}" for s in Severity]
    return ", ".join(parts) + f"; exit code {report.exit_code}"


def _targets_line(report: Report) -> list[str]:
    lines = []
    for t in report.targets:
        if t.up:
            where = f"; databases: {', '.join(t.databases)}" if t.databases else ""
            version = f"{t.product} {t.server_version or '(version unknown)'}"
            lines.append(f"target {t.name}: {version}{where}")
        else:
            lines.append(f"target {t.name}: DOWN ({t.message})")
    return lines


def _by_check(findings: Sequence[Finding]) -> list[tuple[str, list[Finding]]]:
    """Findings grouped by check, checks in report order, each group most severe first."""
    groups: dict[str, list[Finding]] = {}
    for finding in sorted(findings, key=lambda f: (checks.position(f.check), checks.sort_key(f))):
        groups.setdefault(finding.check, []).append(finding)
    return list(groups.items())


def _columns(findings: Sequence[Finding], several_targets: bool) -> list[tuple[str, list[str]]]:
    """The table columns of one check's findings: only those that say something."""
    columns: list[tuple[str, list[str]]] = [("severity", [f.severity.value for f in findings])]
    if several_targets:
        columns.append(("target", [f.target for f in findings]))
    for title, cells in (
        ("database", [f.database or "" for f in findings]),
        ("object", [f.object or "" for f in findings]),
    ):
        if any(cells):
            columns.append((title, cells))
    columns.append(("finding", [f.summary for f in findings]))
    queries = [_short(str(f.values.get("query") or "")) for f in findings]
    if any(queries):
        columns.append(("query", queries))
    return columns


def _short(text: str, width: int = _QUERY_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_text(report: Report, *, colour: bool = False, include_ok: bool = True) -> str:
    """Aligned tables per check; the passed checks as one line each at the end."""

    def paint(severity: Severity, text: str) -> str:
        return f"{_ANSI[severity]}{text}{_RESET}" if colour else text

    several = len(report.targets) > 1
    lines = [
        f"PostgreSQL health report, {report.generated_at:%Y-%m-%d %H:%M} UTC",
        *_targets_line(report),
        _headline(report),
    ]
    problems = [f for f in report.findings if f.severity is not Severity.OK]
    for check, findings in _by_check(problems):
        lines += ["", checks.title(check)]
        columns = _columns(findings, several)
        widths = [max(len(title), *(len(c) for c in cells)) for title, cells in columns]
        header = "  ".join(
            title.upper().ljust(w) for (title, _), w in zip(columns, widths, strict=True)
        )
        lines.append("  " + header.rstrip())
        for row, finding in enumerate(findings):
            cells = []
            for index, ((_, values), width) in enumerate(zip(columns, widths, strict=True)):
                cell = values[row].ljust(width)
                cells.append(paint(finding.severity, cell) if index == 0 else cell)
            lines.append("  " + "  ".join(cells).rstrip())
        for finding in findings:
            if finding.fix:
                label = finding.object or finding.database or finding.target
                lines.append(f"  fix {label}: {finding.fix}")
        # Advice is often the same for every finding of a check: said once.
        for advice in dict.fromkeys(
            f.advice for f in findings if f.advice and not f.fix and f.severity is not Severity.INFO
        ):
            lines.append(f"  do: {advice}")
    if include_ok:
        passed = [f for f in report.findings if f.severity is Severity.OK]
        if passed:
            lines += ["", "Passed"]
            for finding in passed:
                where = f" [{finding.database}]" if finding.database else ""
                who = f"{finding.target}: " if several else ""
                title = f"{who}{checks.title(finding.check)}{where}"
                lines.append(f"  {paint(Severity.OK, 'ok')}  {title}: {finding.summary}")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Text safe in a Markdown table cell: no pipes or line breaks."""
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`" if text and "`" not in text else _cell(text)


def format_markdown(report: Report) -> str:
    """A pull request comment: the headline, a table per check, the fixes as one SQL block."""
    several = len(report.targets) > 1
    lines = ["### PostgreSQL health report", "", f"**{_headline(report)}**", ""]
    lines += [f"- {line}" for line in _targets_line(report)]
    problems = [f for f in report.findings if f.severity is not Severity.OK]
    for check, findings in _by_check(problems):
        lines += ["", f"#### {checks.title(check)}", ""]
        columns = _columns(findings, several)
        lines.append("| " + " | ".join(title for title, _ in columns) + " |")
        lines.append("|" + "---|" * len(columns))
        for row, finding in enumerate(findings):
            cells = []
            for title, values in columns:
                value = values[row]
                if title == "severity":
                    cells.append(f"**{value}**" if finding.severity is Severity.CRITICAL else value)
                elif title in ("object", "query"):
                    cells.append(_code(value))
                else:
                    cells.append(_cell(value))
            lines.append("| " + " | ".join(cells) + " |")
        for advice in dict.fromkeys(
            f.advice for f in findings if f.advice and not f.fix and f.severity is not Severity.INFO
        ):
            lines += ["", f"- {_cell(advice)}"]
    fixes = list(dict.fromkeys(f.fix for f in problems if f.fix))
    if fixes:
        lines += ["", "#### Fixes", "", "```sql", *fixes, "```"]
    passed = [f for f in report.findings if f.severity is Severity.OK]
    if passed:
        lines += ["", f"<details><summary>{len(passed)} checks passed</summary>", ""]
        lines += ["| check | database | result |", "|---|---|---|"]
        for finding in passed:
            check = checks.title(finding.check) + (f" ({finding.target})" if several else "")
            lines.append(
                f"| {check} | {_cell(finding.database or '')} | {_cell(finding.summary)} |"
            )
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"
