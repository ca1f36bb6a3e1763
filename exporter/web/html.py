"""The landing page at `/`: each target and the state of each of its collectors, and the links
to /metrics and the health page."""

from collections.abc import Mapping, Sequence
from html import escape

from exporter import __version__
from exporter.exposition.store import Store
from exporter.status import CollectorStatus, State, TargetStatus
from exporter.units import human_milliseconds

_PENDING = CollectorStatus(state=State.PENDING)


class LandingPage:
    """A small page listing targets and each collector's state."""

    def __init__(
        self,
        *,
        target_dsns: dict[str, str],
        collectors: Mapping[str, Sequence[str]] | None = None,
        metrics_path: str = "/metrics",
    ) -> None:
        self._dsns = target_dsns  # already stripped of passwords
        self._metrics_path = metrics_path  # --web.telemetry-path
        # Each target's enabled collectors: listed as "not run yet" until their first run.
        self._collectors = collectors or {}

    def html(self, store: Store) -> str:
        rows = []
        published = store.targets()
        for name in sorted({*self._dsns, *published}):
            status = published.get(name)
            if status is None:
                status = TargetStatus()
                state = "not probed yet"
            else:
                state = "up" if status.up else f"down: {status.message}"
            collectors = {c: _PENDING for c in self._collectors.get(name, ())}
            collectors.update(status.collectors)
            rows.append(
                f"<h2>{escape(name)} — {escape(state)}</h2>"
                f"<p><code>{escape(self._dsns.get(name, ''))}</code> "
                f"{escape(status.server_version)}</p><table>"
                "<tr><th>collector</th><th>state</th><th>series</th><th>duration</th>"
                "<th>errors</th><th>message</th></tr>"
            )
            for collector, c in sorted(collectors.items()):
                rows.append(
                    f"<tr><td>{escape(collector)}</td><td>{c.state}</td><td>{c.series}</td>"
                    f"<td>{_duration(c)}</td><td>{c.errors_total}</td>"
                    f"<td>{escape(c.message)}</td></tr>"
                )
            rows.append("</table>")
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>pg-health-exporter</title>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 10px;"
            "text-align:left}</style></head><body>"
            f"<h1>pg-health-exporter {__version__}</h1>"
            f"<p><a href='{escape(self._metrics_path)}'>Metrics</a> · "
            "<a href='/health'>Health page</a>: the findings and their fixes "
            "(<a href='/health.json'>JSON</a>) · <a href='/healthz'>Liveness</a></p>"
            + "".join(rows)
            + "</body></html>"
        )


def _duration(status: CollectorStatus) -> str:
    # A collector that has not run has no duration: 0 ms would claim a run, and a target down
    # from the start would show its connect timeout (5,000 ms) for queries never sent.
    if status.state is State.PENDING or (
        status.state is State.DOWN and status.last_success is None
    ):
        return "not run yet"
    return human_milliseconds(status.last_duration)
