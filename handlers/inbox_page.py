"""The live inbox page: ``GET /`` and its static assets under ``/assets/``, with strict security headers.

The page is plain files in ``handlers/static/`` (HTML, CSS, ES modules; no build step, no CDN).
It talks to igsync only through the public API (REST with a Bearer header, ``/ws``), so this
module just serves files. Every response carries a Content-Security-Policy that allows
scripts and styles from this origin only, no inline code, and no framing; images and media
may also come from ``blob:`` (our ``/media/{id}`` copies, fetched with the Bearer header) and
from ``https:`` (Instagram's CDN links, ``media_url``, when no copy exists yet).
"""

from __future__ import annotations

from pathlib import Path

import tornado.web

STATIC_DIR = Path(__file__).resolve().parent / "static"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: https:",
        "media-src 'self' blob: https:",
        # 'self' covers ws:/wss: to this host in CSP Level 3 (the WebSocket at /ws).
        "connect-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    # Media and avatars load from Instagram's CDN: tell it nothing about this server.
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}


class InboxAssetHandler(tornado.web.StaticFileHandler):
    """Static files with the page's security headers; revalidated on every load (ETag), so a
    deployment is picked up at once without a build step that versions file names."""

    def set_default_headers(self) -> None:
        """The page's security headers (CSP, no framing) on every asset."""
        for name, value in SECURITY_HEADERS.items():
            self.set_header(name, value)

    def set_extra_headers(self, path: str) -> None:
        """Assets are revalidated on every load, so a deploy is seen at once."""
        self.set_header("Cache-Control", "no-cache")

    def write_error(self, status_code: int, **kwargs: object) -> None:
        # A missing asset answers the API's JSON error shape, like every other unknown path.
        """A missing asset is a JSON 404, like every other unknown path."""
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(b'{"error": "not_found", "message": "No such file."}')


routes = [
    (r"/()", InboxAssetHandler, {"path": str(STATIC_DIR), "default_filename": "index.html"}),
    (r"/assets/(.+)", InboxAssetHandler, {"path": str(STATIC_DIR)}),
]
