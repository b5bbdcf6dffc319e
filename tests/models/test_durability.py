"""Durable before acknowledged: every write behind an answer is journaled with the configured
write concern (the embedded store fsyncs a commit only when ``writeConcern.j`` asks for it, so a
write without it can vanish in a crash after Meta was answered 200)."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import monitoring

from config import ConfigError, Settings
from models.sharding import client_bulk_write_parts
from server.app.embedded import EmbeddedStores
from tests.support.dedup import mark_sent, new_mid, ok_body
from tests.support.helpers import messaging_body, text_item
from tests.support.server import connect_tenant, make_settings, start_server, stop_server

WRITE_COMMANDS = {"insert", "update", "delete", "findAndModify"}


class WriteConcernRecorder(monitoring.CommandListener):
    """Every write command the server sends, with the write concern it carried."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        concern = event.command.get("writeConcern")
        if event.command_name in WRITE_COMMANDS:
            self.writes.append((event.command_name, event.command.get(event.command_name), concern))
        elif event.command_name == "bulkWrite":  # several collections in one command
            self.writes += [
                (name, collection, concern) for name, collection, _ in client_bulk_write_parts(event.command)
            ]

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.mark.parametrize("write_concern, expected_w", [("majority", "majority"), ("1", 1)])
async def test_every_write_of_webhook_mark_sent_and_admin_api_is_journaled(
    stores: EmbeddedStores, tmp_path: Any, write_concern: str, expected_w: Any
) -> None:
    recorder = WriteConcernRecorder()
    settings = make_settings(stores, tmp_path, mongo_write_concern=write_concern)
    server = await start_server(settings, mongo_listeners=[recorder])
    try:
        await connect_tenant(server.client)
        response = await server.client.webhook(messaging_body(text_item(new_mid(), "hello")))
        assert response.code == 200
        ok_body(await mark_sent(server.client, "an AI answer"))
        await server.core.audit.flush()  # the webhook's audit copy is written after its answer
        collections = {collection for _, collection, _ in recorder.writes}
        # The three answers above wrote channels/tokens (admin API), customers, conversations,
        # messages and the raw webhook (webhook), and the mark (mark-sent).
        assert {"channels", "tokens", "customers", "conversations", "messages", "webhook_events"} <= collections
        unjournaled = [(name, coll, wc) for name, coll, wc in recorder.writes if not wc or wc.get("j") is not True]
        assert unjournaled == []
        assert {wc["w"] for _, _, wc in recorder.writes} == {expected_w}
    finally:
        await stop_server(server)


def test_write_concern_defaults_to_majority() -> None:
    assert Settings.from_env({}).mongo_write_concern == "majority"
    assert Settings.from_env({"IGSYNC_MONGO_WRITE_CONCERN": "2"}).mongo_write_concern == "2"


@pytest.mark.parametrize("value", ["0", "-1", "all", "1.5"])
def test_write_concern_setting_refuses_what_cannot_be_durable(value: str) -> None:
    with pytest.raises(ConfigError, match="IGSYNC_MONGO_WRITE_CONCERN"):
        Settings.from_env({"IGSYNC_MONGO_WRITE_CONCERN": value})
