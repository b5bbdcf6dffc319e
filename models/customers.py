"""The ``customers`` collection: one document per (channel, Instagram-scoped user id)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from models.atomic import get_or_insert, update_get
from models.guarded import field, guarded_pipeline, lit
from models.sharding import in_channel
from models.timeutil import utcnow

# The fields of a customer that the API shows (Conversation.customer). ``profile_pic`` is
# Instagram's link (it expires); ``profile_pic_file`` our copy of it, once made (``/media/{id}``).
PROFILE_FIELDS = ("first_name", "last_name", "username", "profile_pic", "profile_pic_file", "enhanced_data_fetched")
# Before any look-up: what a customer never checked compares as.
NEVER = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class CustomerRepository:
    def __init__(self, db: AsyncDatabase) -> None:
        self.coll = db["customers"]

    async def ensure_indexes(self) -> None:
        """Create the collection's indexes (idempotent)."""
        await self.coll.create_index(
            [("channel_id", ASCENDING), ("instagram_id", ASCENDING)],
            unique=True,
            name="channel_instagram_id_unique",
        )
        # Customers whose look-up waits for the channel's re-authorisation (sparse: few, and
        # found without reading the channel's every customer).
        await self.coll.create_index([("awaiting_reauth", ASCENDING)], sparse=True, name="awaiting_reauth")

    async def get_or_create(self, channel_id: ObjectId, instagram_id: str) -> tuple[dict[str, Any], bool]:
        """The customer (channel, Instagram id), created atomically if missing; (doc, created)."""
        now = utcnow()
        key = {"channel_id": channel_id, "instagram_id": instagram_id}
        new = {
            "_id": ObjectId(),
            **key,
            "source": "instagram",
            "first_name": None,
            "last_name": None,
            "username": None,
            "profile_pic": None,
            "profile_pic_file": None,
            "enhanced_data_fetched": False,
            "created_at": now,
            "updated_at": now,
        }
        return await get_or_insert(self.coll, key, new)

    async def get(self, customer_id: ObjectId, channel_id: ObjectId | None = None) -> dict[str, Any] | None:
        """A customer by id (routed to its shard when the channel is given)."""
        return await self.coll.find_one(in_channel({"_id": customer_id}, channel_id))

    async def update_profile(
        self,
        customer_id: ObjectId,
        fields: dict[str, Any],
        *,
        awaiting_reauth: ObjectId | None = None,
        channel_id: ObjectId | None = None,
    ) -> dict[str, Any] | None:
        """Set profile fields on a customer; the updated document. ``awaiting_reauth``: the
        look-up waits for this channel's re-authorisation (cleared by any other outcome)."""
        update: dict[str, Any] = {"$set": {**fields, "updated_at": utcnow()}}
        if awaiting_reauth is not None:
            update["$set"]["awaiting_reauth"] = awaiting_reauth
        else:
            update["$unset"] = {"awaiting_reauth": ""}
        return await update_get(self.coll, in_channel({"_id": customer_id}, channel_id), update)

    async def awaiting_reauth(self, channel_id: ObjectId) -> list[dict[str, Any]]:
        """Customers whose profile look-up waits for this channel to be reconnected."""
        return await self.coll.find({"awaiting_reauth": channel_id}).to_list(None)

    async def claim_profile_refresh(
        self,
        customer_id: ObjectId,
        *,
        checked_before: dt.datetime,
        statuses: tuple[str | None, ...],
        channel_id: ObjectId | None = None,
    ) -> bool:
        """Take the right to look the customer up again — when the last look-up ended in one of
        ``statuses`` (``None``: never finished) before ``checked_before`` — by moving
        ``profile_checked_at`` to now. Atomic: of two processes asking at once, one wins."""
        guard = {
            "$and": [
                {"$in": [{"$ifNull": [field("profile_status"), None]}, lit(list(statuses))]},
                {"$lt": [{"$ifNull": [field("profile_checked_at"), lit(NEVER)]}, lit(checked_before)]},
            ]
        }
        pipeline = guarded_pipeline(guard, {"profile_checked_at": lit(utcnow())})
        result = await self.coll.update_one(in_channel({"_id": customer_id}, channel_id), pipeline)
        return result.modified_count == 1

    async def set_picture_copy(
        self, customer_id: ObjectId, source_url: str, file_url: str, channel_id: ObjectId | None = None
    ) -> dict[str, Any] | None:
        """Point the customer at our copy of ``source_url``; None (nothing changed) when the
        customer's picture is another one by now."""
        return await update_get(
            self.coll,
            in_channel({"_id": customer_id, "profile_pic": source_url}, channel_id),
            {"$set": {"profile_pic_file": file_url, "updated_at": utcnow()}},
        )
