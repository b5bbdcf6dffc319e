"""The inbox page over plain HTTP: what is served, with which headers, and what ships in the package."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from handlers.inbox_page import CONTENT_SECURITY_POLICY, STATIC_DIR
from tests.support.helpers import ROOT, body_of
from tests.support.server import RunningServer


async def test_page_is_served_at_root_with_a_strict_csp(server: RunningServer) -> None:
    response = await server.client.get("/")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    csp = response.headers["Content-Security-Policy"]
    assert csp == CONTENT_SECURITY_POLICY
    directives = dict(d.split(" ", 1) for d in csp.split("; "))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"  # no inline scripts, no eval, no CDN
    assert directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert b'<script type="module" src="/assets/js/main.js">' in response.body


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/assets/js/main.js", "text/javascript"),
        ("/assets/js/live.js", "text/javascript"),
        ("/assets/inbox.css", "text/css"),
        ("/assets/icon.svg", "image/svg+xml"),
    ],
)
async def test_assets_are_served_with_the_same_headers(server: RunningServer, path: str, content_type: str) -> None:
    response = await server.client.get(path)
    assert response.code == 200
    assert response.headers["Content-Type"].startswith(content_type)
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["Etag"]


@pytest.mark.parametrize("path", ["/assets/nope.js", "/assets/../inbox_page.py", "/assets/%2e%2e/base.py"])
async def test_unknown_or_escaping_asset_paths_are_refused(server: RunningServer, path: str) -> None:
    response = await server.client.get(path)
    assert response.code in (403, 404)
    assert b"class " not in response.body  # no source code leaks
    if response.code == 404:
        assert body_of(response)["error"] == "not_found"


@pytest.mark.parametrize("path", ["/assets/..%00/etc/passwd", "/assets/js%00/main.js", "/assets/%00"])
async def test_asset_paths_the_file_system_cannot_name_are_a_json_404(server: RunningServer, path: str) -> None:
    response = await server.client.get(path)
    assert response.code == 404
    assert body_of(response)["error"] == "not_found"
    assert b"Traceback" not in response.body


def test_page_has_no_inline_code_the_csp_would_block() -> None:
    html = (STATIC_DIR / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline <script>"
    assert "<style" not in html
    assert not re.search(r"\sstyle=", html)
    assert not re.search(r"\son[a-z]+=", html), "inline event handler"


def test_scripts_never_build_html_from_strings() -> None:
    # Everything a customer sends is set with textContent; innerHTML-like sinks are banned.
    for script in (STATIC_DIR / "js").glob("*.js"):
        source = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in source, f"{script.name} uses {sink}"


@pytest.mark.slow
def test_static_files_ship_in_the_wheel(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("igsync-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    for path in STATIC_DIR.rglob("*"):
        if path.is_file():
            assert f"handlers/static/{path.relative_to(STATIC_DIR).as_posix()}" in shipped
