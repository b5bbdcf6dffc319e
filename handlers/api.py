"""The REST API of API.md §3: inbox reads (inbox tokens) and admin writes (admin token)."""

from __future__ import annotations

from handlers.base import BaseHandler
from server.api.auth import ADMIN, INBOX


class ChannelsHandler(BaseHandler):
    async def get(self) -> None:
        """List the caller's channels."""
        principal = await self.authorize(INBOX)
        self.write_json(await self.core.inbox.list_channels(principal))

    async def post(self) -> None:
        """Connect (or reconnect) a channel; admin only."""
        await self.authorize(ADMIN)
        status, body = await self.core.accounts.connect_channel(self.json_body())
        self.write_json(body, status)


class ChannelHandler(BaseHandler):
    async def delete(self, channel_id: str) -> None:
        """Disconnect a channel, keeping its data; admin only."""
        await self.authorize(ADMIN)
        self.write_json(await self.core.inbox.disconnect_channel(channel_id))


class SubscriptionHandler(BaseHandler):
    async def get(self, channel_id: str) -> None:
        """The account's webhook subscription, read back from Meta now; admin only."""
        await self.authorize(ADMIN)
        self.write_json(await self.core.accounts.subscription_of(channel_id))

    async def post(self, channel_id: str) -> None:
        """Subscribe the account to the fields igsync handles; admin only."""
        await self.authorize(ADMIN)
        self.write_json(await self.core.accounts.subscription_of(channel_id, subscribe=True))


class HistoryHandler(BaseHandler):
    async def get(self, channel_id: str) -> None:
        """The channel's history import and gap repairs; admin only."""
        await self.authorize(ADMIN)
        self.write_json(await self.core.accounts.history_of(channel_id))

    async def post(self, channel_id: str) -> None:
        """Import the channel's history in the background (202); admin only."""
        await self.authorize(ADMIN)
        body = self.json_body() if self.request.body else None
        status, answer = await self.core.accounts.start_history(channel_id, body)
        self.write_json(answer, status)


class TokensHandler(BaseHandler):
    async def post(self) -> None:
        """Issue an inbox token for an owner; admin only."""
        await self.authorize(ADMIN)
        self.write_json(await self.core.inbox.create_token(self.json_body()), 201)


class ConversationsHandler(BaseHandler):
    async def get(self) -> None:
        """List the caller's conversations, most recently updated first, one page."""
        principal = await self.authorize(INBOX)
        self.write_json(
            await self.core.inbox.list_conversations(
                principal,
                channel_id=self.get_query_argument("channel_id", None),
                updated_since=self.get_query_argument("updated_since", None),
                limit=self.get_query_argument("limit", None),
                cursor=self.get_query_argument("cursor", None),
            )
        )


class ConversationHandler(BaseHandler):
    async def get(self, conversation_id: str) -> None:
        """Get one of the caller's conversations."""
        principal = await self.authorize(INBOX)
        self.write_json(await self.core.inbox.get_conversation(principal, conversation_id))


class ConversationReadHandler(BaseHandler):
    async def post(self, conversation_id: str) -> None:
        """Mark a conversation read (unread count to zero) and tell the owner's other inboxes."""
        principal = await self.authorize(INBOX)
        self.write_json(await self.core.inbox.mark_conversation_read(principal, conversation_id))


class MessagesHandler(BaseHandler):
    async def get(self, conversation_id: str) -> None:
        """List a conversation's messages, one page."""
        principal = await self.authorize(INBOX)
        self.write_json(
            await self.core.inbox.list_messages(
                principal,
                conversation_id,
                after=self.get_query_argument("after", None),
                before=self.get_query_argument("before", None),
                limit=self.get_query_argument("limit", None),
            )
        )

    async def post(self, conversation_id: str) -> None:
        """Send a message through igsync: stored first (202, pending), then sent to Instagram."""
        principal = await self.core.sends.principal(self.request.headers.get("Authorization"))
        status, body = await self.core.sends.send(principal, conversation_id, self.json_body())
        self.write_json(body, status)


class RetrySendHandler(BaseHandler):
    async def post(self, message_id: str) -> None:
        """Send a failed message again (202); 409 when it did not fail."""
        principal = await self.core.sends.principal(self.request.headers.get("Authorization"))
        status, body = await self.core.sends.retry(principal, message_id)
        self.write_json(body, status)


routes = [
    (r"/api/v1/channels", ChannelsHandler),
    (r"/api/v1/channels/([^/]+)", ChannelHandler),
    (r"/api/v1/channels/([^/]+)/subscription", SubscriptionHandler),
    (r"/api/v1/channels/([^/]+)/history", HistoryHandler),
    (r"/api/v1/tokens", TokensHandler),
    (r"/api/v1/conversations", ConversationsHandler),
    (r"/api/v1/conversations/([^/]+)", ConversationHandler),
    (r"/api/v1/conversations/([^/]+)/read", ConversationReadHandler),
    (r"/api/v1/conversations/([^/]+)/messages", MessagesHandler),
    (r"/api/v1/messages/([^/]+)/retry", RetrySendHandler),
]
