"""The health page at /health (and its JSON at /health.json): the report on what /metrics serves.

The report's checks judge the store's current exposition, as `pg-health-exporter report` judges
one collection: no SQL on a request. A page is built at most once per store change: the store's
`Snapshot` is a new object after every change (and when a part expires), so the judgement and
its HTML and JSON forms are cached against it. The JSON is the document `report --format json`
prints (docs/report.schema.json). Every text that comes from a database (object names, database
names, messages, statement texts) is escaped: names are whatever the database allows.
"""

import datetime as dt
import json
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from html import escape

from exporter import __version__
from exporter.config import Config
from exporter.exposition.store import Snapshot, Store
from exporter.report import checks
from exporter.report.build import judge_collected
from exporter.report.checks.base import human_bytes, human_seconds, percent
from exporter.report.findings import Finding, Report, Severity, TargetInfo, Value
from exporter.report.samples import Samples
from exporter.status import CollectorStatus, State, TargetStatus
from exporter.targets import ServerFacts
from exporter.units import human_milliseconds

# What the server knows about each target (the monitoring role leaves its own statements out).
Facts = Callable[[], Mapping[str, ServerFacts]]

# The report's own thresholds each check judges by (checks.base.Thresholds); the collector
# params a check judges by are in its registry entry (Check.params). A unit test keeps this in
# step with Thresholds.
OWN_THRESHOLDS: Mapping[str, tuple[str, ...]] = {
    "wraparound": ("wraparound_warning", "wraparound_critical"),
    "sequences": ("sequence_warning", "sequence_critical"),
    "connections": ("connections_warning", "connections_critical"),
    "idle_in_transaction": (
        "idle_in_transaction_warning_seconds",
        "idle_in_transaction_critical_seconds",
    ),
    "pool": (
        "pool_wait_warning_seconds",
        "pool_wait_critical_seconds",
        "connections_warning",
        "connections_critical",
    ),
    "cache_hit_heap": ("cache_hit_ratio", "cache_hit_min_blocks"),
    "cache_hit_index": ("cache_hit_ratio", "cache_hit_min_blocks"),
    "statements": ("slow_statement_mean_seconds", "top_statements"),
    "analyze": ("analyze_min_modifications", "analyze_modified_ratio"),
}

# A few consistent snapshots in a row are enough; a store changing faster than that is judged
# with statuses a little newer than its samples.
_CONSISTENT_READS = 3
_PROBLEMS = (Severity.CRITICAL, Severity.WARNING, Severity.INFO)
# A configured collector that has not finished a run on the target yet.
_PENDING = CollectorStatus(state=State.PENDING)


def thresholds_of(check: str, report: Report) -> dict[str, float]:
    """The thresholds, by name as in the report's `thresholds`, that `check` judges by."""
    names = [*OWN_THRESHOLDS.get(check, ()), *(f"{c}.{p}" for c, p in _params(check))]
    return {name: report.thresholds[name] for name in names if name in report.thresholds}


def _params(check: str) -> tuple[tuple[str, str], ...]:
    return checks.CHECKS[checks.position(check)].params


def judge_store(
    config: Config, snapshot: Snapshot, statuses: Mapping[str, TargetStatus], facts: Facts
) -> Report:
    """The report on one version of the store: its exposition, judged with its statuses."""
    samples = Samples.parse(snapshot.body.decode())
    return judge_collected(config, samples, statuses, facts())


class _Version:
    """One store version's report, and its HTML and JSON forms, each made on first request."""

    def __init__(
        self, snapshot: Snapshot, report: Report, page: Callable[[], str], document: str
    ) -> None:
        # Weakly: a version replaced in the store must not keep its body (MBs at scale) alive.
        self.snapshot = weakref.ref(snapshot)
        self.report = report
        self._page = page
        self._html: bytes | None = None
        self.json = document.encode()

    def html(self) -> bytes:
        if self._html is None:
            self._html = self._page().encode()
        return self._html


class HealthPage:
    """The report on the store's current data, cached per store version."""

    def __init__(self, config: Config, *, facts: Facts = dict) -> None:
        self._config = config
        self._facts = facts
        self._lock = threading.Lock()  # one build at a time; the others wait for it
        self._version: _Version | None = None
        self.builds = 0  # how many times a report was judged (tests: once per store version)

    def report(self, store: Store) -> Report:
        return self._current(store).report

    def html(self, store: Store) -> bytes:
        version = self._current(store)
        with self._lock:
            return version.html()

    def json(self, store: Store) -> bytes:
        return self._current(store).json

    def _current(self, store: Store) -> _Version:
        with self._lock:
            snapshot, statuses = _consistent(store)
            version = self._version
            if version is None or version.snapshot() is not snapshot:
                report = judge_store(self._config, snapshot, statuses, self._facts)
                document = json.dumps(report.as_json(), indent=2, allow_nan=False) + "\n"
                version = _Version(
                    snapshot,
                    report,
                    lambda: render_page(report, statuses, self._config),
                    document,
                )
                self._version = version
                self.builds += 1
            return version


def _consistent(store: Store) -> tuple[Snapshot, dict[str, TargetStatus]]:
    """The store's snapshot and the statuses of the same version (no change in between)."""
    snapshot = store.snapshot()
    statuses = store.targets()
    for _ in range(_CONSISTENT_READS):
        again = store.snapshot()
        if again is snapshot:
            break
        snapshot, statuses = again, store.targets()
    return snapshot, statuses


# -- the page ---------------------------------------------------------------------------------


def render_page(report: Report, statuses: Mapping[str, TargetStatus], config: Config) -> str:
    counts = report.counts()
    times = [
        c.last_success
        for status in statuses.values()
        for c in status.collectors.values()
        if c.last_success is not None
    ]
    data = (
        f"Data collected {_span(min(times), max(times))}"
        if times
        else "No collector has finished a run yet"
    )
    body = [
        "<header>",
        "<nav><a href='/'>Overview</a><a href='/metrics'>Metrics</a>"
        "<a href='/health.json'>JSON</a></nav>",
        "<h1>PostgreSQL health</h1>",
        f"<p class='meta'>{data}; judged {_time(report.generated_at.timestamp())}. "
        "No SQL runs for this page: it judges what <a href='/metrics'>/metrics</a> serves.</p>",
        "<ul class='counts'>",
        *(
            f"<li class='{s.value}'><b>{counts[s]}</b> {s.value}</li>"
            for s in (*_PROBLEMS, Severity.OK)
        ),
        "</ul>",
        "</header><main>",
    ]
    for target in report.targets:
        mine = [f for f in report.findings if f.target == target.name]
        body += _target(report, target, mine, statuses.get(target.name, TargetStatus()), config)
    body.append(
        f"</main><footer>pg-health-exporter {escape(__version__)} · the checks and thresholds: "
        "docs/report.md</footer>"
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>PostgreSQL health · pg-health-exporter</title><style>{_CSS}</style></head>"
        "<body>" + "".join(body) + f"<script>{_COPY_JS}</script></body></html>"
    )


def _target(
    report: Report,
    target: TargetInfo,
    findings: Sequence[Finding],
    status: TargetStatus,
    config: Config,
) -> list[str]:
    state = "up" if target.up else "down"
    version = f"{target.product} {target.server_version}" if target.server_version else ""
    out = [
        f"<section class='target' id='{_anchor(target.name)}'>"
        f"<h2>{escape(target.name)} <span class='state {state}'>"
        f"{state}</span></h2>",
        f"<p class='meta'>{escape(version)}",
    ]
    if target.databases:
        out.append(
            " · databases: " + ", ".join(f"<code>{escape(d)}</code>" for d in target.databases)
        )
    out.append("</p>")
    if not target.up:
        out.append(f"<p class='down'>{escape(target.message or 'unknown error')}</p>")
    if not any(c.last_success for c in status.collectors.values()):
        out.append("<p class='meta'>Waiting for the first collection.</p>")
    out += _by_database(findings)
    number = 0
    for severity in _PROBLEMS:
        these = [f for f in findings if f.severity is severity]
        if not these:
            continue
        out.append(
            f"<h3 class='sev {severity.value}'>{severity.value.capitalize()} ({len(these)})</h3>"
        )
        for finding in these:
            number += 1
            out += _finding(report, finding, f"{_anchor(target.name)}-{number}")
    passed = [f for f in findings if f.severity is Severity.OK]
    if passed:
        out.append(f"<details><summary>{len(passed)} checks passed</summary><ul class='passed'>")
        for finding in passed:
            where = (
                f" <span class='db'>{escape(finding.database)}</span>" if finding.database else ""
            )
            out.append(
                f"<li><b>{escape(checks.title(finding.check))}</b>{where}: "
                f"{escape(finding.summary)}</li>"
            )
        out.append("</ul></details>")
    out += _collectors(status, target, config)
    out.append("</section>")
    return out


def _by_database(findings: Sequence[Finding]) -> list[str]:
    """How many findings of each severity each database has ("server" for the rest)."""
    rows: dict[str, dict[Severity, int]] = {}
    for finding in findings:
        counts = rows.setdefault(finding.database or "", dict.fromkeys(Severity, 0))
        counts[finding.severity] += 1
    if not rows:
        return []
    out = [
        "<div class='scroll'><table class='dbs'><tr><th>database</th>",
        *(f"<th class='{s.value}'>{s.value}</th>" for s in (*_PROBLEMS, Severity.OK)),
        "</tr>",
    ]
    for database, counts in sorted(rows.items()):
        name = f"<code>{escape(database)}</code>" if database else "<i>server</i>"
        out.append(f"<tr><td>{name}</td>")
        out += [
            f"<td class='n{' ' + s.value if counts[s] else ''}'>{counts[s]}</td>"
            for s in (*_PROBLEMS, Severity.OK)
        ]
        out.append("</tr>")
    out.append("</table></div>")
    return out


def _finding(report: Report, finding: Finding, anchor: str) -> list[str]:
    sev = finding.severity.value
    where = (
        f"<span class='db' title='database'>{escape(finding.database)}</span>"
        if finding.database
        else ""
    )
    out = [
        f"<article class='finding f-{sev}' id='{anchor}'>",
        f"<div class='head'><span class='badge {sev}'>{sev}</span>"
        f"<span class='check'>{escape(checks.title(finding.check))}</span>{where}</div>",
    ]
    if finding.object:
        out.append(f"<p class='object'><code>{escape(finding.object)}</code></p>")
    out.append(f"<p class='summary'>{escape(finding.summary)}</p>")
    if finding.detail:
        out.append(f"<p class='detail'>{escape(finding.detail)}</p>")
    shown = [(k, v) for k, v in finding.values.items() if k != "query"]
    if shown:
        out.append("<dl class='values'>")
        out += [f"<div><dt>{escape(k)}</dt><dd>{escape(_value(k, v))}</dd></div>" for k, v in shown]
        out.append("</dl>")
    query = finding.values.get("query")
    if query:
        out.append(f"<pre class='query'>{escape(str(query))}</pre>")
    limits = thresholds_of(finding.check, report)
    if limits:
        out.append(
            "<p class='limits'>Thresholds: "
            + ", ".join(
                f"<code>{escape(k)}</code> {escape(_threshold(k, v))}" for k, v in limits.items()
            )
            + "</p>"
        )
    if finding.fix:
        out.append(
            f"<div class='fix'><pre id='{anchor}-fix'>{escape(finding.fix)}</pre>"
            f"<button type='button' class='copy' data-copy='{anchor}-fix'>Copy</button></div>"
        )
    if finding.advice:
        out.append(f"<p class='advice'>{escape(finding.advice)}</p>")
    out.append("</article>")
    return out


def _collectors(status: TargetStatus, target: TargetInfo, config: Config) -> list[str]:
    """Each collector's state on the target; why one cannot run; those not run yet."""
    collectors = dict(status.collectors)
    for collector in config.catalogue:
        spec = collector.spec
        if spec.enabled and spec.target_type == target.type and collector.name not in collectors:
            collectors[collector.name] = _PENDING
    if not collectors:
        return []
    out = [
        "<h3>Collectors</h3><div class='scroll'><table class='collectors'>"
        "<tr><th>collector</th><th>state</th><th>last success</th><th>duration</th>"
        "<th>series</th><th>errors</th><th>why</th></tr>"
    ]
    for name, c in sorted(collectors.items()):
        last = _time(c.last_success) if c.last_success is not None else "never"
        out.append(
            f"<tr><td>{escape(name)}</td><td><span class='state {c.state.value}'>"
            f"{c.state.value}</span></td><td>{last}</td>"
            f"<td class='n'>{human_milliseconds(c.last_duration)}</td><td class='n'>{c.series}</td>"
            f"<td class='n'>{c.errors_total}</td><td>{escape(c.message)}</td></tr>"
        )
    out.append("</table></div>")
    return out


# -- numbers and times ------------------------------------------------------------------------


def _value(name: str, value: Value) -> str:
    """A finding's number as a person reads it, by what its name says it measures."""
    if name.endswith("_timestamp_seconds"):
        # No timestamp: it never happened (a vacuum, a statistics reset).
        return _utc(float(value)) if isinstance(value, int | float) and value else "never"
    if value is None:
        return "unknown"
    if isinstance(value, str):
        return value
    if name.endswith("_bytes"):
        return human_bytes(value)
    if name.endswith("_seconds"):
        return human_seconds(value)
    if name.endswith("ratio") and value <= 1:
        return percent(value)
    return _number(value)


def _threshold(name: str, value: float) -> str:
    """A threshold as docs/report.md gives it: ratios as fractions, units made readable."""
    if name.endswith("_bytes"):
        return human_bytes(value)
    if name.endswith("_seconds"):
        return human_seconds(value)
    return _number(value)


def _number(value: float) -> str:
    if float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:,.3g}"


def _utc(timestamp: float) -> str:
    return f"{dt.datetime.fromtimestamp(timestamp, dt.UTC):%Y-%m-%d %H:%M:%S} UTC"


def _time(timestamp: float) -> str:
    """A <time> element (HTML, not to be escaped again)."""
    moment = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    iso = moment.isoformat(timespec="seconds").replace("+00:00", "Z")
    return f"<time datetime='{iso}'>{_utc(timestamp)}</time>"


def _span(first: float, last: float) -> str:
    if last - first < 1:
        return f"at {_time(last)}"
    return f"from {_time(first)} to {_time(last)}"


def _anchor(name: str) -> str:
    # Target names are [A-Za-z0-9][A-Za-z0-9_.:-]* (config validation): safe in an id.
    return "t-" + name.replace(".", "-").replace(":", "-")


_CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--bg:#f6f8fa;
--critical:#b42318;--critical-bg:#fef3f2;--warning:#93610b;--warning-bg:#fffaeb;
--info:#175cd3;--info-bg:#eff8ff;--ok:#067647;--ok-bg:#ecfdf3;
--mono:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
background:var(--bg)}
header,main,footer{max-width:980px;margin:0 auto;padding:0 16px}
header{padding-top:12px}
nav a{margin-right:16px;color:var(--info);text-decoration:none;font-size:14px}
h1{font-size:26px;margin:8px 0 4px}
h2{font-size:20px;margin:0 0 2px;display:flex;align-items:center;gap:10px}
h3{font-size:16px;margin:20px 0 8px}
.meta{color:var(--muted);font-size:13px;margin:2px 0 8px}
.counts{list-style:none;padding:0;margin:12px 0 16px;display:flex;flex-wrap:wrap;gap:8px}
.counts li{padding:6px 14px;border-radius:8px;background:#fff;border:1px solid var(--line);
font-size:14px}
.counts b{font-size:20px;margin-right:4px}
.critical{color:var(--critical)}.warning{color:var(--warning)}.info{color:var(--info)}
.ok{color:var(--ok)}
.counts li.critical{background:var(--critical-bg)}.counts li.warning{background:var(--warning-bg)}
.counts li.info{background:var(--info-bg)}.counts li.ok{background:var(--ok-bg)}
.target{background:#fff;border:1px solid var(--line);border-radius:10px;padding:16px;
margin-bottom:20px}
.state{font-size:12px;font-weight:600;padding:1px 8px;border-radius:10px;background:var(--bg);
color:var(--muted)}
.state.up,.state.ok{background:var(--ok-bg);color:var(--ok)}
.state.down,.state.error{background:var(--critical-bg);color:var(--critical)}
.state.unavailable{background:var(--info-bg);color:var(--info)}
.down{color:var(--critical)}
.finding{border:1px solid var(--line);border-left:4px solid var(--line);border-radius:8px;
padding:10px 14px;margin:10px 0;background:#fff}
.f-critical{border-left-color:var(--critical)}
.f-warning{border-left-color:#dc6803}.f-info{border-left-color:var(--info)}
.head{display:flex;flex-wrap:wrap;align-items:center;gap:8px}
.badge{font-size:11px;font-weight:700;text-transform:uppercase;letter-spacing:.04em;
padding:1px 7px;border-radius:4px}
.badge.critical{background:var(--critical-bg)}.badge.warning{background:var(--warning-bg)}
.badge.info{background:var(--info-bg)}
.check{font-weight:600}
.db{font-size:12px;padding:0 7px;border-radius:4px;background:var(--bg);
border:1px solid var(--line);font-family:var(--mono);overflow-wrap:anywhere}
.finding p{margin:6px 0}
.object code{font-size:14px;font-weight:600}
code,pre{font-family:var(--mono);overflow-wrap:anywhere}
.detail,.advice,.limits{font-size:13px;color:var(--muted)}
.values{display:flex;flex-wrap:wrap;gap:4px 18px;margin:6px 0;font-size:13px}
.values div{display:flex;gap:6px}.values dt{color:var(--muted)}.values dd{margin:0;font-weight:600}
pre{white-space:pre-wrap;margin:0;font-size:13px}
.query{background:var(--bg);padding:6px 8px;border-radius:6px;max-height:9em;overflow:auto}
.fix{display:flex;align-items:flex-start;gap:8px;background:#0d1117;border-radius:6px;
padding:8px 10px;margin:8px 0}
.fix pre{color:#e6edf3;flex:1}
.copy{flex:none;font:inherit;font-size:12px;padding:3px 10px;border-radius:5px;cursor:pointer;
border:1px solid #8b949e;background:#21262d;color:#e6edf3}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{padding:4px 10px;text-align:left;border-bottom:1px solid var(--line);vertical-align:top}
th{color:var(--muted);font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums}
details{margin:14px 0}summary{cursor:pointer;font-weight:600;color:var(--ok)}
.passed{font-size:13px;padding-left:18px}
footer{color:var(--muted);font-size:12px;padding-bottom:24px}
@media (max-width:600px){body{font-size:14px}h1{font-size:22px}header,main,footer{padding:0 8px}
.target{padding:10px}.finding{padding:8px 10px}th,td{padding:4px 6px}
.counts{gap:6px}.counts li{padding:4px 9px;font-size:13px}.counts b{font-size:17px}}
"""

# The copy buttons: the clipboard API where the page is a secure context (HTTPS, localhost),
# otherwise the selection and execCommand.
_COPY_JS = """
document.addEventListener('click',function(e){
var b=e.target.closest('button.copy');if(!b)return;
var pre=document.getElementById(b.getAttribute('data-copy'));var text=pre.textContent;
function done(){b.textContent='Copied';setTimeout(function(){b.textContent='Copy';},1500);}
function select(){var r=document.createRange();r.selectNodeContents(pre);
var s=getSelection();s.removeAllRanges();s.addRange(r);
try{document.execCommand('copy');done();}catch(_){}}
if(navigator.clipboard&&window.isSecureContext){navigator.clipboard.writeText(text).then(done,select);}
else{select();}
});
"""
