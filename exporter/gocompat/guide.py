"""The tables of docs/migrating-from-postgres_exporter.md, generated from mapping.yaml.

python -m exporter.gocompat.guide [FILE]          rewrites the tables in the guide
python -m exporter.gocompat.guide --check [FILE]  exits 1 when they are stale (make lint)

The prose around the tables is written by hand; each table sits between two comment lines
that name it, and only what is between them is replaced.
"""

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from exporter.gocompat.mapping import Mapping, load_mapping

GUIDE = Path("docs/migrating-from-postgres_exporter.md")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str | None) -> str:
    return f"`{_cell(text)}`" if text else ""


def metrics_table(mapping: Mapping) -> str:
    lines = [
        "| theirs | their collector | ours | PromQL giving theirs from ours | compat | notes |",
        "|---|---|---|---|---|---|",
    ]
    for m in mapping.metrics:
        theirs = _code(m.go) + (" (after 0.11)" if m.releases == "later" else "")
        ours = _code(m.ours) if m.ours else "—"
        same = m.ours == m.go
        promql = _code(m.promql) if m.promql else ("(renamed)" if m.ours else "")
        notes = _cell(m.note or m.why)
        if m.labels_not_ours and m.conversion() is not None:
            missing = ", ".join(f"`{label}`" for label in m.labels_not_ours)
            notes = f"{notes} Their labels the switch lacks: {missing}.".strip()
        compat = "compat" if m.conversion() is not None else ""
        if same:  # published under their name whether the switch is on or not
            promql, compat = "(the same name)", "always"
        lines.append(f"| {theirs} | {m.collector} | {ours} | {promql} | {compat} | {notes} |")
    return "\n".join(lines)


def flags_table(mapping: Mapping) -> str:
    lines = ["| theirs | ours | notes |", "|---|---|---|"]
    for f in mapping.flags:
        ours = "—" if f.ours == "none" else _code(f.ours)
        lines.append(f"| {_code(f.go)} | {ours} | {_cell(f.note)} |")
    return "\n".join(lines)


def collectors_table(mapping: Mapping) -> str:
    lines = ["| theirs | ours | their flag accepted | notes |", "|---|---|---|---|"]
    for c in mapping.collectors:
        ours = _code(c.ours) if c.ours else "—"
        flag = f"`--[no-]collector.{c.go}`" if c.flag else ""
        lines.append(f"| `{c.go}` | {ours} | {flag} | {_cell(c.note)} |")
    return "\n".join(lines)


SECTIONS: dict[str, Callable[[Mapping], str]] = {
    "metrics": metrics_table,
    "collectors": collectors_table,
    "flags": flags_table,
}


def _markers(name: str) -> tuple[str, str]:
    return (
        f"<!-- generated from exporter/gocompat/mapping.yaml: {name} table -->",
        f"<!-- end of the generated {name} table -->",
    )


def regenerate(text: str, mapping: Mapping | None = None) -> str:
    """`text` with each generated table rendered anew; ValueError when a marker is missing."""
    mapping = mapping or load_mapping()
    for name, render in SECTIONS.items():
        begin, end = _markers(name)
        pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(end), re.DOTALL)
        match = pattern.search(text)
        if match is None:
            raise ValueError(f"the guide has no {name} table between {begin!r} and {end!r}")
        # Sliced in, not re.sub'd: a backslash in the table is text, not an escape.
        text = text[: match.start()] + f"{begin}\n{render(mapping)}\n{end}" + text[match.end() :]
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporter.gocompat.guide")
    parser.add_argument("file", nargs="?", type=Path, default=GUIDE)
    parser.add_argument("--check", action="store_true", help="exit 1 if the tables are stale")
    args = parser.parse_args(argv)
    current = args.file.read_text()
    fresh = regenerate(current)
    if args.check:
        if fresh != current:
            print(f"{args.file} is stale: run make migration-doc", file=sys.stderr)
            return 1
        return 0
    args.file.write_text(fresh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
