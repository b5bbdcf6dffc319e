"""``GET``/``POST /webhooks/instagram`` (API.md §1). The pipeline does the work."""

from __future__ import annotations

import hmac
import time

import tornado.web

from handlers.base import BaseHandler
from server.api.errors import ApiError


@tornado.web.stream_request_body
class InstagramWebhookHandler(BaseHandler):
    def prepare(self) -> None:
        """Start collecting the body: it is streamed, so its size is capped as it arrives."""
        super().prepare()
        self.received_at = time.time()
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_large = False
        if self.request.method != "POST":
            return
        limit = self.core.settings.max_body_bytes
        declared = self.request.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            # Answer before reading the body (Tornado then closes the connection unread).
            self._reject_too_large()
        # A chunked body has no declared size: read and discard past our limit, up to a
        # hard cap after which Tornado drops the connection.
        self.request.connection.set_max_body_size(limit * 8)

    def data_received(self, chunk: bytes) -> None:
        """Keep a chunk of the body, or stop keeping once it passes the size cap."""
        self._size += len(chunk)
        if self._size > self.core.settings.max_body_bytes:
            self._too_large = True
            self._chunks.clear()
            return
        self._chunks.append(chunk)

    def _reject_too_large(self) -> None:
        self.core.metrics.webhook_requests.labels(outcome="too_large").inc()
        raise ApiError(413, "payload_too_large", f"The body is larger than {self.core.settings.max_body_bytes} bytes.")

    def get(self) -> None:
        """Meta's subscription handshake: echo the challenge when the verify token matches."""
        mode = self.get_query_argument("hub.mode", "")
        token = self.get_query_argument("hub.verify_token", "")
        challenge = self.get_query_argument("hub.challenge", "")
        expected = self.core.settings.verify_token or ""
        if mode != "subscribe" or not expected or not hmac.compare_digest(token.encode(), expected.encode()):
            raise ApiError(403, "verification_failed", "hub.mode must be subscribe and hub.verify_token must match.")
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(challenge)

    async def post(self) -> None:
        """Take a webhook body: check its signature (401), store each item once, 200 (503: store down)."""
        if self._too_large:
            self._reject_too_large()
        body = b"".join(self._chunks)
        response = await self.core.pipeline.handle_post(
            body, self.request.headers.get("X-Hub-Signature-256"), received_at=self.received_at
        )
        self.write_json(response.body, response.status)


routes = [(r"/webhooks/instagram", InstagramWebhookHandler)]
