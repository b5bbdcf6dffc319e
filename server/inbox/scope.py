"""Owner scoping: what a principal may see, and the one answer for what it may not.

Another owner's channel, conversation or message is ``404`` — the same answer as a missing
one, so ids do not leak. The REST API (:class:`server.inbox.service.InboxService`) and the
WebSocket subscriptions (:mod:`server.realtime.session`) both ask here.
"""

from __future__ import annotations

from typing import Any

from bson import ObjectId

from models.ids import as_object_id
from models.store import Store
from server.api.auth import Principal
from server.api.errors import ApiError, not_found


class OwnerScope:
    """Look-ups of one owner's channels, conversations and messages."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def owned_channel(self, principal: Principal, channel_id: str) -> dict[str, Any]:
        """The principal's channel, else 404."""
        channel = await self.store.channels.get(channel_id)
        if channel is None or channel.get("owner", {}).get("id") != principal.owner_id:
            raise not_found("channel")
        return channel

    async def conversation(self, conversation_id: str, channel_ids: list[ObjectId] | None = None) -> dict[str, Any]:
        """A conversation (of one of ``channel_ids``, else whoever owns it: internal callers), else 404."""
        oid = as_object_id(conversation_id)
        conversation = None if oid is None else await self.store.conversations.get(oid, channel_ids)
        if conversation is None:
            raise not_found("conversation")
        return conversation

    async def owned_conversation(self, principal: Principal, conversation_id: str) -> dict[str, Any]:
        """The principal's conversation, else 404. Looked up among the owner's channels: the
        query names them, so a sharded cluster asks only their shards."""
        channel_ids = await self.store.channels.ids_of_owner(principal.owner_id)
        return await self.conversation(conversation_id, channel_ids)

    async def owned_message(
        self, principal: Principal, conversation: dict[str, Any], message_id: str, param: str
    ) -> dict[str, Any]:
        """A message of ``conversation`` (already owner-checked), else 404 naming ``param``."""
        oid = as_object_id(message_id)
        message = None if oid is None else await self.store.messages.get(oid, conversation["channel_id"])
        if message is None or message["conversation_id"] != conversation["_id"]:
            raise ApiError(404, "not_found", f"No such message ({param}).")
        return message
