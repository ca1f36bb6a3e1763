"""The landing page at `/`: each target and the state of each of its collectors, and the links
to /metrics and the health page."""

from html import escape

from exporter import __version__
from exporter.exposition.store import Store


class LandingPage:
    """A small page listing targets and each collector's state."""

    def __init__(self, *, target_dsns: dict[str, str]) -> None:
        self._dsns = target_dsns  # already stripped of passwords

    def html(self, store: Store) -> str:
        rows = []
        for name, status in sorted(store.targets().items()):
            state = "up" if status.up else f"down: {status.message}"
            rows.append(
                f"<h2>{escape(name)} — {escape(state)}</h2>"
                f"<p><code>{escape(self._dsns.get(name, ''))}</code> "
                f"{escape(status.server_version)}</p><table>"
                "<tr><th>collector</th><th>state</th><th>series</th><th>duration</th>"
                "<th>errors</th><th>message</th></tr>"
            )
            for collector, c in sorted(status.collectors.items()):
                rows.append(
                    f"<tr><td>{escape(collector)}</td><td>{c.state}</td><td>{c.series}</td>"
                    f"<td>{c.last_duration * 1000:.1f} ms</td><td>{c.errors_total}</td>"
                    f"<td>{escape(c.message)}</td></tr>"
                )
            rows.append("</table>")
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>pg-health-exporter</title>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 10px;"
            "text-align:left}</style></head><body>"
            f"<h1>pg-health-exporter {__version__}</h1><p><a href='/metrics'>Metrics</a> · "
            "<a href='/health'>Health page</a>: the findings and their fixes "
            "(<a href='/health.json'>JSON</a>) · <a href='/healthz'>Liveness</a></p>"
            + "".join(rows)
            + "</body></html>"
        )
