"""The ``channels`` collection: one connected Instagram professional account per document.

A channel is found by the webhook's ``entry.id``, which Meta fills with the account's
``user_id`` (Instagram Login) or the Page id (Facebook Login): both are matched.
"""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from models.atomic import update_get, upsert_get
from models.ids import as_object_id
from models.timeutil import utcnow


class ChannelRepository:
    def __init__(self, db: AsyncDatabase) -> None:
        self.coll = db["channels"]

    async def ensure_indexes(self) -> None:
        await self.coll.create_index([("page_id", ASCENDING)], unique=True, name="page_id_unique")
        await self.coll.create_index([("instagram_user_id", ASCENDING)], name="instagram_user_id")
        await self.coll.create_index([("owner.id", ASCENDING)], name="owner_id")
        await self.coll.create_index([("owner.email", ASCENDING)], name="owner_email")

    async def connect(self, page_id: str, fields: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create the channel or update and reconnect it; ``(channel, was_created)``."""
        now = utcnow()
        update: dict[str, Any] = {
            "$set": {**fields, "is_connect": True, "updated_at": now},
            "$setOnInsert": {"page_id": page_id, "created_at": now},
        }
        for key in ("ai_enabled",):
            if key not in fields:
                update["$setOnInsert"][key] = True
        if fields.get("access_token"):
            # A new token is the re-authorisation a token-expired channel was waiting for.
            update["$set"]["needs_reauth"] = False
        return await upsert_get(self.coll, {"page_id": page_id}, update)

    async def find_connected_by_account(self, account_id: str) -> dict[str, Any] | None:
        return await self.coll.find_one(
            {"$or": [{"page_id": account_id}, {"instagram_user_id": account_id}], "is_connect": True}
        )

    async def get(self, channel_id: str | ObjectId) -> dict[str, Any] | None:
        oid = as_object_id(channel_id)
        return None if oid is None else await self.coll.find_one({"_id": oid})

    async def list(self, owner_id: Any | None = None) -> list[dict[str, Any]]:
        query = {} if owner_id is None else {"owner.id": owner_id}
        return await self.coll.find(query).sort("created_at", ASCENDING).to_list(None)

    async def ids_of_owner(self, owner_id: Any) -> list[ObjectId]:
        docs = await self.coll.find({"owner.id": owner_id}, {"_id": 1}).to_list(None)
        return [d["_id"] for d in docs]

    async def disconnect(self, channel_id: str | ObjectId) -> dict[str, Any] | None:
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
        await self.coll.update_one({"_id": channel_id}, {"$set": {**fields, "updated_at": utcnow()}})
