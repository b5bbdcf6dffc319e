"""The ``customers`` collection: one document per (channel, Instagram-scoped user id)."""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from models.atomic import upsert_get
from models.timeutil import utcnow

# The fields of a customer that the API shows (Conversation.customer).
PROFILE_FIELDS = ("first_name", "last_name", "username", "profile_pic", "enhanced_data_fetched")


class CustomerRepository:
    def __init__(self, db: AsyncDatabase) -> None:
        self.coll = db["customers"]

    async def ensure_indexes(self) -> None:
        await self.coll.create_index(
            [("channel_id", ASCENDING), ("instagram_id", ASCENDING)],
            unique=True,
            name="channel_instagram_id_unique",
        )

    async def get_or_create(self, channel_id: ObjectId, instagram_id: str) -> tuple[dict[str, Any], bool]:
        now = utcnow()
        return await upsert_get(
            self.coll,
            {"channel_id": channel_id, "instagram_id": instagram_id},
            {
                "$setOnInsert": {
                    "source": "instagram",
                    "first_name": None,
                    "last_name": None,
                    "username": None,
                    "profile_pic": None,
                    "enhanced_data_fetched": False,
                    "created_at": now,
                    "updated_at": now,
                }
            },
        )

    async def get(self, customer_id: ObjectId) -> dict[str, Any] | None:
        return await self.coll.find_one({"_id": customer_id})

    async def update_profile(self, customer_id: ObjectId, fields: dict[str, Any]) -> dict[str, Any] | None:
        # update_one + find_one, not find_one_and_update: SecantusDB's findAndModify scans
        # the collection whatever the filter (see models/guarded.py).
        result = await self.coll.update_one({"_id": customer_id}, {"$set": {**fields, "updated_at": utcnow()}})
        return await self.coll.find_one({"_id": customer_id}) if result.matched_count else None
