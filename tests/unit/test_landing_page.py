"""The landing page at `/` on a real store, without a database."""

import re
import time

import pytest

from exporter.config import parse_config
from exporter.exposition.selfmetrics import self_metrics
from exporter.exposition.store import Store
from exporter.status import CollectorStatus, Reachability, State
from exporter.web.html import LandingPage

pytestmark = pytest.mark.any_major


def rows(html: str) -> dict[str, str]:
    """Each collector's row, its cells joined by ` | `, by collector name."""
    found = {}
    for row in re.findall(r"<tr>(.*?)</tr>", html):
        cells = re.findall(r"<td>(.*?)</td>", row)
        if cells:
            found[cells[0]] = " | ".join(cells[1:])
    return found


def landing() -> LandingPage:
    from exporter.app import _landing  # noqa: PLC0415 (what the daemon serves)

    config = parse_config({"targets": [{"name": "pg", "dsn": "host=db.example dbname=app"}]})
    return _landing(config)


def test_collectors_that_have_not_run_say_so() -> None:
    store = Store(self_metrics=self_metrics)
    page = landing()
    # Before the first probe: the target and every collector, none run.
    before = rows(page.html(store))
    assert "not run yet" in before["tables"]
    assert " ms" not in before["tables"]

    store.publish_target("pg", Reachability(up=True, server_version="18.1", seq=1))
    ran = CollectorStatus(state=State.OK, last_success=time.time(), last_duration=0.0004)
    store.publish("pg", "tables", (), ran, max_age=60)
    # The target went down before `locks` ever ran: its 5 s connect wait is not a run.
    never = CollectorStatus(state=State.DOWN, last_duration=5.0, message="target is down")
    store.publish("pg", "locks", (), never, max_age=60)
    failed_later = CollectorStatus(
        state=State.DOWN, last_success=time.time(), last_duration=5.0, message="target is down"
    )
    store.publish("pg", "database", (), failed_later, max_age=60)

    after = rows(page.html(store))
    assert "0.4 ms" in after["tables"]  # real, and not rounded to 0
    assert "not run yet" in after["locks"]
    assert "5000 ms" not in after["locks"]
    assert "5000 ms" in after["database"]
    assert "not run yet" in after["connections"]  # enabled, still waiting for its first run
    assert "pgbouncer_pools" not in after  # not for this target's type
