"""The layout stays findable: docs/architecture.md names every package of ``server/``, each
package's docstring says what it owns and what it may import, and no product function grows
past what a reader can hold (the import contract itself is ``make lint``: import-linter)."""

from __future__ import annotations

import ast
import re

from tests.support.helpers import ROOT

PRODUCT = ("server", "handlers", "models", "config")
MAX_FUNCTION_LINES = 80


def server_packages() -> list[str]:
    return sorted(p.parent.name for p in (ROOT / "server").glob("*/__init__.py"))


def test_every_package_is_in_the_architecture_table_and_says_what_it_may_import() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    rows = dict(re.findall(r"^\| `server/(\w+)/` \| ([^|]+) \|", doc, flags=re.M))
    packages = server_packages()
    assert len(packages) == 12
    assert sorted(rows) == packages
    contract = (ROOT / ".importlinter").read_text()
    layers_block = contract.split("type = layers", 1)[1].split("layers =", 1)[1].split("\n\n", 1)[0]
    layered = {name.strip() for line in layers_block.splitlines() for name in line.split("|") if name.strip()}
    assert layered == set(packages), "every package sits in one layer of .importlinter"
    for name in packages:
        docstring = ast.get_docstring(ast.parse((ROOT / "server" / name / "__init__.py").read_text()))
        assert docstring, f"server/{name}/__init__.py has no docstring"
        assert "Entry object" in docstring, name
        assert "import" in docstring.split("Entry object", 1)[1], f"server/{name} does not say what it may import"


def test_no_product_function_is_longer_than_a_screen() -> None:
    long = []
    for top in PRODUCT:
        for path in (ROOT / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


def test_tests_mirror_the_packages() -> None:
    mirrored = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and list(p.glob("test_*.py"))}
    assert set(server_packages()) <= mirrored
    assert not list((ROOT / "tests").glob("test_*.py")), "tests live in the folder of the code they test"
