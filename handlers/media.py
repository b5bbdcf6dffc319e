"""``GET /media/{id}``: a stored media copy, for inbox tokens of the channel's owner.

Bearer token in the ``Authorization`` header (401 without a valid one, 403 for a token of
another kind); another owner's file or an unknown id is 404, as everywhere. The bytes
never change for an id, so responses are cacheable by the browser only (``private``,
immutable, ``ETag``, ``304``), and a single byte range is served for audio/video seeking.
Active content cannot run from our origin: ``nosniff`` plus a sandboxing CSP.
"""

from __future__ import annotations

import re

from handlers.base import BaseHandler
from models.media_files import MEDIA_PATH
from server.api.auth import INBOX
from server.api.errors import ApiError, not_found

RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
INLINE_PREFIXES = ("image/", "video/", "audio/")
CHUNK_BYTES = 255 * 1024  # GridFS's chunk size: one read per chunk
CACHE_CONTROL = "private, max-age=31536000, immutable"


class MediaHandler(BaseHandler):
    async def get(self, media_id: str) -> None:
        """Serve a stored media copy to its owner."""
        await self._serve(media_id, body=True)

    async def head(self, media_id: str) -> None:
        """The headers of a stored media copy, without the bytes."""
        await self._serve(media_id, body=False)

    async def _serve(self, media_id: str, *, body: bool) -> None:
        principal = await self.authorize(INBOX)
        stream = await self.core.media.open_for(principal.owner_id, media_id)
        if stream is None:
            raise not_found("media")
        meta = stream.metadata or {}
        content_type = meta.get("content_type") or "application/octet-stream"
        etag = f'"{stream._id}"'
        self.set_header("Cache-Control", CACHE_CONTROL)
        self.set_header("ETag", etag)
        self.set_header("Accept-Ranges", "bytes")
        self.set_header("Content-Security-Policy", "default-src 'none'; sandbox")
        if stream.upload_date is not None:
            self.set_header("Last-Modified", stream.upload_date)
        if self.request.headers.get("If-None-Match") in (etag, "*"):
            self.set_status(304)
            self.clear_header("Content-Type")
            await self.finish()
            return
        disposition = "inline" if content_type.startswith(INLINE_PREFIXES) else "attachment"
        self.set_header("Content-Type", content_type)
        self.set_header("Content-Disposition", f'{disposition}; filename="{stream.filename or "media"}"')
        start, end = self._range(stream.length)
        length = end - start + 1 if stream.length else 0
        if (start, end) != (0, stream.length - 1) and stream.length:
            self.set_status(206)
            self.set_header("Content-Range", f"bytes {start}-{end}/{stream.length}")
        self.set_header("Content-Length", str(length))
        if not body or length == 0:
            await self.finish()
            return
        await stream.seek(start)
        remaining = length
        while remaining > 0:
            chunk = await stream.read(min(CHUNK_BYTES, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            self.write(chunk)
            await self.flush()
        await self.finish()

    def _range(self, size: int) -> tuple[int, int]:
        """The one byte range asked for (whole file without a Range header); 416 if unusable."""
        header = self.request.headers.get("Range")
        if not header or size == 0:
            return 0, size - 1
        match = RANGE.match(header.strip())
        if match is None or match.group(1) == match.group(2) == "":
            raise ApiError(416, "range_not_satisfiable", "Only one byte range (bytes=start-end) is supported.")
        first, last = match.groups()
        if first == "":  # the last N bytes
            start, end = max(size - int(last), 0), size - 1
        else:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
        if start >= size or start > end:
            self.set_header("Content-Range", f"bytes */{size}")
            raise ApiError(416, "range_not_satisfiable", f"The range is outside the file ({size} bytes).")
        return start, end


routes = [(MEDIA_PATH + r"(?P<media_id>[^/]+)", MediaHandler)]
