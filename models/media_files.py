"""Stored media copies: a GridFS bucket (``media.files`` / ``media.chunks``).

A file's ``_id`` is the id in its public URL (``/media/{id}``). Its metadata says whose it
is (``channel_id``, ``message_id``) and what it is (``content_type``, checked when it was
downloaded), which is all ``GET /media/{id}`` needs besides the bytes.
"""

from __future__ import annotations

from typing import IO, Any

import pymongo
from bson import ObjectId
from gridfs import AsyncGridFSBucket
from gridfs.asynchronous.grid_file import AsyncGridOut
from gridfs.errors import NoFile
from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from models.errors import LONG_OPERATION_SECS
from models.ids import as_object_id

BUCKET = "media"
# Where a copy is served (handlers/media.py): the one place that spells the URL of a file.
MEDIA_PATH = "/media/"


def media_url(file_id: ObjectId) -> str:
    """The URL a client loads a stored copy from."""
    return f"{MEDIA_PATH}{file_id}"


def media_file_id(url: str | None) -> ObjectId | None:
    """The stored file behind a :func:`media_url` (None for anything else)."""
    if not url or not url.startswith(MEDIA_PATH):
        return None
    return as_object_id(url.removeprefix(MEDIA_PATH))


class MediaFileRepository:
    def __init__(self, db: AsyncDatabase) -> None:
        self.bucket = AsyncGridFSBucket(db, bucket_name=BUCKET)
        self.files = db[f"{BUCKET}.files"]
        # The repositories' convention: ``coll`` is the collection whose indexes it owns.
        self.coll = db[f"{BUCKET}.chunks"]

    async def ensure_indexes(self) -> None:
        # Every read of a file walks its chunks by (files_id, n). GridFS would create this
        # index on the first upload; creating it at start-up (same keys and options, so
        # GridFS's own attempt is a no-op) lets `igsync doctor` check it like the others.
        # Files are found by _id only, so GridFS's (filename, uploadDate) index is left to it.
        """Create the chunk index GridFS would create on the first upload."""
        await self.coll.create_index([("files_id", ASCENDING), ("n", ASCENDING)], unique=True)

    async def upload(self, filename: str, source: IO[bytes], metadata: dict[str, Any]) -> ObjectId:
        """Store a file under a new id; the id."""
        file_id = ObjectId()
        # A copy of up to IGSYNC_MEDIA_MAX_BYTES in chunks: longer than one request's bound.
        with pymongo.timeout(LONG_OPERATION_SECS):
            await self.bucket.upload_from_stream_with_id(file_id, filename, source, metadata=metadata)
        return file_id

    async def info(self, file_id: ObjectId) -> dict[str, Any] | None:
        """The files document of a complete upload (GridFS writes it after the last chunk)."""
        return await self.files.find_one({"_id": file_id})

    async def open(self, file_id: ObjectId) -> AsyncGridOut | None:
        """A download stream of a stored file, or None."""
        try:
            return await self.bucket.open_download_stream(file_id)
        except NoFile:
            return None

    async def read_all(self, file_id: ObjectId) -> bytes | None:
        """A stored file's bytes, or None."""
        stream = await self.open(file_id)
        return None if stream is None else await stream.read()

    async def delete(self, file_id: ObjectId) -> bool:
        """Delete the file and its chunks (also the chunks of an upload that died half-way)."""
        try:
            await self.bucket.delete(file_id)
        except NoFile:
            return False
        return True
