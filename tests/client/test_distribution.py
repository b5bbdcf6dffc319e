"""``igsync-client`` is its own distribution: installable beside any service without the server."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.helpers import ROOT

CLIENT = ROOT / "igsync_client"


def test_the_wheel_requires_requests_only_and_ships_its_type_marker(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp_path), str(CLIENT)],
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("igsync_client-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert requires == ["requests>=2.31"]
    assert "Name: igsync-client" in metadata
    assert "igsync_client/py.typed" in names
    # Nothing of the server rides along.
    assert {n.split("/", 1)[0] for n in names if not n.endswith((".dist-info/", ".dist-info"))} <= {
        "igsync_client",
        wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info",
    }


def test_the_client_imports_nothing_but_the_standard_library_and_requests() -> None:
    imported: set[str] = set()
    for path in (CLIENT / "src" / "igsync_client").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    foreign = imported - set(sys.stdlib_module_names) - {"requests", "igsync_client", "__future__"}
    assert foreign == set()
    assert "requests" in imported  # the check above would pass on an empty directory too
