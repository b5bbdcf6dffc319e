"""Poison items fail alone: a webhook item the store cannot hold is answered ``invalid_item``
(the request stays 200, since a redelivery would fail the same way), nothing is created for it,
and the items around it — in its body or in the same group-committed batch — are stored."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from bson.errors import InvalidDocument

from models.group_commit import GroupInserter
from server.ingest import parse as wp
from tests.support.dedup import new_mid
from tests.support.helpers import ACCOUNT_ID, CUSTOMER_A, messaging_body, text_item
from tests.support.server import RunningServer, Tenant


def _results(response: Any) -> list[dict[str, Any]]:
    assert response.code == 200, response.body
    body = orjson.loads(response.body)
    return body["results"] if "results" in body else [body]


def _with_sender(sender_id: Any) -> dict[str, Any]:
    item = text_item(new_mid(), "junk")
    item["sender"] = {"id": sender_id}
    return item


def _with_mid(mid: Any) -> dict[str, Any]:
    item = text_item("placeholder", "junk")
    item["message"]["mid"] = mid
    return item


BAD_ITEMS = {
    "sender id is a list": _with_sender(["6200000000000101", "1"]),
    "sender id is an operator": _with_sender({"$ne": None}),
    "sender id is text": _with_sender("customer-a"),
    "sender id is a bool": _with_sender(True),
    "mid is a list": _with_mid(["a", "b"]),
    "mid is an object": _with_mid({"$gt": ""}),
    "mid is empty": _with_mid(""),
    "mid is too long": _with_mid("m" * (wp.MAX_MID_CHARS + 1)),
    "mid holds NUL": _with_mid("ab\x00cd"),
}


@pytest.mark.parametrize("name", list(BAD_ITEMS))
async def test_an_item_with_an_invalid_id_creates_nothing(server: RunningServer, tenant: Tenant, name: str) -> None:
    good = text_item(new_mid(), "a real question")
    [bad_result, good_result] = _results(await server.client.webhook(messaging_body(BAD_ITEMS[name], good)))
    assert bad_result["error"] == "invalid_item" and bad_result["status"] == "error"
    assert good_result["status"] == "success"
    db = server.core.store.db
    assert await db.customers.distinct("instagram_id") == [CUSTOMER_A]
    assert await db.conversations.count_documents({}) == 1
    assert await db.messages.count_documents({}) == 1


async def test_reads_reactions_and_edits_need_a_valid_mid(server: RunningServer, tenant: Tenant) -> None:
    base = {"sender": {"id": CUSTOMER_A}, "recipient": {"id": ACCOUNT_ID}, "timestamp": 1_763_600_000_000}
    items = [
        {**base, "read": {"mid": ["x"]}},
        {**base, "reaction": {"mid": {"a": 1}, "action": "react", "reaction": "love"}},
        {**base, "message_edit": {"mid": 12, "text": "x", "num_edit": 1}},
    ]
    results = _results(await server.client.webhook(messaging_body(*items)))
    assert [r["error"] for r in results] == ["invalid_item"] * 3
    assert await server.core.store.db.orphan_events.count_documents({}) == 0


async def test_keys_of_ads_context_data_are_made_safe_for_mongodb(server: RunningServer, tenant: Tenant) -> None:
    item = text_item(new_mid(), "from an ad")
    item["message"]["referral"] = {
        "ref": "spring",
        "ad_id": "123",
        "source": "ADS",
        "type": "OPEN_THREAD",
        "ads_context_data": {"ad_\x00title": "Spring", "$where": "1", "photo.url": "https://x", "": "empty"},
    }
    [result] = _results(await server.client.webhook(messaging_body(item)))
    assert result["status"] == "success"
    stored = await server.core.store.db.messages.find_one({"mid": item["message"]["mid"]})
    assert stored is not None
    assert stored["referral"]["ads_context_data"] == {
        "ad_title": "Spring",
        "_where": "1",
        "photo_url": "https://x",
        "_": "empty",
    }


async def test_a_document_the_store_refuses_fails_alone_in_its_batch(
    server: RunningServer, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: were a key ever to slip past the parser, the refused document fails
    its own item; the webhooks that shared its group-committed insert are stored."""
    monkeypatch.setattr(wp, "mongo_safe_key", lambda key: key)
    poison = text_item(new_mid(), "poison")
    poison["message"]["referral"] = {"ref": "r", "ads_context_data": {"bad\x00key": "v"}}
    bodies = [messaging_body(text_item(new_mid(), f"neighbour {i}")) for i in range(7)]
    bodies.insert(3, messaging_body(poison))
    responses = await asyncio.gather(*(server.client.webhook(body) for body in bodies))
    results = [_results(r)[0] for r in responses]
    assert results[3]["error"] == "invalid_item"
    assert [r["status"] for i, r in enumerate(results) if i != 3] == ["success"] * 7
    assert await server.core.store.db.messages.count_documents({}) == 7
    assert server.core.metrics.webhook_events.labels(kind="invalid", direction="none")._value.get() == 1


async def test_group_inserter_retries_a_refused_batch_one_by_one(server: RunningServer) -> None:
    coll = server.core.store.db["poison_batch"]
    inserter = GroupInserter(coll)
    docs: list[dict[str, Any]] = [{"_id": i, "v": i} for i in range(6)]
    docs[2]["bad\x00key"] = 1
    outcomes = await asyncio.gather(*(inserter.insert(doc) for doc in docs), return_exceptions=True)
    assert isinstance(outcomes[2], InvalidDocument)
    assert [o for i, o in enumerate(outcomes) if i != 2] == [None] * 5
    assert sorted(await coll.distinct("_id")) == [0, 1, 3, 4, 5]
