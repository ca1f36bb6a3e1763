"""A webhook receiver for the docker-compose stack's Alertmanager: prints every notification.

Alertmanager POSTs its webhook payload (version 4: status, groupLabels, alerts[] with labels
and annotations); this prints one line per alert, then the payload as one line of JSON, so
`docker compose logs -f webhook` shows what would have been sent to a pager. Standard library
only, so it runs on the stock python image. Listens on port 8080, or $PORT.
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        try:
            payload = json.loads(body)
        except json.JSONDecodeError:
            self.send_error(400, "expected Alertmanager's JSON payload")
            return
        for alert in payload.get("alerts", []):
            labels = alert.get("labels", {})
            summary = alert.get("annotations", {}).get("summary", "")
            print(
                f"{alert.get('status', '?')}: {labels.get('alertname', '?')}"
                f" [{labels.get('severity', '?')}] {summary}",
                flush=True,
            )
        print(json.dumps(payload, sort_keys=True), flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        # The notifications are the output; one access-log line per POST is noise.
        pass


def main() -> None:
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer(("", port), Receiver)
    print(f"webhook receiver listening on :{port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
