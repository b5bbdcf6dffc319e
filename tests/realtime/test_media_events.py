"""Issue 7's inbox events over a real WebSocket from a real server (the realtime hub):
message_updated for reactions, edits, reads and media, message_deleted for an unsend,
conversation_updated for a profile — and nothing at all for a redelivery."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fakes.cdn import JPEG
from tests.support.events import EventsEnv, events_env, fixture_mid, fixture_with
from tests.support.realtime import WsClient

ENVELOPE_KEYS = {"event", "seq", "channel_id", "conversation_id", "ts", "data"}


@pytest.fixture
async def env(stores: Any, tmp_path: Path) -> Any:
    async with events_env(stores, tmp_path, realtime=True) as e:
        yield e


async def settle(env: EventsEnv, ws: WsClient) -> list[dict[str, Any]]:
    """Every frame caused so far, background profile look-ups included."""
    await env.core.profiles.idle()
    return await ws.quiet()


async def test_every_event_reaches_a_subscribed_socket(env: EventsEnv) -> None:
    env.graph.profile("6200000000000101", name="Ana Costa", username="ana")
    ws = await WsClient.connect(env.server.base_url, env.token)
    try:
        await ws.subscribe(channel_id=env.channel["id"])

        # The customer's first message and the profile look-up's conversation_updated: the
        # look-up runs beside the ingest, so it may be published before or after the message.
        await env.fixture("customer_text")
        frames = await settle(env, ws)
        names = [f["event"] for f in frames]
        message_events = [n for n in names if n != "conversation_updated"]
        assert message_events == ["chat_message", "new_customer_message"]
        assert names.count("conversation_updated") == 2
        profiled = [f for f in frames if f["event"] == "conversation_updated"]
        assert any(f["data"]["conversation"]["customer"]["username"] == "ana" for f in profiled)
        assert any(f["data"]["conversation"]["customer"]["enhanced_data_fetched"] for f in profiled)
        seqs = [f["seq"] for f in frames]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))

        await env.fixture("owner_echo_text")
        await settle(env, ws)
        echo_id = str((await env.message(fixture_mid("owner_echo_text")))["_id"])

        await env.fixture("customer_reaction")
        [reaction] = await settle(env, ws)
        assert set(reaction) == ENVELOPE_KEYS and reaction["event"] == "message_updated"
        assert reaction["channel_id"] == env.channel["id"]
        assert reaction["data"]["changes"] == ["reactions"]
        assert reaction["data"]["message"]["id"] == echo_id
        assert reaction["data"]["message"]["reactions"][0]["emoji"] == "\u2764\ufe0f"

        await env.fixture("customer_reaction")  # redelivered: the socket hears nothing
        assert await settle(env, ws) == []

        await env.fixture("customer_unreact")
        [unreact] = await settle(env, ws)
        assert unreact["data"]["message"]["reactions"] == []

        await env.fixture("read_receipt")
        [read] = await settle(env, ws)
        assert read["event"] == "message_updated" and read["data"]["changes"] == ["read_at"]
        assert read["data"]["message"]["read_at"] is not None

        await env.fixture("customer_reply_to_message")
        await settle(env, ws)
        await env.fixture("message_edit")
        edit, conversation = await settle(env, ws)
        assert edit["event"] == "message_updated"
        assert edit["data"]["changes"] == ["content", "edited_at", "edit_history"]
        assert edit["data"]["message"]["content"] == "Great, then I'll order tomorrow."
        assert conversation["event"] == "conversation_updated"
        assert conversation["data"]["conversation"]["last_message"]["content"] == "Great, then I'll order tomorrow."
        await env.fixture("message_edit")
        assert await settle(env, ws) == []

        text_id = str((await env.message(fixture_mid("customer_text")))["_id"])
        await env.fixture("customer_unsend")
        [deleted] = await settle(env, ws)
        assert deleted["event"] == "message_deleted" and deleted["data"] == {"message_id": text_id}
        await env.fixture("customer_unsend")
        assert await settle(env, ws) == []
    finally:
        ws.close()


async def test_media_progress_reaches_the_room(env: EventsEnv) -> None:
    url = env.cdn.add("ws-photo", body=JPEG, content_type="image/jpeg")
    await env.fixture("customer_text")
    conversation_id = str((await env.message(fixture_mid("customer_text")))["conversation_id"])
    await env.core.profiles.idle()
    ws = await WsClient.connect(env.server.base_url, env.token)
    try:
        await ws.subscribe(conversation_id=conversation_id)
        answer = await env.post(fixture_with("customer_image", urls=[url]))
        message_id = answer["data"]["message"]["id"]
        chat = await ws.next_event()
        assert chat["event"] == "chat_message" and chat["data"]["message"]["processing_status"] == "pending"
        while True:
            frame = await ws.next_event()
            if frame["event"] == "message_updated":
                break
        assert frame["data"]["message"]["id"] == message_id
        assert frame["data"]["message"]["processing_status"] == "completed"
        assert frame["data"]["message"]["media_file"].startswith("/media/")
        assert "processing_status" in frame["data"]["changes"]
        media = await env.client.get(frame["data"]["message"]["media_file"], token=env.token)
        assert media.code == 200 and media.body == JPEG
    finally:
        ws.close()
