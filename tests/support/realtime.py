"""A real WebSocket client for the realtime tests (Tornado's ``websocket_connect``)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

RECV_TIMEOUT_SECS = 15.0


def ws_url(base_url: str, query: str = "") -> str:
    return base_url.replace("http://", "ws://", 1) + "/ws" + (f"?{query}" if query else "")


class WsClient:
    def __init__(self, conn: WebSocketClientConnection) -> None:
        self.conn = conn

    @classmethod
    async def connect(
        cls, base_url: str, token: str | None, *, via_query: bool = False, headers: dict[str, str] | None = None
    ) -> WsClient:
        all_headers = dict(headers or {})
        query = ""
        if token is not None:
            if via_query:
                query = f"access_token={token}"
            else:
                all_headers["Authorization"] = f"Bearer {token}"
        request = HTTPRequest(ws_url(base_url, query), headers=all_headers, connect_timeout=10, request_timeout=10)
        return cls(await websocket_connect(request))

    async def send(self, command: dict[str, Any]) -> None:
        await self.conn.write_message(orjson.dumps(command).decode())

    async def recv(self, timeout: float = RECV_TIMEOUT_SECS) -> dict[str, Any] | None:
        """The next frame as JSON; None once the socket is closed."""
        raw = await asyncio.wait_for(self.conn.read_message(), timeout)
        return None if raw is None else orjson.loads(raw)

    async def next_event(self, timeout: float = RECV_TIMEOUT_SECS) -> dict[str, Any]:
        frame = await self.recv(timeout)
        assert frame is not None, f"socket closed (code {self.conn.close_code})"
        return frame

    async def events(self, count: int, timeout: float = RECV_TIMEOUT_SECS) -> list[dict[str, Any]]:
        return [await self.next_event(timeout) for _ in range(count)]

    async def subscribe(self, **fields: Any) -> dict[str, Any]:
        await self.send({"action": "subscribe", **fields})
        reply = await self.next_event()
        assert reply["event"] == "subscribed", reply
        return reply

    async def quiet(self) -> list[dict[str, Any]]:
        """Everything queued for us before a ping: the server answers frames in order, so
        the pong comes after every event that was queued when the ping arrived."""
        await self.send({"action": "ping"})
        before: list[dict[str, Any]] = []
        while True:
            frame = await self.next_event()
            if frame["event"] == "pong":
                return before
            before.append(frame)

    async def drain_until_closed(self, timeout: float = RECV_TIMEOUT_SECS) -> int:
        """Read until the server's close; returns how many frames were read."""
        count = 0
        while await self.recv(timeout) is not None:
            count += 1
        return count

    @property
    def close_code(self) -> int | None:
        return self.conn.close_code

    def close(self) -> None:
        self.conn.close()


async def refused(base_url: str, token: str | None, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """Connect expecting the upgrade to be refused: (status, JSON body)."""
    try:
        client = await WsClient.connect(base_url, token, **kwargs)
    except HTTPClientError as exc:
        assert exc.response is not None
        return exc.code, orjson.loads(exc.response.body)
    client.close()
    raise AssertionError("the upgrade was accepted")
