"""The ``channels`` collection: one connected Instagram professional account per document.

A channel is found by the webhook's ``entry.id``, which Meta fills with the account's
``user_id`` (Instagram Login) or the Page id (Facebook Login): both are matched.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from models.atomic import update_get, upsert_get
from models.ids import as_object_id
from models.timeutil import utcnow

# How a channel was connected (``login``): the host, endpoints and webhook fields follow from it.
INSTAGRAM_LOGIN = "instagram_login"  # graph.instagram.com, an Instagram-scoped user token
FACEBOOK_LOGIN = "facebook_login"  # graph.facebook.com, a Page token (Messenger Platform for Instagram)
LOGINS = (INSTAGRAM_LOGIN, FACEBOOK_LOGIN)


def login_of(channel: dict[str, Any]) -> str:
    """How a channel was connected; channels from before the field existed used Instagram Login."""
    login = channel.get("login")
    return login if login in LOGINS else INSTAGRAM_LOGIN


class ChannelRepository:
    def __init__(self, db: AsyncDatabase) -> None:
        self.coll = db["channels"]

    async def ensure_indexes(self) -> None:
        """Create the collection's indexes (idempotent)."""
        await self.coll.create_index([("page_id", ASCENDING)], unique=True, name="page_id_unique")
        await self.coll.create_index([("instagram_user_id", ASCENDING)], name="instagram_user_id")
        await self.coll.create_index([("owner.id", ASCENDING)], name="owner_id")
        await self.coll.create_index([("owner.email", ASCENDING)], name="owner_email")

    async def connect(self, page_id: str, fields: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create the channel or update and reconnect it; ``(channel, was_created)``."""
        now = utcnow()
        update: dict[str, Any] = {
            # connected_at: silence (no webhook) is measured from here for a channel never heard from.
            "$set": {**fields, "is_connect": True, "updated_at": now, "connected_at": now},
            "$setOnInsert": {"page_id": page_id, "created_at": now},
        }
        for key in ("ai_enabled",):
            if key not in fields:
                update["$setOnInsert"][key] = True
        if fields.get("access_token"):
            # A new token is the re-authorisation a token-expired channel was waiting for.
            update["$set"]["needs_reauth"] = False
            update["$set"]["token_set_at"] = now
            update["$set"].setdefault("token_expires_at", None)
            update["$unset"] = {"token_refresh_until": ""}
        return await upsert_get(self.coll, {"page_id": page_id}, update)

    async def find_by_page_id(self, page_id: str) -> dict[str, Any] | None:
        """A channel by its page id (connected or not)."""
        return await self.coll.find_one({"page_id": page_id})

    async def find_connected_by_account(self, account_id: str) -> dict[str, Any] | None:
        """The connected channel whose page id or Instagram user id is ``account_id``."""
        return await self.coll.find_one(
            {"$or": [{"page_id": account_id}, {"instagram_user_id": account_id}], "is_connect": True}
        )

    async def get(self, channel_id: str | ObjectId) -> dict[str, Any] | None:
        """A channel by id (None for a malformed or unknown id)."""
        oid = as_object_id(channel_id)
        return None if oid is None else await self.coll.find_one({"_id": oid})

    async def list(self, owner_id: Any | None = None) -> list[dict[str, Any]]:
        """Every channel, or one owner's, oldest first."""
        query = {} if owner_id is None else {"owner.id": owner_id}
        return await self.coll.find(query).sort("created_at", ASCENDING).to_list(None)

    async def ids_of_owner(self, owner_id: Any) -> list[ObjectId]:
        """The ids of one owner's channels."""
        docs = await self.coll.find({"owner.id": owner_id}, {"_id": 1}).to_list(None)
        return [d["_id"] for d in docs]

    async def disconnect(self, channel_id: str | ObjectId) -> dict[str, Any] | None:
        """Mark a channel disconnected (its data stays); the updated channel or None."""
        oid = as_object_id(channel_id)
        if oid is None:
            return None
        return await update_get(self.coll, {"_id": oid}, {"$set": {"is_connect": False, "updated_at": utcnow()}})

    async def find_owner(self, *, email: str | None = None, owner_id: Any = None) -> dict[str, Any] | None:
        """The ``owner`` object of a channel owned by this email or id, if any."""
        query = {"owner.email": email} if email is not None else {"owner.id": owner_id}
        doc = await self.coll.find_one(query, {"owner": 1})
        return None if doc is None else doc["owner"]

    async def set_fields(self, channel_id: ObjectId, fields: dict[str, Any]) -> None:
        """Set fields on a channel, stamping ``updated_at``."""
        await self.coll.update_one({"_id": channel_id}, {"$set": {**fields, "updated_at": utcnow()}})

    async def mark_needs_reauth(self, channel_id: ObjectId, refused_token: str | None) -> dict[str, Any] | None:
        """Meta refused the channel's token (code 190): callers stop using it until the channel
        is reconnected with a new one (``connect`` clears the flag). The channel after, only
        for the call that changed it (None when it was marked already, or when the channel
        holds another token by now: a call made with the old token before a reconnect must
        not mark the new one refused)."""
        now = utcnow()
        return await update_get(
            self.coll,
            {"_id": channel_id, "access_token": refused_token, "needs_reauth": {"$ne": True}},
            {"$set": {"needs_reauth": True, "needs_reauth_since": now, "updated_at": now}},
        )

    async def claim_token_refresh(self, channel: dict[str, Any], now: dt.datetime, lease: dt.timedelta) -> bool:
        """Take the right to refresh the channel's token (of several processes, one): the
        channel must still hold the token read, and no unexpired claim."""
        result = await self.coll.update_one(
            {
                "_id": channel["_id"],
                "access_token": channel.get("access_token"),
                "$or": [{"token_refresh_until": {"$exists": False}}, {"token_refresh_until": {"$lte": now}}],
            },
            {"$set": {"token_refresh_until": now + lease}},
        )
        return result.modified_count == 1

    async def replace_token(self, channel: dict[str, Any], token: str, expires_at: dt.datetime) -> bool:
        """Store a refreshed token, if the channel still holds the one that was refreshed."""
        now = utcnow()
        result = await self.coll.update_one(
            {"_id": channel["_id"], "access_token": channel.get("access_token")},
            {
                "$set": {
                    "access_token": token,
                    "token_expires_at": expires_at,
                    "token_set_at": now,
                    "token_refreshed_at": now,
                    "updated_at": now,
                },
                "$unset": {"token_refresh_until": ""},
            },
        )
        return result.modified_count == 1

    async def touch_last_webhook(self, channel_id: ObjectId, at: dt.datetime) -> None:
        """Instagram called us for this channel at ``at``; ``$max`` never moves it back."""
        await self.coll.update_one({"_id": channel_id}, {"$max": {"last_webhook_at": at}})

    async def heard_from(self) -> list[dt.datetime | None]:
        """For every connected channel, when it last showed a sign of life: its last webhook,
        or when it was (re)connected if that is later or it never had one.

        One read of the connected channels (a few small fields each) serves every silence
        threshold: four count queries cost four scans on the embedded store.
        """
        docs = await self.coll.find(
            {"is_connect": True}, {"_id": 0, "last_webhook_at": 1, "connected_at": 1, "created_at": 1}
        ).to_list(None)
        out: list[dt.datetime | None] = []
        for doc in docs:
            times = [t for t in (doc.get("last_webhook_at"), doc.get("connected_at") or doc.get("created_at")) if t]
            out.append(max(times) if times else None)
        return out

    async def silent(self, cutoff: dt.datetime) -> list[dict[str, Any]]:
        """The silent channels themselves (for an operator; the gauge only counts them)."""
        query = {
            "is_connect": True,
            "$or": [{"last_webhook_at": {"$lt": cutoff}}, {"last_webhook_at": {"$exists": False}}],
        }
        fields = {"page_id": 1, "username": 1, "last_webhook_at": 1, "connected_at": 1}
        return await self.coll.find(query, fields).sort("last_webhook_at", ASCENDING).to_list(None)
