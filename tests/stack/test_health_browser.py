"""The health page in a real browser: headless Chromium loads /health from the demo (its
database with every problem planted), the planted findings are visible with their fixes, and
hostile names planted in the same database run nothing. Screenshots at desktop and phone
widths are taken on the way; `make screenshots` writes them to docs/ (README shows them).
"""

import json
import os
import struct
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from exporter.demo.demo import DATABASE
from exporter.demo.workload import Planted
from support import wait_for
from support.chromium import Chromium
from support.demo import DemoProcess, running_demo
from support.pages import page_text

pytestmark = pytest.mark.any_major

# Where `make screenshots` asks for the committed copies (docs/); otherwise the test's own dir.
SCREENSHOTS_DIR = "HEALTH_SCREENSHOTS_DIR"
SIZES = {"desktop": (1280, 1800), "phone": (390, 1500)}
TITLE = "PostgreSQL health · pg-health-exporter"

# Planted after the screenshots: would they run as markup, the title would change.
TABLE = "<script>document.title='owned'</script>"
INDEX = "<img src=x onerror=document.title=7>\"'&\nz"
QUALIFIED_INDEX = 'public."<img src=x onerror=document.title=7>""\'&\nz"'


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    return width, height


def findings(demo: DemoProcess) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{demo.port}/health.json"
    with urllib.request.urlopen(url, timeout=10) as response:
        found: list[dict[str, Any]] = json.loads(response.read())["findings"]
    return found


def plant_hostile_index(demo: DemoProcess) -> None:
    """An unused index (larger than the demo's unused_min_bytes) on a table, both named with
    HTML's special characters, in the demo's own database."""
    conninfo = f"host=127.0.0.1 port={demo.postgres_port()} dbname={DATABASE} user=postgres"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        table, index = sql.Identifier(TABLE), sql.Identifier(INDEX)
        conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(table))
        conn.execute(sql.SQL("INSERT INTO {} SELECT generate_series(1, 20000)").format(table))
        conn.execute(sql.SQL("CREATE INDEX {} ON {} (id)").format(index, table))


def test_health_page_in_chromium(tmp_path: Path) -> None:
    chromium = Chromium()
    shots = Path(os.environ.get(SCREENSHOTS_DIR) or tmp_path)
    p = Planted()
    with running_demo() as demo:
        demo.wait_ready()
        url = f"http://127.0.0.1:{demo.port}/health"
        page = page_text(chromium.dump_dom(url))
        assert page.title == TITLE
        shown = page.shown  # the text outside the folded "checks passed"
        for fix in (
            f"DROP INDEX CONCURRENTLY public.{p.unused_index};",
            f"DROP INDEX CONCURRENTLY public.{p.duplicate_index};",
            f"DROP INDEX CONCURRENTLY public.{p.invalid_index};",
            f"CREATE INDEX CONCURRENTLY ON public.{p.unindexed_fk_table} (organization_id);",
            f"VACUUM (ANALYZE) public.{p.bloated_table};",
        ):
            assert fix in shown, fix
        assert f"public.{p.missing_index_table}" in shown
        assert "Copy" in shown  # each fix has its button
        for name, (width, height) in SIZES.items():
            path = shots / f"health-page-{name}.png"
            chromium.screenshot(url, path, width, height)
            assert png_size(path) == (width, height)
            assert path.stat().st_size > 50_000, "a blank page compresses to a few KiB"

        plant_hostile_index(demo)
        wait_for(
            lambda: any(f["object"] == QUALIFIED_INDEX for f in findings(demo)),
            timeout=60,
            what="the hostile index on /health.json (the demo polls every 15 s)",
        )
        page = page_text(chromium.dump_dom(url))
        # Nothing of the names ran or became an element: the title is the page's own.
        assert page.title == TITLE
        assert "img" not in page.tags
        assert page.tags.count("script") == 1
        assert QUALIFIED_INDEX in page.shown
        assert f"DROP INDEX CONCURRENTLY {QUALIFIED_INDEX};" in page.shown
        assert demo.interrupt() == 0
