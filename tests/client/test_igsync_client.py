"""``igsync_client``: against a real igsync, and against a real local HTTP server that fails on
purpose (5xx, slowness) to show the retries; a closed port shows connection errors.

The client is synchronous (``requests``), so it runs in a worker thread while the servers
run on the test's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import requests
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from igsync_client import (
    IgsyncAuthError,
    IgsyncClient,
    IgsyncConnectionError,
    IgsyncNotFound,
    IgsyncServerError,
    IgsyncValidationError,
)
from server.app.embedded import free_port
from tests.support.dedup import echo, new_mid, ok_body, stored_messages
from tests.support.helpers import ACCOUNT_ID, CUSTOMER_A, INTERNAL_TOKEN


def fast_client(base_url: str, **kw: Any) -> IgsyncClient:
    kw.setdefault("backoff_secs", 0.01)
    kw.setdefault("timeout", 5.0)
    return IgsyncClient(base_url, INTERNAL_TOKEN, **kw)


async def test_mark_sent_records_then_retry_returns_the_same_message(server, tenant) -> None:
    with fast_client(server.base_url) as igsync:
        first = await asyncio.to_thread(
            igsync.mark_sent,
            "Your parcel left the warehouse.",
            type="AI",
            account_id=ACCOUNT_ID,
            customer_instagram_id=CUSTOMER_A,
            client_message_id="order-9",
        )
        assert first.created and not first.adopted and first.status_code == 201
        assert first.message["type"] == "AI" and first.message["client_message_id"] == "order-9"
        again = await asyncio.to_thread(
            igsync.mark_sent,
            "Your parcel left the warehouse.",
            conversation_id=first.message["conversation_id"],
            client_message_id="order-9",
        )
        assert not again.created and again.id == first.id and again.status_code == 200
    assert len(await stored_messages(server.core.store.db)) == 1


async def test_mark_sent_after_the_echo_reports_adoption(server, client, tenant) -> None:
    mid = new_mid()
    ok_body(await echo(client, mid, "quick reply"))
    with fast_client(server.base_url) as igsync:
        result = await asyncio.to_thread(
            igsync.mark_sent,
            "quick reply",
            type="support",
            account_id=ACCOUNT_ID,
            customer_instagram_id=CUSTOMER_A,
            mids=[mid],
        )
    assert result.adopted and not result.created and result.message["source"] == "app"


async def test_errors_are_typed_and_not_retried(server, tenant) -> None:
    with IgsyncClient(server.base_url, "wrong-token-0123456789abcdef", backoff_secs=0.01) as bad:
        with pytest.raises(IgsyncAuthError) as auth:
            await asyncio.to_thread(bad.mark_sent, "x", conversation_id="0123456789abcdef01234567")
    assert auth.value.status == 401 and auth.value.code == "unauthorized"
    with fast_client(server.base_url) as igsync:
        with pytest.raises(IgsyncNotFound):
            await asyncio.to_thread(igsync.mark_sent, "x", conversation_id="0123456789abcdef01234567")
        with pytest.raises(IgsyncValidationError) as invalid:
            await asyncio.to_thread(igsync.mark_sent, "", account_id=ACCOUNT_ID, customer_instagram_id=CUSTOMER_A)
        assert "content" in invalid.value.fields
        with pytest.raises(ValueError):
            igsync.mark_sent("x", type="bot", conversation_id="c")
        with pytest.raises(ValueError):
            igsync.mark_sent("x", account_id=ACCOUNT_ID)
    assert "wrong-token" not in repr(bad)


@dataclass
class Flaky:
    """A real HTTP server standing in for igsync: answers from a script, records requests."""

    script: list[tuple[int, float]]  # (status, delay before answering) per request; last repeats
    bodies: list[dict[str, Any]] = field(default_factory=list)
    base_url: str = ""


@pytest.fixture
async def flaky() -> AsyncIterator[Flaky]:
    state = Flaky(script=[])

    class Handler(tornado.web.RequestHandler):
        async def post(self) -> None:
            state.bodies.append(orjson.loads(self.request.body))
            status, delay = state.script[min(len(state.bodies), len(state.script)) - 1]
            if delay:
                await asyncio.sleep(delay)  # the scenario: a slow server, not a wait for correctness
            self.set_status(status)
            if status == 201:
                message = {"id": "m1", "client_message_id": state.bodies[-1]["client_message_id"]}
                self.finish(orjson.dumps({"status": "success", "message": message, "adopted": False}))
            else:
                self.finish(orjson.dumps({"error": "store_unavailable", "message": "retry later"}))

    http = HTTPServer(tornado.web.Application([(r"/api/v1/messages/mark-sent", Handler)]))
    sockets = bind_sockets(0, "127.0.0.1")
    http.add_sockets(sockets)
    state.base_url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    yield state
    http.stop()


async def test_5xx_is_retried_with_the_same_client_message_id(flaky: Flaky) -> None:
    flaky.script = [(503, 0), (502, 0), (201, 0)]
    with fast_client(flaky.base_url, retries=3) as igsync:
        result = await asyncio.to_thread(igsync.mark_sent, "hi", conversation_id="c1")
    assert result.created and len(flaky.bodies) == 3
    ids = {b["client_message_id"] for b in flaky.bodies}
    assert len(ids) == 1 and ids.pop().startswith("igsync-client-"), "one generated id for every attempt"


async def test_5xx_after_every_retry_raises_server_error(flaky: Flaky) -> None:
    flaky.script = [(503, 0)]
    with fast_client(flaky.base_url, retries=2) as igsync:
        with pytest.raises(IgsyncServerError) as failed:
            await asyncio.to_thread(igsync.mark_sent, "hi", conversation_id="c1", client_message_id="k")
    assert failed.value.status == 503 and failed.value.code == "store_unavailable"
    assert len(flaky.bodies) == 3


async def test_a_timeout_is_retried(flaky: Flaky) -> None:
    flaky.script = [(201, 1.0), (201, 0)]
    with fast_client(flaky.base_url, timeout=0.2, retries=1) as igsync:
        result = await asyncio.to_thread(igsync.mark_sent, "hi", conversation_id="c1")
    assert result.created and len(flaky.bodies) == 2


async def test_4xx_is_not_retried(flaky: Flaky) -> None:
    flaky.script = [(422, 0)]
    with fast_client(flaky.base_url, retries=3) as igsync:
        with pytest.raises(IgsyncValidationError):
            await asyncio.to_thread(igsync.mark_sent, "hi", conversation_id="c1")
    assert len(flaky.bodies) == 1


class CountingSession(requests.Session):
    """A real session that counts the attempts it makes."""

    attempts = 0

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        self.attempts += 1
        return super().request(*args, **kwargs)


async def test_connection_refused_raises_connection_error_after_retries() -> None:
    session = CountingSession()
    with fast_client(f"http://127.0.0.1:{free_port()}", retries=2, session=session) as igsync:
        with pytest.raises(IgsyncConnectionError) as failed:
            await asyncio.to_thread(igsync.mark_sent, "hi", conversation_id="c1")
    assert failed.value.status is None and session.attempts == 3
