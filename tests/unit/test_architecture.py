"""The layers of exporter/ are enforced: import-linter passes, and catches a wrong import."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO

pytestmark = pytest.mark.any_major

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess[str]:
    """Run import-linter with the project's contracts on the `exporter` package found in
    `package_parent`."""
    return subprocess.run(
        [str(LINT_IMPORTS), str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=package_parent,
        env={"PYTHONPATH": str(package_parent), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_package_keeps_its_layers() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        # A lower layer reaching up: the store asking the collection jobs for something.
        ("exposition/store.py", "import exporter.collection.jobs", "Layers"),
        # The report reaching up into the web layer, which now sits above it.
        ("report/build.py", "import exporter.web.health", "Layers"),
        # The daemon loading the demo.
        ("app.py", "import exporter.demo.workload", "never loads the demo"),
        # The HTTP server (loaded by the daemon) loading the report's text formatting.
        ("web/server.py", "import exporter.report.format", "never loads the demo"),
    ],
)
def test_an_import_against_the_layers_is_caught(
    tmp_path: Path, module: str, bad_import: str, contract: str
) -> None:
    shutil.copytree(REPO / "exporter", tmp_path / "exporter")
    path = tmp_path / "exporter" / module
    path.write_text(path.read_text() + f"\n{bad_import}  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(contract in line for line in broken), result.stdout
    assert (
        bad_import.rsplit(maxsplit=1)[-1] in result.stdout
    )  # the report names the offending import
