"""Group commit: concurrent inserts into one collection share one ``insert_many``.

Why: the store's cost is mostly per command, not per document (on the embedded SecantusDB an
``insert_one`` costs about eight documents of an ``insert_many``; on a real replica set it is one
network and journal round trip each). Under load many webhooks insert at the same time, so
while one write is in flight the next ones queue and then go together ("natural batching"):
no timer, no added latency when idle — a lone insert is sent at once, alone.

Each caller still gets its own outcome: ``insert_many(ordered=False)`` reports failures per
document, so a duplicate mid fails only the caller whose document it was, with the same
``DuplicateKeyError`` a lone ``insert_one`` would raise. A failure of the whole command (the
server is gone) fails every caller of that batch, who answer 503 as before.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

DUPLICATE_KEY = 11000
MAX_BATCH = 500


class GroupInserter:
    def __init__(self, coll: AsyncCollection, *, max_batch: int = MAX_BATCH) -> None:
        self.coll = coll
        self.max_batch = max_batch
        self._queue: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._draining = False

    async def insert(self, doc: dict[str, Any]) -> None:
        """Insert ``doc`` (which must carry its ``_id``); raise what ``insert_one`` would."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((doc, future))
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())
        await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                await self._write(batch)
        finally:
            self._draining = False

    async def _write(self, batch: list[tuple[dict[str, Any], asyncio.Future[None]]]) -> None:
        failures: dict[int, BaseException] = {}
        try:
            if len(batch) == 1:
                await self.coll.insert_one(batch[0][0])
            else:
                await self.coll.insert_many([doc for doc, _ in batch], ordered=False)
        except DuplicateKeyError as exc:  # the lone insert_one
            failures[0] = exc
        except BulkWriteError as exc:
            for error in exc.details.get("writeErrors", []):
                failures[error["index"]] = _as_exception(error)
            if exc.details.get("writeConcernErrors"):
                for i in range(len(batch)):
                    failures.setdefault(i, exc)
        except BaseException as exc:  # the whole command failed: every caller sees it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for i, (_, future) in enumerate(batch):
            if future.done():
                continue
            if i in failures:
                future.set_exception(failures[i])
            else:
                future.set_result(None)


def _as_exception(error: dict[str, Any]) -> OperationFailure:
    if error.get("code") == DUPLICATE_KEY:
        return DuplicateKeyError(error.get("errmsg", "duplicate key"), DUPLICATE_KEY, error)
    return OperationFailure(error.get("errmsg", "write failed"), error.get("code"), error)
