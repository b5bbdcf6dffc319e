"""The media queue's claim against a real store: a stale read never wins a later attempt."""

from __future__ import annotations

import datetime as dt
from typing import Any

from bson import ObjectId

from models.timeutil import utcnow
from tests.support.server import RunningServer


async def test_a_claim_from_a_stale_read_does_not_take_the_next_attempt(server: RunningServer) -> None:
    """Worker B reads the job, worker A claims it and gives it back (PENDING, no owner: the
    state B read, again). B's take must fail on the attempt count, so B reads again and its
    claim is the job's real next attempt — never a second run of one attempt."""
    jobs = server.core.store.media_jobs
    await jobs.enqueue([{"message_id": ObjectId(), "type": "image", "url": "https://cdn.invalid/x", "index": 0}])
    stale = await jobs.coll.find_one({})
    assert stale is not None and stale["attempts"] == 0

    first = await jobs.claim("worker-a", 30)
    assert first is not None and first["attempts"] == 1
    assert await jobs.retry(first, utcnow() - dt.timedelta(seconds=1), "http_503")

    original = jobs.coll.find_one
    reads = []

    async def find_one(*args: Any, **kwargs: Any) -> Any:
        reads.append(1)
        return stale if len(reads) == 1 else await original(*args, **kwargs)

    jobs.coll.find_one = find_one  # type: ignore[method-assign]
    try:
        second = await jobs.claim("worker-b", 30)
    finally:
        jobs.coll.find_one = original  # type: ignore[method-assign]
    stored = await jobs.coll.find_one({})
    assert second is not None and stored is not None
    assert second["attempts"] == stored["attempts"] == 2
    assert len(reads) >= 2  # the stale take failed and the job was read again
