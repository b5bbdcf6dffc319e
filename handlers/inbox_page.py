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

from handlers.base import allowed_methods

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

    def validate_absolute_path(self, root: str, absolute_path: str) -> str | None:
        """Tornado's checks, and a 404 for a path the file system cannot even name (a NUL byte,
        ``/assets/..%00/etc/passwd``) instead of the ValueError it raises."""
        if "\x00" in absolute_path:
            raise tornado.web.HTTPError(404)
        return super().validate_absolute_path(root, absolute_path)

    def write_error(self, status_code: int, **kwargs: object) -> None:
        """The API's JSON error shape: a missing (or forbidden) asset is a 404 like every other
        unknown path; anything else keeps its status, without a traceback."""
        self.set_header("Content-Type", "application/json; charset=utf-8")
        if status_code == 405:
            self.set_header("Allow", allowed_methods(self))
            self.finish(b'{"error": "method_not_allowed", "message": "This method is not allowed here."}')
        elif status_code in (403, 404):
            self.set_status(404)
            self.finish(b'{"error": "not_found", "message": "No such file."}')
        else:
            self.finish(b'{"error": "internal_error", "message": "The file could not be served."}')


routes = [
    (r"/()", InboxAssetHandler, {"path": str(STATIC_DIR), "default_filename": "index.html"}),
    (r"/assets/(.+)", InboxAssetHandler, {"path": str(STATIC_DIR)}),
]
