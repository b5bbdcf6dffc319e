"""Media that outlives Instagram's links: a durable download queue, GridFS copies, serving.

Instagram's attachment URLs are signed CDN links that expire (hours to days); the inbox
must still show the photo a year later. This module owns:

* :class:`MediaService` as an **after-store hook** of the recorder: a stored message with
  downloadable attachments gets one job per attachment in ``media_jobs`` (unique per
  message + attachment, so a redelivery queues nothing new) — no in-memory queue; so do the
  story a reply answers and the creative of the ad a message came from (:func:`media_targets`);
* the **worker** (a background service of the core, any number of processes): claims a
  job atomically with a lease, downloads it with Tornado's ``AsyncHTTPClient`` — size cap
  (``IGSYNC_MEDIA_MAX_BYTES``) enforced while streaming, content type checked against
  the attachment's type, timeout — into a spooled temporary file (at most
  ``SPOOL_MEMORY_BYTES`` in memory), stores it in GridFS, and moves the message's
  ``processing_status`` from ``pending`` to ``completed`` / ``failed`` with
  ``media_file`` (``/media/{id}``), publishing each change as ``message_updated``.
  Transient failures retry with exponential backoff; an expired link (403/404/410) is
  asked once of the Graph API for a fresh one (``server/media/links.py``), then fails; a
  too-large file or a wrong content type fail at once. A process that dies mid-download
  leaves its lease to expire and another worker (or itself, restarted) finishes the job;
* **cleanup** on unsend (:meth:`MediaService.remove_for_message`) and **serving**
  (:meth:`MediaService.open_for`, used by ``GET /media/{id}``);
* the **transcription hook** for audio: a :class:`Transcriber` (no-op by default,
  pluggable with ``IGSYNC_TRANSCRIBER=package.module:factory``);
* the operators' view of failed downloads (:meth:`MediaService.list_failed`,
  :meth:`MediaService.retry_failed`: ``igsync media list-failed|retry``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import logging
import mimetypes
import os
import socket
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import IO, Any, Protocol

from bson import ObjectId
from gridfs.asynchronous.grid_file import AsyncGridOut
from pymongo.errors import PyMongoError
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.simple_httpclient import HTTPTimeoutError

from models import media_jobs as jobs_model
from models.ids import Picked, as_object_id, pick_in_state
from models.media_files import media_url
from models.store import Store
from models.timeutil import iso, utcnow
from server.graph.client import OutboundHttp
from server.inbox import events as ev
from server.ingest import parse as wp
from server.media import links as media_links
from server.ops.metrics import Metrics

log = logging.getLogger("igsync.media")

# Bytes of one download kept in memory before the spool moves to a temporary file.
SPOOL_MEMORY_BYTES = 1024 * 1024
# The HTTP client's own hard limit sits this far above the cap, so that our streaming
# check (which knows *why*) normally sees the overflow before the client cuts the line.
CLIENT_LIMIT_MARGIN_BYTES = 1024 * 1024
# DownloadError reasons for a link the CDN refused for good (403/404/410).
EXPIRED_LINK = "expired_link_"
# Longest wait between two tries of one download.
MAX_RETRY_DELAY_SECS = 3600.0

STORY_KEY = "reply_to.story"
# Copies of an ad's creative (the ad a conversation came from), recorded under
# ``referral.media.<kind>``; the links in ``referral.ads_context_data`` expire like any other.
AD_CREATIVE_KEYS = {"photo_url": "referral.media.photo", "video_url": "referral.media.video"}
AD_CREATIVE = "ad_creative"
PENDING = "pending"
COMPLETED = "completed"
FAILED = "failed"

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


# -- what to download --------------------------------------------------------------------


@dataclass(frozen=True)
class MediaTarget:
    """One file to download for a message. ``keys`` are its paths in the message document:
    several when attachments share a URL (a post share arrives as ``share`` + ``ig_post``
    with one link during Meta's transition) — downloaded once, recorded on each."""

    keys: tuple[str, ...]
    type: str
    url: str

    @property
    def key(self) -> str:
        return self.keys[0]

    @property
    def is_content(self) -> bool:
        """Part of what the message shows (attachments, the replied story), which its
        ``processing_status`` is about — not the creative of the ad it came from."""
        return any(not key.startswith("referral.") for key in self.keys)


def media_targets(message: dict[str, Any]) -> list[MediaTarget]:
    """Attachments of a downloadable type with a URL, the story a reply answers (stories
    vanish after 24 hours — the reply is meaningless without it), and the creative of the ad
    the message came from (what the customer was looking at when they wrote)."""
    found: dict[str, tuple[list[str], str]] = {}
    for i, att in enumerate(message.get("attachments") or []):
        if att.get("type") in wp.MEDIA_TYPES and att.get("url"):
            found.setdefault(att["url"], ([], att["type"]))[0].append(f"attachments.{i}")
    story = (message.get("reply_to") or {}).get("story") or {}
    if story.get("url"):
        found.setdefault(story["url"], ([], "story"))[0].append(STORY_KEY)
    ad = (message.get("referral") or {}).get("ads_context_data") or {}
    for field_name, key in AD_CREATIVE_KEYS.items():
        if isinstance(ad.get(field_name), str) and ad[field_name]:
            found.setdefault(ad[field_name], ([], AD_CREATIVE))[0].append(key)
    return [MediaTarget(tuple(keys), kind, url) for url, (keys, kind) in found.items()]


def target_state(message: dict[str, Any], key: str) -> dict[str, Any]:
    node: Any = message
    for part in key.split("."):
        if isinstance(node, list):
            node = node[int(part)] if part.isdigit() and int(part) < len(node) else None
        elif isinstance(node, dict):
            node = node.get(part)
        if node is None:
            return {}
    return node if isinstance(node, dict) else {}


def aggregate_status(message: dict[str, Any]) -> str:
    """``pending`` while any content target is, ``failed`` if any failed, else ``completed``."""
    content = [t for t in media_targets(message) if t.is_content]
    states = [target_state(message, t.key).get("processing_status") or PENDING for t in content]
    if not states:
        return COMPLETED
    if PENDING in states:
        return PENDING
    return FAILED if FAILED in states else COMPLETED


# -- content types -------------------------------------------------------------------------


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


# -- downloading ---------------------------------------------------------------------------


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


# -- transcription ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioClip:
    data: bytes
    content_type: str
    message_id: str
    channel_id: str


class Transcriber(Protocol):
    """Turns a stored voice note into text. Return None when there is nothing to say;
    exceptions are logged and leave ``transcription`` empty (the media still completes)."""

    async def transcribe(self, clip: AudioClip) -> str | None: ...


class NoopTranscriber:
    """The default: no transcription service is configured."""

    async def transcribe(self, clip: AudioClip) -> str | None:
        return None


def load_transcriber(spec: str) -> Transcriber:
    """``package.module:factory`` → ``factory()``; empty → :class:`NoopTranscriber`."""
    if not spec:
        return NoopTranscriber()
    module_name, _, attr = spec.partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    return factory()


# -- the service -------------------------------------------------------------------------------


class MediaService:
    def __init__(
        self,
        store: Store,
        publish: Callable[[list[ev.Event]], Awaitable[None]],
        metrics: Metrics,
        *,
        downloader: Downloader,
        transcriber: Transcriber,
        concurrency: int,
        lease_secs: float,
        max_attempts: int,
        retry_base_secs: float,
        poll_secs: float,
        transcribe_timeout_secs: float,
        links: media_links.LinkRefresher | None = None,
    ) -> None:
        self.store = store
        self.links = links
        self.publish = publish
        self.metrics = metrics
        self.downloader = downloader
        self.transcriber = transcriber
        self.concurrency = concurrency
        self.lease_secs = lease_secs
        self.max_attempts = max_attempts
        self.retry_base_secs = retry_base_secs
        self.poll_secs = poll_secs
        self.transcribe_timeout_secs = transcribe_timeout_secs
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = False

    # -- AfterStoreHook: queue the downloads ----------------------------------------------------

    async def after_message_stored(self, message: dict[str, Any], conversation_id: Any) -> None:
        if message.get("is_deleted"):
            return
        targets = media_targets(message)
        if not targets:
            return
        content = [t for t in targets if t.is_content]
        new = await self.store.media_jobs.enqueue(
            [
                {
                    "message_id": message["_id"],
                    "channel_id": message["channel_id"],
                    "conversation_id": conversation_id,
                    "key": target.key,
                    "keys": list(target.keys),
                    "type": target.type,
                    "url": target.url,
                    "primary": bool(content) and target is content[0],
                    # The message's only content download decides its processing_status on its own.
                    "sole": target.is_content and len(content) == 1,
                }
                for target in targets
            ]
        )
        if new:
            self.wake()

    def wake(self) -> None:
        self._wake.set()

    # -- profile pictures ------------------------------------------------------------------------

    async def copy_picture(self, channel_id: ObjectId, customer_id: ObjectId, url: str) -> ObjectId | None:
        """Download a customer's profile picture (its link expires like any CDN link) into the
        media store, with the same caps and type checks as an attachment (``image/*`` only).
        One attempt: it runs inside the profile look-up, which is best-effort too — on any
        failure the customer keeps Instagram's link. The stored file's id, or None."""
        try:
            downloaded = await self.downloader.fetch(url, "image")
        except DownloadError as exc:
            log.info("profile picture not copied: %s customer=%s", exc.reason, customer_id)
            return None
        with downloaded.spool as spool:
            return await self.store.media_files.upload(
                f"profile{mimetypes.guess_extension(downloaded.content_type) or ''}",
                spool,
                {
                    "content_type": downloaded.content_type,
                    "channel_id": channel_id,
                    "customer_id": customer_id,
                    "key": "profile_pic",
                },
            )

    # -- unsend ----------------------------------------------------------------------------------

    async def remove_for_message(self, message_id: ObjectId) -> int:
        """Cancel the message's downloads and delete its stored copies (idempotent)."""
        removed = 0
        for file_id in await self.store.media_jobs.cancel_for_message(message_id):
            if await self.store.media_files.delete(file_id):
                removed += 1
        return removed

    # -- operators: failed downloads --------------------------------------------------------------

    async def list_failed(self, *, limit: int = 50, reason: str | None = None) -> list[dict[str, Any]]:
        """Failed downloads, most recent first; ``reason`` filters by the start of the error
        (``expired_link``, ``http_``, ``too_large``…)."""
        jobs = await self.store.media_jobs.failed_page(limit=max(1, min(limit, 500)), reason_prefix=reason)
        return [
            {
                "job_id": str(job["_id"]),
                "message_id": str(job["message_id"]),
                "channel_id": str(job["channel_id"]),
                "type": job["type"],
                "key": job["key"],
                "error": job.get("error"),
                "attempts": job.get("attempts", 0),
                "failed_at": iso(job.get("updated_at")),
            }
            for job in jobs
        ]

    async def retry_failed(self, job_ids: list[str] | None, *, reason: str | None = None) -> dict[str, Any]:
        """Queue failed downloads again (these, or every one — of one reason): a link that
        expired meanwhile is asked anew of the Graph API. Running workers take them within
        ``media_poll_secs``; the message moves from ``failed`` when its download ends."""
        picked = Picked()
        oids: list[ObjectId] | None = None
        if job_ids is not None:
            picked = await pick_in_state(job_ids, self.store.media_jobs.get, jobs_model.FAILED)
            oids = picked.ready
        retried = await self.store.media_jobs.requeue_failed(oids, reason_prefix=reason) if oids != [] else 0
        if retried:
            log.info("media: %d failed downloads queued again", retried)
            self.wake()
        not_failed = [{"job_id": raw, "state": state} for raw, state in picked.other_state]
        return {"retried": retried, "not_found": picked.not_found, "not_failed": not_failed}

    # -- serving ---------------------------------------------------------------------------------

    async def open_for(self, owner_id: Any, media_id: str) -> AsyncGridOut | None:
        """The stored file if it belongs to a channel of ``owner_id``; None otherwise (→ 404)."""
        file_id = as_object_id(media_id)
        if file_id is None:
            return None
        stream = await self.store.media_files.open(file_id)
        if stream is None:
            return None
        channel = await self.store.channels.get((stream.metadata or {}).get("channel_id"))
        if channel is None or (channel.get("owner") or {}).get("id") != owner_id:
            return None
        return stream

    # -- the worker -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._work()) for _ in range(self.concurrency)]

    async def stop(self) -> None:
        """Stop at once: a download cut short keeps its lease, which expires, and the job
        is taken over (by another process, or by this one after a restart)."""
        self._stopping = True
        for task in self._loops:
            task.cancel()
        if self._loops:
            await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []
        self.downloader.close()
        if self.links is not None:
            self.links.close()

    async def _work(self) -> None:
        while not self._stopping:
            # Clear before claiming: a job queued after this point sets the event again,
            # so the wait below returns at once and no wake-up is lost.
            self._wake.clear()
            try:
                job = await self.store.media_jobs.claim(self.owner, self.lease_secs)
            except PyMongoError as exc:
                log.warning("media worker: cannot claim jobs (%s)", type(exc).__name__)
                job = None
            if job is None:
                try:
                    await asyncio.wait_for(self._wake.wait(), self.poll_secs)
                except TimeoutError:
                    pass
                continue
            try:
                await self.process(job)
            except asyncio.CancelledError:
                raise
            except PyMongoError as exc:
                # The lease expires and the job is taken over; nothing is lost.
                log.warning("media job %s interrupted: MongoDB failed (%s)", job["_id"], type(exc).__name__)
            except Exception:
                log.exception("media job %s failed unexpectedly", job["_id"])

    async def process(self, job: dict[str, Any]) -> str:
        """Run one claimed job to its next state; returns what happened.

        An unsent message's jobs are cancelled by the unsend, so a claimed job's message is
        normally there; if it was unsent meanwhile, recording the result is refused by the
        message's guard and the copy is thrown away below."""
        if job["attempts"] > self.max_attempts:
            # It was claimed before and its worker died each time: stop trying.
            return await self._fail(job, "too_many_attempts")
        file_id: ObjectId | None = job.get("file_id")
        info = await self.store.media_files.info(file_id) if file_id is not None else None
        audio: bytes | None = None
        if info is None:
            if file_id is not None:
                # The attached copy is gone (removed by an operator?): clear what is left of
                # it and download again.
                await self.store.media_files.delete(file_id)
            try:
                downloaded = await self._download(job)
            except DownloadError as exc:
                if exc.permanent or job["attempts"] >= self.max_attempts:
                    return await self._fail(job, exc.reason)
                return await self._retry(job, exc.reason)
            with downloaded.spool as spool:
                if job["type"] == "audio":
                    audio = spool.read()
                    spool.seek(0)
                file_id = await self.store.media_files.upload(
                    _filename(job, downloaded.content_type),
                    spool,
                    {
                        "content_type": downloaded.content_type,
                        "channel_id": job["channel_id"],
                        "message_id": job["message_id"],
                        "key": job["key"],
                    },
                )
            content_type = downloaded.content_type
            if not await self.store.media_jobs.attach_file(job, file_id):
                # Our lease ended (taken over, or the message was unsent): not ours to keep.
                await self.store.media_files.delete(file_id)
                return self._outcome(job, "lost", count=False)
        else:
            assert file_id is not None
            content_type = (info.get("metadata") or {}).get("content_type", "application/octet-stream")
            if job["type"] == "audio":
                audio = await self.store.media_files.read_all(file_id)
        transcription = None
        if audio is not None:
            transcription = await self._transcribe(audio, content_type, job)
        updated = await self._record(job, COMPLETED, file_id=file_id, transcription=transcription)
        if updated is None:
            # Unsent while we downloaded: the copy must not outlive the message.
            await self.store.media_files.delete(file_id)
            await self.store.media_jobs.finish(job, jobs_model.CANCELLED)
            return self._outcome(job, "cancelled")
        if not await self.store.media_jobs.finish(job, jobs_model.COMPLETED):
            current = await self.store.media_jobs.get(job["_id"])
            if current is not None and current["state"] == jobs_model.CANCELLED:
                await self.store.media_files.delete(file_id)
                return self._outcome(job, "cancelled")
        return self._outcome(job, "completed")

    async def _download(self, job: dict[str, Any]) -> Downloaded:
        """The job's link; if it has expired, once per job, a fresh one from the Graph API."""
        try:
            return await self.downloader.fetch(job["url"], job["type"])
        except DownloadError as exc:
            if not exc.reason.startswith(EXPIRED_LINK) or self.links is None or not self.links.can_refresh(job):
                raise
            refresh = await self.links.fresh_url(job)
            if refresh.url is None:
                if refresh.outcome == media_links.TRANSIENT:
                    raise DownloadError(f"{exc.reason}_refresh_unavailable", permanent=False) from None
                raise
        # A lost lease shows at attach_file, which refuses the copy; nothing to decide here.
        await self.store.media_jobs.refresh_url(job, refresh.url)
        job["url"] = refresh.url
        return await self.downloader.fetch(refresh.url, job["type"])

    async def _fail(self, job: dict[str, Any], reason: str) -> str:
        await self._record(job, FAILED, error=reason)
        await self.store.media_jobs.finish(job, jobs_model.FAILED, reason)
        return self._outcome(job, "failed", reason)

    async def _retry(self, job: dict[str, Any], reason: str) -> str:
        delay = min(self.retry_base_secs * 2 ** (job["attempts"] - 1), MAX_RETRY_DELAY_SECS)
        await self.store.media_jobs.retry(job, utcnow() + dt.timedelta(seconds=delay), reason)
        return self._outcome(job, "retried", f"{reason}; next try in {delay:.1f}s")

    def _outcome(self, job: dict[str, Any], outcome: str, detail: str = "", *, count: bool = True) -> str:
        if count:
            self.metrics.media_jobs.labels(outcome=outcome).inc()
        log.info(
            "media job %s: %s type=%s message=%s attempt=%d%s",
            job["_id"],
            outcome,
            job["type"],
            job["message_id"],
            job["attempts"],
            f" ({detail})" if detail else "",
        )
        return outcome

    async def _transcribe(self, audio: bytes, content_type: str, job: dict[str, Any]) -> str | None:
        clip = AudioClip(audio, content_type, str(job["message_id"]), str(job["channel_id"]))
        try:
            text = await asyncio.wait_for(self.transcriber.transcribe(clip), self.transcribe_timeout_secs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("transcription of message %s failed (%s)", job["message_id"], type(exc).__name__)
            return None
        return (text.strip() or None) if isinstance(text, str) else None

    async def _record(
        self,
        job: dict[str, Any],
        status: str,
        *,
        file_id: ObjectId | None = None,
        transcription: str | None = None,
        error: str | None = None,
    ) -> dict[str, Any] | None:
        """Write the outcome into the message and tell the inbox; None if the message is gone."""
        keys = job.get("keys") or [job["key"]]
        result: dict[str, Any] = {"processing_status": status}
        top: dict[str, Any] = {}
        changes = list(dict.fromkeys(key.split(".", 1)[0] for key in keys))  # attachments, reply_to, referral
        if file_id is not None:
            result["media_file"] = media_url(file_id)
            if job.get("primary"):
                top["media_file"] = file_id
                changes.append("media_file")
        if error is not None:
            result["error"] = error
        if transcription is not None:
            top["transcription"] = transcription
            changes.append("transcription")
        if job.get("sole"):
            top["processing_status"] = status
            changes.append("processing_status")
        indexes = [int(k.rsplit(".", 1)[1]) for k in keys if k.startswith("attachments.")]
        paths = [k for k in keys if not k.startswith("attachments.")]
        updates = self.store.message_updates
        outcome = await updates.set_media_result(job["message_id"], indexes, paths, result, top)
        message = outcome.doc
        if message is None or message.get("is_deleted"):
            return None  # unsent (or gone): the guard kept the result out
        # (Not applied but not deleted: a retry after a crash recorded the same result again.)
        status_now = aggregate_status(message)
        if not job.get("sole") and status_now != message.get("processing_status"):
            moved = await updates.set_processing_status(message["_id"], status_now)
            if moved.applied and moved.doc is not None:
                message = moved.doc
                changes.append("processing_status")
        await self.publish([ev.message_updated(message, changes)])
        return message


def _filename(job: dict[str, Any], content_type: str) -> str:
    extension = mimetypes.guess_extension(content_type) or ""
    return f"{job['type']}{extension}"
