"""Fixtures of the repository tests: a database of their own on the session's embedded store."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from models.store import mongo_client
from server.app.embedded import EmbeddedStores
from tests.support.commands import Commands


@pytest.fixture
async def db(stores: EmbeddedStores, request: pytest.FixtureRequest) -> AsyncIterator[tuple[Any, Commands]]:
    """A fresh database (named after the test module) and the commands sent to it, by name."""
    commands = Commands()
    client = mongo_client(stores.mongo_url or "", listeners=[commands])
    prefix = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")[:20]
    database = client[f"{prefix}_{uuid.uuid4().hex[:12]}"]
    yield database, commands
    await client.drop_database(database.name)
    await client.close()
