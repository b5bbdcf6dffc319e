"""One bounded download: size cap while streaming, content type checked against what was asked.

:class:`Downloader` fetches a CDN link with Tornado's ``AsyncHTTPClient`` into a spooled
temporary file; :func:`accept_content_type` decides from the header and the first bytes
whether the answer is what the attachment type allows (active content never is). A failure is
a :class:`DownloadError` whose reason says whether to retry.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import IO

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.simple_httpclient import HTTPTimeoutError

from server.graph.client import OutboundHttp
from server.media.targets import (
    AD_CREATIVE,
)

# Bytes of one download kept in memory before the spool moves to a temporary file.
SPOOL_MEMORY_BYTES = 1024 * 1024
# The HTTP client's own hard limit sits this far above the cap, so that our streaming
# check (which knows *why*) normally sees the overflow before the client cuts the line.
CLIENT_LIMIT_MARGIN_BYTES = 1024 * 1024
# DownloadError reasons for a link the CDN refused for good (403/404/410).
EXPIRED_LINK = "expired_link_"
# Content types a CDN may answer per attachment type. ``None``: anything not rejected.
ACCEPTED_CONTENT_TYPES: dict[str, tuple[str, ...] | None] = {
    "image": ("image/",),
    "video": ("video/",),
    # Instagram voice notes are MP4/AAC containers, served as audio/* or video/mp4.
    "audio": ("audio/", "video/mp4"),
    "file": None,
    "story_mention": ("image/", "video/"),
    "story": ("image/", "video/"),
    # Meta's "video_url" of an ad is sometimes a still: either is the creative.
    AD_CREATIVE: ("image/", "video/"),
    "share": ("image/", "video/"),
    "ig_post": ("image/", "video/"),
    "ig_reel": ("image/", "video/"),
    "reel": ("image/", "video/"),
}
# Never stored, whatever the attachment type: active content served from our origin.
REJECTED_CONTENT_TYPES = frozenset(
    {"text/html", "application/xhtml+xml", "image/svg+xml", "text/javascript", "application/javascript"}
)
GENERIC_CONTENT_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})


def _sniff(head: bytes) -> str | None:
    """The few formats Instagram sends, for CDNs that answer ``application/octet-stream``."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:8] == b"ftyp":
        return "video/mp4"
    if head.startswith(b"OggS"):
        return "audio/ogg"
    if head.startswith(b"ID3"):
        return "audio/mpeg"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    return None


def accept_content_type(media_type: str, header: str, head: bytes) -> str | None:
    """The content type to store for a download, or None when it must be refused."""
    declared = header.split(";")[0].strip().lower()
    if declared in GENERIC_CONTENT_TYPES:
        declared = _sniff(head) or declared
    if declared in REJECTED_CONTENT_TYPES:
        return None
    allowed = ACCEPTED_CONTENT_TYPES.get(media_type, ("image/", "video/"))
    if allowed is None:
        return declared or "application/octet-stream"
    return declared if declared.startswith(allowed) else None


class DownloadError(Exception):
    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


@dataclass
class Downloaded:
    spool: IO[bytes]
    size: int
    content_type: str


class _Transfer:
    """Streaming callbacks of one download: count, cap, spool."""

    def __init__(self, max_bytes: int, spool: IO[bytes]) -> None:
        self.max_bytes = max_bytes
        self.spool = spool
        self.size = 0
        self.too_large = False

    def on_header(self, line: str) -> None:
        if line.startswith("HTTP/"):  # a new response (after a redirect): start over
            self.too_large = False
            return
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length" and value.strip().isdigit():
            if int(value.strip()) > self.max_bytes:
                self.too_large = True

    def on_chunk(self, chunk: bytes) -> None:
        if self.too_large:
            return
        self.size += len(chunk)
        if self.size > self.max_bytes:
            # Stop keeping bytes; the client's own limit closes the connection shortly.
            self.too_large = True
            return
        self.spool.write(chunk)


class Downloader(OutboundHttp):
    """Fetches one CDN URL into a spool, enforcing the cap, the timeout and the type."""

    def __init__(self, *, max_bytes: int, timeout_secs: float, max_clients: int) -> None:
        limit = max_bytes + CLIENT_LIMIT_MARGIN_BYTES
        super().__init__(max_clients=max_clients, max_body_size=limit, max_buffer_size=limit)
        self.max_bytes = max_bytes
        self.timeout_secs = timeout_secs

    async def fetch(self, url: str, media_type: str) -> Downloaded:
        """Download ``url`` within the size cap; the file spooled, or DownloadError."""
        if not url.startswith(("https://", "http://")):
            raise DownloadError("bad_url", permanent=True)
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)
        try:
            return await self._fetch(url, media_type, spool)
        except BaseException:
            spool.close()
            raise

    async def _fetch(self, url: str, media_type: str, spool: IO[bytes]) -> Downloaded:
        transfer = _Transfer(self.max_bytes, spool)
        request = HTTPRequest(
            url,
            method="GET",
            streaming_callback=transfer.on_chunk,
            header_callback=transfer.on_header,
            connect_timeout=min(self.timeout_secs, 10.0),
            request_timeout=self.timeout_secs,
            follow_redirects=True,
            max_redirects=3,
        )
        try:
            response = await self.http.fetch(request, raise_error=False)
        except HTTPClientError as exc:  # 599: timeout or the connection was cut
            if transfer.too_large:
                raise DownloadError("too_large", permanent=True) from None
            reason = "timeout" if isinstance(exc, HTTPTimeoutError) else "connection"
            raise DownloadError(reason, permanent=False) from None
        except OSError:
            raise DownloadError("connection", permanent=False) from None
        code = response.code
        if code in (403, 404, 410):
            # Meta's CDN answers these for an expired or revoked signed link: it never comes back.
            raise DownloadError(f"{EXPIRED_LINK}{code}", permanent=True)
        if code == 429 or code >= 500:
            raise DownloadError(f"http_{code}", permanent=False)
        if not 200 <= code < 300:
            raise DownloadError(f"http_{code}", permanent=True)
        if transfer.too_large:
            raise DownloadError("too_large", permanent=True)
        if transfer.size == 0:
            raise DownloadError("empty", permanent=False)
        spool.seek(0)
        head = spool.read(16)
        spool.seek(0)
        content_type = accept_content_type(media_type, response.headers.get("Content-Type", ""), head)
        if content_type is None:
            raise DownloadError("content_type", permanent=True)
        return Downloaded(spool, transfer.size, content_type)
