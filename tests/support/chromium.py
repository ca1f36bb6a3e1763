"""Headless Chromium (Debian's `chromium` package) as a user's browser: the DOM after the page
has loaded and run its scripts, and screenshots at a given window size. No driver: each call is
one `chromium --headless` run with a profile of its own, bounded by a deadline."""

import subprocess
import tempfile
from pathlib import Path

from support import tool

TIMEOUT_SECONDS = 90.0
# What works as root in a container: no sandbox, no GPU, nothing fetched in the background.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


class Chromium:
    def __init__(self) -> None:
        self.binary = tool("chromium", "chromium")

    def _run(self, *args: str) -> str:
        with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
            result = subprocess.run(
                [self.binary, *FLAGS, f"--user-data-dir={profile}", *args],
                capture_output=True,
                text=True,
                timeout=TIMEOUT_SECONDS,
                check=False,
            )
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    def dump_dom(self, url: str) -> str:
        """The document as serialised once the page has loaded (its scripts have run)."""
        return self._run("--dump-dom", url)

    def screenshot(self, url: str, path: Path, width: int, height: int) -> None:
        self._run(f"--screenshot={path}", f"--window-size={width},{height}", url)
        assert path.is_file(), f"chromium wrote no {path}"
