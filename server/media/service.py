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
import logging
import mimetypes
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from bson import ObjectId
from gridfs.asynchronous.grid_file import AsyncGridOut
from pymongo.errors import PyMongoError

from models import media_jobs as jobs_model
from models.ids import Picked, as_object_id, pick_in_state
from models.media_files import media_url
from models.store import Store
from models.timeutil import iso, utcnow
from server.inbox import events as ev
from server.media import links as media_links
from server.media.download import (
    EXPIRED_LINK,
    Downloaded,
    Downloader,
    DownloadError,
)
from server.media.targets import (
    COMPLETED,
    FAILED,
    aggregate_status,
    media_targets,
)
from server.media.transcribe import AudioClip, Transcriber
from server.ops.loops import PoolIdleWait, cancelling
from server.ops.metrics import Metrics

log = logging.getLogger("igsync.media")

# Longest wait between two tries of one download.
MAX_RETRY_DELAY_SECS = 3600.0


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
        self._idle = PoolIdleWait(self._wake, poll_secs)
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = False

    # -- AfterStoreHook: queue the downloads ----------------------------------------------------

    def idle_for(self, message: dict[str, Any]) -> bool:
        """Nothing to download: no job to queue."""
        return bool(message.get("is_deleted")) or not media_targets(message)

    async def after_message_stored(
        self, message: dict[str, Any], conversation_id: Any, *, early_events: bool | None = None
    ) -> None:
        """Queue the downloads of a stored message (one job per target, once)."""
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
        """Wake the workers: a job was queued."""
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
        """Start the download workers."""
        self._stopping = False
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._work(), name=f"media-{index}") for index in range(self.concurrency)]

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
        while not self._stopping and not cancelling():
            # Clear before claiming: a job queued after this point sets the event again,
            # so the wait below returns at once and no wake-up is lost.
            self._wake.clear()
            try:
                job = await self.store.media_jobs.claim(self.owner, self.lease_secs)
            except PyMongoError as exc:
                log.warning("media worker: cannot claim jobs (%s)", type(exc).__name__)
                job = None
            if job is None:
                await self._idle.wait()
                continue
            self._wake.set()  # the idle peers look too: there may be more
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
