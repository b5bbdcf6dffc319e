"""The inbox's read API and the admin API as plain functions of (principal, inputs).

Owns API.md §3: owner scoping (another owner's channel, conversation or message is
``404`` — the same answer as a missing one, so ids do not leak), cursor pagination, and
the admin operations on channels and tokens. Handlers only parse the request and call in.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from models import serializers
from models.store import Store
from models.timeutil import parse_iso
from server.api.auth import Principal
from server.api.errors import ApiError, not_found, validation_error
from server.api.pagination import decode_cursor, encode_cursor, parse_limit
from server.api.schemas import TOKEN_INPUT, load
from server.inbox import events
from server.inbox.scope import OwnerScope
from server.inbox.threads import ChannelCache


class InboxService(OwnerScope):
    """The owner-scoped reads and the admin writes of the REST API."""

    def __init__(
        self, store: Store, channels: ChannelCache, *, publish: Callable[[list[events.Event]], Awaitable[None]]
    ) -> None:
        super().__init__(store)
        self.channel_cache = channels
        self.publish = publish

    # -- reads -------------------------------------------------------------------------

    async def list_channels(self, principal: Principal) -> dict[str, Any]:
        """The principal's channels."""
        docs = await self.store.channels.list(owner_id=principal.owner_id)
        return {"channels": [serializers.channel(d) for d in docs]}

    async def list_conversations(
        self,
        principal: Principal,
        *,
        channel_id: str | None,
        updated_since: str | None,
        limit: str | None,
        cursor: str | None,
    ) -> dict[str, Any]:
        """One page of the principal's conversations, most recently updated first."""
        page_size = parse_limit(limit)
        if channel_id:
            channel_ids = [(await self.owned_channel(principal, channel_id))["_id"]]
        else:
            channel_ids = await self.store.channels.ids_of_owner(principal.owner_id)
        since = None
        if updated_since is not None:
            try:
                since = parse_iso(updated_since)
            except ValueError:
                raise validation_error({"updated_since": ["must be an ISO-8601 time"]}) from None
        before = decode_cursor(cursor) if cursor else None
        docs, has_more = await self.store.conversations.page(
            channel_ids, limit=page_size, updated_since=since, before=before
        )
        next_cursor = None
        if has_more and docs:
            last = docs[-1]
            next_cursor = encode_cursor(last["updated_at"], last["_id"])
        return {"conversations": [serializers.conversation(d) for d in docs], "next_cursor": next_cursor}

    async def get_conversation(self, principal: Principal, conversation_id: str) -> dict[str, Any]:
        """One of the principal's conversations."""
        return {"conversation": serializers.conversation(await self.owned_conversation(principal, conversation_id))}

    async def list_messages(
        self,
        principal: Principal,
        conversation_id: str,
        *,
        after: str | None,
        before: str | None,
        limit: str | None,
    ) -> dict[str, Any]:
        """One page of a conversation's messages, oldest first, after/before a message."""
        page_size = parse_limit(limit)
        conversation = await self.owned_conversation(principal, conversation_id)
        after_doc = await self.owned_message(principal, conversation, after, "after") if after else None
        before_doc = await self.owned_message(principal, conversation, before, "before") if before else None
        rows, has_more = await self.store.messages.page(
            conversation["channel_id"], conversation["_id"], limit=page_size, after=after_doc, before=before_doc
        )
        return {"messages": [serializers.ws_message(r) for r in rows], "has_more": has_more}

    async def mark_conversation_read(self, principal: Principal, conversation_id: str) -> dict[str, Any]:
        """Clear the unread count, and tell the owner's other open inboxes (other tabs, agents)."""
        conversation = await self.owned_conversation(principal, conversation_id)
        updated = (
            await self.store.conversations.mark_read(conversation["_id"], conversation["channel_id"]) or conversation
        )
        await self.publish([events.conversation_updated(updated)])
        return {"conversation": serializers.conversation(updated)}

    # -- admin -------------------------------------------------------------------------

    async def disconnect_channel(self, channel_id: str) -> dict[str, Any]:
        """Disconnect a channel, keeping its data."""
        channel = await self.store.channels.disconnect(channel_id)
        if channel is None:
            raise not_found("channel")
        self.channel_cache.invalidate()
        return {"channel": serializers.channel(channel)}

    async def create_token(self, payload: Any) -> dict[str, Any]:
        """Issue an inbox token for an owner named by e-mail or id."""
        data = load(TOKEN_INPUT, payload)
        if "owner_email" in data:
            owner = await self.store.channels.find_owner(email=data["owner_email"])
        else:
            owner = await self.store.channels.find_owner(owner_id=data["owner_id"])
        if owner is None:
            raise ApiError(404, "not_found", "No channel has this owner; connect a channel for them first.")
        token = await self.store.tokens.create(owner, label=data.get("label"))
        return {"token": token, "owner": owner}
