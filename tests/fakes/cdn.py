"""A fake Instagram CDN: a real local HTTP server serving files by path, with expiring links."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import tornado.web

from tests.fakes.local import LocalServer

# Smallest valid files of each kind the CDN serves (magic bytes matter for sniffing).
JPEG = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + bytes(range(256)) * 8
MP4 = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(255, -1, -1)) * 8
PDF = b"%PDF-1.4\n" + b"0" * 1000


@dataclass
class CdnFile:
    body: bytes = JPEG
    content_type: str | None = "image/jpeg"
    status: int = 200
    # Requests answered with 503 before the file is served.
    fail_times: int = 0
    # Seconds to wait before answering (a slow CDN); only the first ``slow_times`` requests.
    delay_secs: float = 0.0
    slow_times: int = 1_000_000
    # Send the body in chunks without Content-Length.
    chunked: bool = False
    # Held until the test opens it, for the first ``gated_times`` requests.
    gate: asyncio.Event | None = None
    gated_times: int = 1_000_000


class _CdnHandler(tornado.web.RequestHandler):
    def initialize(self, cdn: FakeCdn) -> None:
        self.cdn = cdn

    async def get(self, name: str) -> None:
        self.cdn.requests.append(name)
        spec = self.cdn.files.get(name)
        if spec is None:
            self.set_status(404)
            self.finish("URL signature expired")
            return
        count = self.cdn.requests.count(name)
        if spec.delay_secs and count <= spec.slow_times:
            await asyncio.sleep(spec.delay_secs)
        if spec.gate is not None and count <= spec.gated_times:
            await spec.gate.wait()
            if self.request.connection.stream.closed():  # type: ignore[attr-defined]
                return
        if count <= spec.fail_times:
            self.set_status(503)
            self.finish("try later")
            return
        self.set_status(spec.status)
        if spec.content_type:
            self.set_header("Content-Type", spec.content_type)
        else:
            self.clear_header("Content-Type")
        if spec.chunked:
            for i in range(0, len(spec.body), 16384):
                self.write(spec.body[i : i + 16384])
                await self.flush()
            self.finish()
        else:
            self.finish(spec.body)


class FakeCdn(LocalServer):
    """Serves ``/cdn/<name>`` as registered; anything unregistered is an expired link (404)."""

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, CdnFile] = {}
        self.requests: list[str] = []

    def routes(self) -> list[Any]:
        return [(r"/cdn/([^/?]+)", _CdnHandler, {"cdn": self})]

    def add(self, name: str, **spec: Any) -> str:
        self.files[name] = CdnFile(**spec)
        return self.url(name)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/cdn/{name}?oh=FAKE_SIGNATURE&oe=FAKE"

    def count(self, name: str) -> int:
        return self.requests.count(name)
