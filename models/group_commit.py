"""Group commit: concurrent inserts into one collection share one ``insert_many``; concurrent
updates share one ``bulk_write`` (and, for single documents, one read-back); concurrent
look-ups share one ``find``.

Why: the store's cost is mostly per command, not per document (on the embedded SecantusDB an
``insert_one`` costs about eight documents of an ``insert_many``; on a real replica set it is one
network and journal round trip each). Under load many webhooks insert at the same time, so
while one write is in flight the next ones queue and then go together ("natural batching"):
no timer, no added latency when idle — a lone insert is sent at once, alone.

Each caller still gets its own outcome: ``insert_many(ordered=False)`` reports failures per
document, so a duplicate mid fails only the caller whose document it was, with the same
``DuplicateKeyError`` a lone ``insert_one`` would raise. A failure of the whole command (the
server is gone) fails every caller of that batch, who answer 503 as before. Any other failure
of the whole command (one document the encoder or the server refuses fails an ``insert_many``
before any document is written) is retried document by document, so the bad one fails alone
and its neighbours are stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from bson import ObjectId
from pymongo import InsertOne, UpdateMany, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import (
    BulkWriteError,
    ClientBulkWriteException,
    DuplicateKeyError,
    InvalidOperation,
    OperationFailure,
    PyMongoError,
    WriteConcernError,
)
from pymongo.results import ClientBulkWriteResult

from models.errors import store_unavailable

DUPLICATE_KEY = 11000
# The error of an update that would change a document's ``_id``: how a probe says "matched".
IMMUTABLE_FIELD = 66
MAX_BATCH = 500

Request = TypeVar("Request")
Result = TypeVar("Result")


class NaturalBatcher(Generic[Request, Result]):
    """The queue every group committer shares (and the trigger dispatcher's
    ``Coalesced``): callers queue a request and wait for its own result; one task sends what
    has queued, batch after batch, until the queue is empty.

    The task starts on the loop's next turn, so callers of the same turn go together; the
    ones that queue while a command is in flight go in the next batch."""

    def __init__(self, *, max_batch: int = MAX_BATCH) -> None:
        self.max_batch = max_batch
        self._queue: list[tuple[Request, asyncio.Future[Result]]] = []
        self._draining = False

    async def _submit(self, request: Request) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._take()
                try:
                    await self._send(batch)
                except BaseException as exc:
                    # A failed command, a bug in a committer or a cancelled task must not leave
                    # its callers waiting forever: they answer with the error, the queue goes on.
                    _fail_all(batch, exc)
                    if not isinstance(exc, Exception):
                        raise
        finally:
            self._draining = False

    def _take(self) -> list[tuple[Request, asyncio.Future[Result]]]:
        batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
        return batch

    async def _send(self, batch: list[tuple[Request, asyncio.Future[Result]]]) -> None:
        raise NotImplementedError


class _Batcher(NaturalBatcher[Request, Result]):
    """A natural batcher whose commands go to one collection."""

    def __init__(self, coll: AsyncCollection, *, max_batch: int = MAX_BATCH) -> None:
        super().__init__(max_batch=max_batch)
        self.coll = coll


def _fail_all(batch: list[tuple[Any, asyncio.Future[Any]]], exc: BaseException) -> None:
    """The whole command failed (the server is gone): every caller of the batch sees it."""
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)


def refused_if_matched(coll: AsyncCollection, query: dict[str, Any]) -> UpdateOne:
    """A client ``bulkWrite`` operation that writes nothing either way: an update of ``query``
    that would change the ``_id`` — which the store refuses (error 66, :data:`IMMUTABLE_FIELD`)
    when a document matches, stopping an ordered command there. How a probe or a guard asks
    "is there such a document?" inside a write's own command."""
    return UpdateOne(query, {"$set": {"_id": ObjectId()}}, namespace=coll.full_name)


@dataclass(frozen=True)
class Guard:
    """A condition a :class:`LeadInsert` is written under: no document of ``coll`` matches
    ``query`` (the echo's "no message holds this mid yet"). Checked in the lead's own command
    where it can be — an update that matches nothing, refused when it matches (it would change
    an ``_id``), which stops the ordered command before the lead — else by ``matched``, a read
    just before (the owner's, so concurrent reads can share a query)."""

    coll: AsyncCollection
    query: dict[str, Any]
    matched: Callable[[], Awaitable[bool]]

    def operation(self) -> UpdateOne:
        """The check as a client ``bulkWrite`` operation: writes nothing either way."""
        return refused_if_matched(self.coll, self.query)


@dataclass(frozen=True)
class LeadInsert:
    """A document of another collection that must be inserted right before a document of a
    :class:`GroupInserter`: the second is written only once the first succeeded. A lone insert
    sends both in one ordered command (the echo's pairing claim and its message). With a
    ``guard``, neither is written when the guard fails."""

    coll: AsyncCollection
    doc: dict[str, Any]
    guard: Guard | None = None

    def operation(self) -> InsertOne:
        """The insert as a client ``bulkWrite`` operation."""
        return InsertOne(self.doc, namespace=self.coll.full_name)

    async def guard_holds(self) -> bool:
        """Whether the lead may be written, read now (True without a guard)."""
        return self.guard is None or not await self.guard.matched()


class GuardFailed(PyMongoError):
    """A document matched the lead's :class:`Guard`: nothing was written."""


class LeadRefused(PyMongoError):
    """The lead insert was refused by the store (``failure``: its own write error, e.g. a
    ``DuplicateKeyError``, or :class:`GuardFailed`); the document that was to follow it was
    not inserted."""

    def __init__(self, failure: BaseException) -> None:
        super().__init__(f"the lead insert was refused: {failure}")
        self.failure = failure


@dataclass(frozen=True)
class Inserted:
    """What a lone insert's command answered besides "stored" (see :meth:`GroupInserter.insert_then`)."""

    # Whether the probe matched; None: it was not asked (a batched insert, no client bulkWrite).
    probe_matched: bool | None = None
    # Whether the follower matched; None: it was not sent (the caller applies it itself).
    follower_applied: bool | None = None
    # Whether the trailer ran (after the follower, whatever the follower matched); None: not sent.
    trailer_ran: bool | None = None


# The updates after a lone insert and its probe: the follower, then the trailer if any.
Followers = tuple[UpdateOne, UpdateMany] | tuple[UpdateOne] | tuple[()]
InsertRequest = tuple[dict[str, Any], UpdateOne | None, LeadInsert | None, Followers]


class GroupInserter(_Batcher[InsertRequest, Inserted | None]):
    # Whether to send a lone insert with its probe, lead and follower as one client bulkWrite.
    # Off unless ``models.store.Store.adapt_to_server`` found a server that journals one
    # (MongoDB 8.0+, not SecantusDB): then the lead and the insert go alone and the caller reads
    # and updates itself. (Should a server refuse it after all, PyMongo raises before sending
    # anything and this turns off.)
    client_bulk_write = False

    async def insert(
        self, doc: dict[str, Any], probe: UpdateOne | None = None, lead: LeadInsert | None = None
    ) -> bool | None:
        """Insert ``doc`` (which must carry its ``_id``); raise what ``insert_one`` would.

        ``probe`` is an update refused when it matches a document (and writing nothing
        otherwise), asked right after the insert: whether it matched. A lone insert sends both
        in one ordered ``bulkWrite`` — the probe runs only once the insert succeeded, as a
        separate read after it would — and answers True or False; an insert that shares a
        batch answers None (the caller reads itself: an ordered batch would stop every later
        caller's insert at one duplicate).

        ``lead`` is inserted first (in the same ordered command when the insert goes alone,
        else in a command of its own before the batch); when the store refuses it, nothing
        else is written and :class:`LeadRefused` carries its error."""
        answer = await self.insert_then(doc, probe, lead)
        return answer.probe_matched

    async def insert_then(
        self,
        doc: dict[str, Any],
        probe: UpdateOne | None = None,
        lead: LeadInsert | None = None,
        follower: UpdateOne | None = None,
        trailer: UpdateMany | None = None,
    ) -> Inserted:
        """:meth:`insert`, and ``follower`` — an update of another collection — last in the same
        ordered command when the insert goes alone with a client ``bulkWrite``: it runs only if
        the insert succeeded and the probe did not match (a match is refused, which stops an
        ordered command). ``follower_applied`` says whether it matched; None: not sent, the
        caller applies its change itself. ``trailer`` goes after the follower, only with it, and
        runs whether or not the follower matched (a miss is no error): ``trailer_ran``."""
        followers: Followers = ()
        if self.client_bulk_write and follower is not None:
            followers = (follower,) if trailer is None else (follower, trailer)
        answer = await self._submit((doc, probe if self.client_bulk_write else None, lead, followers))
        return answer if answer is not None else Inserted()

    async def _send(self, batch: list[tuple[InsertRequest, asyncio.Future[Any]]]) -> None:
        if len(batch) == 1:
            await self._send_alone(*batch[0])
            return
        batch = await self._leads_first(batch)
        if batch:
            await self._send_many(batch)

    async def _send_alone(self, request: InsertRequest, future: asyncio.Future[Any]) -> None:
        doc, probe, lead, followers = request
        try:
            if probe is None and lead is None and not followers:
                await self.coll.insert_one(doc)
                answer = None
            elif self.client_bulk_write:
                answer = await self._insert_in_one_command(doc, probe, lead, followers)
            else:
                answer = await self._insert_separately(doc, lead)
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(answer)

    async def _insert_in_one_command(
        self, doc: dict[str, Any], probe: UpdateOne | None, lead: LeadInsert | None, followers: Followers
    ) -> Inserted | None:
        """One ordered ``bulkWrite``: the guard, the lead, the insert, the probe, the follower,
        the trailer. A failed insert raises what ``insert_one`` would have
        (:func:`_ordered_failure`); a failure after it leaves the document stored and is told
        apart by :func:`_after_insert`."""
        guard = lead.guard if lead is not None else None
        operations = [guard.operation()] if guard is not None else []
        operations += [lead.operation()] if lead is not None else []
        at = len(operations)
        operations.append(InsertOne(doc, namespace=self.coll.full_name))
        operations += [probe] if probe is not None else []
        follower_at = len(operations) if followers else None
        operations.extend(followers)
        # Verbose only with a trailer: else the reply's summary counts say enough (a probe that
        # matched is an error, so the follower is the only update that can count) and PyMongo
        # skips reading a cursor of per-statement results.
        verbose = len(followers) > 1
        try:
            result = await _client_bulk_write(self.coll, operations, ordered=True, verbose=verbose)
        except ClientBulkWriteException as exc:
            failure = _ordered_failure(exc, at, guard is not None)
            if failure is exc:  # the insert succeeded; a statement after it failed
                return _after_insert(exc, at, probe is not None, follower_at, len(followers))
            raise failure from exc
        if result is None:
            self.client_bulk_write = False
            return await self._insert_separately(doc, lead)
        if follower_at is None:
            return Inserted(None if probe is None else False)
        applied = _matched(result, follower_at) if verbose else result.matched_count > 0
        return Inserted(None if probe is None else False, applied, True if verbose else None)

    async def _insert_separately(self, doc: dict[str, Any], lead: LeadInsert | None) -> Inserted | None:
        """The server takes no client ``bulkWrite``: the guard's read, the lead, then the
        document, each alone."""
        if lead is not None:
            if not await lead.guard_holds():
                raise LeadRefused(GuardFailed("a document matches the lead's guard"))
            try:
                await lead.coll.insert_one(lead.doc)
            except OperationFailure as exc:
                raise LeadRefused(exc) from exc
        await self.coll.insert_one(doc)

    async def _leads_first(
        self, batch: list[tuple[InsertRequest, asyncio.Future[Any]]]
    ) -> list[tuple[InsertRequest, asyncio.Future[Any]]]:
        """A batch's lead inserts, before its documents: the callers whose lead was refused
        are answered (their document is not inserted); the rest of the batch is returned."""
        leads = {i: lead for i, ((_, _, lead, _), _) in enumerate(batch) if lead is not None}
        if not leads:
            return batch
        by_collection: dict[str, list[int]] = {}
        for i, lead in leads.items():
            by_collection.setdefault(lead.coll.full_name, []).append(i)
        refused: dict[int, BaseException] = {}
        # Guards are read (a batch's leads go in one insert_many per collection, unordered).
        guarded = [i for i, lead in leads.items() if lead.guard is not None]
        holds = await asyncio.gather(*(leads[i].guard_holds() for i in guarded), return_exceptions=True)
        for i, held in zip(guarded, holds, strict=True):
            if held is not True:
                refused[i] = held if isinstance(held, BaseException) else LeadRefused(GuardFailed("guard failed"))
                by_collection[leads[i].coll.full_name].remove(i)
        for indexes in by_collection.values():
            if not indexes:
                continue
            try:
                await leads[indexes[0]].coll.insert_many([leads[i].doc for i in indexes], ordered=False)
            except BulkWriteError as exc:
                for n, failure in _statement_failures(exc, len(indexes)).items():
                    # A write concern error is the whole command's: no lead is sure, none refused.
                    refused[indexes[n]] = failure if failure is exc else LeadRefused(failure)
            except Exception as exc:
                refused.update(dict.fromkeys(indexes, exc))
        _settle([batch[i] for i in refused], {n: refused[i] for n, i in enumerate(refused)})
        return [entry for i, entry in enumerate(batch) if i not in refused]

    async def _send_many(self, batch: list[tuple[InsertRequest, asyncio.Future[Any]]]) -> None:
        failures: dict[int, BaseException] = {}
        docs = [doc for (doc, _, _, _), _ in batch]
        try:
            await self.coll.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            failures = _statement_failures(exc, len(batch))
        except Exception as exc:
            if store_unavailable(exc):
                _fail_all(batch, exc)
                return
            failures = await self._one_by_one(docs)
        except BaseException as exc:
            _fail_all(batch, exc)
            return
        _settle(batch, failures)

    async def _one_by_one(self, docs: list[dict[str, Any]]) -> dict[int, BaseException]:
        """Each document of a refused batch alone: only the ones refused again fail."""
        failures: dict[int, BaseException] = {}
        for i, doc in enumerate(docs):
            try:
                await self.coll.insert_one(doc)
            except Exception as exc:
                failures[i] = exc
                if store_unavailable(exc):
                    # The store went away meanwhile: the rest would wait out the same timeout.
                    for rest in range(i + 1, len(docs)):
                        failures[rest] = exc
                    break
        return failures


def _settle(batch: list[tuple[Any, asyncio.Future[None]]], failures: dict[int, BaseException]) -> None:
    """Answer each caller of a batch whose callers wait for no value: its own failure, or done."""
    for i, (_, future) in enumerate(batch):
        if future.done():
            continue
        if i in failures:
            future.set_exception(failures[i])
        else:
            future.set_result(None)


def _statement_failures(exc: BulkWriteError, size: int) -> dict[int, BaseException]:
    """What an unordered bulk write's error means for each of its ``size`` statements: its own
    write error, or — a write concern error — no statement's write is sure."""
    failures: dict[int, BaseException] = {
        error["index"]: _as_exception(error) for error in exc.details.get("writeErrors", [])
    }
    if exc.details.get("writeConcernErrors"):
        for i in range(size):
            failures.setdefault(i, exc)
    return failures


async def _client_bulk_write(
    coll: AsyncCollection, operations: list[Any], *, ordered: bool, verbose: bool
) -> ClientBulkWriteResult | None:
    """A client ``bulkWrite`` with ``coll``'s write concern; None when the server has none
    (MongoDB < 8.0: PyMongo refuses it before sending anything)."""
    try:
        return await coll.database.client.bulk_write(
            operations, ordered=ordered, verbose_results=verbose, write_concern=coll.write_concern
        )
    except InvalidOperation as exc:
        if "8.0" not in str(exc):  # PyMongo's "requires MongoDB server version 8.0+"
            raise
        return None


def _ordered_failure(exc: ClientBulkWriteException, at: int, guarded: bool = False) -> BaseException:
    """What an ordered ``bulkWrite`` of [guard?, lead?, the insert at ``at``, probe?] failing
    means to the inserter's caller: what ``insert_one`` would have raised (its network error,
    its write concern error, the insert's own write error: ``DuplicateKeyError`` for a
    duplicate), :class:`LeadRefused` for the lead's write error or a refused guard (with
    :class:`GuardFailed`) — or ``exc`` itself when only the probe failed."""
    if exc.error is not None:
        return exc.error if isinstance(exc.error, BaseException) else OperationFailure(str(exc.error))
    if exc.write_concern_errors:
        error = exc.write_concern_errors[0]
        return WriteConcernError(error.get("errmsg", "write concern error"), error.get("code"), error)
    for error in exc.write_errors or []:
        if error.get("idx") == at:
            return _as_exception(error)
        if guarded and error.get("idx") == 0 and error.get("code") == IMMUTABLE_FIELD:
            return LeadRefused(GuardFailed("a document matches the lead's guard"))
        if error.get("idx", at) < at:
            return LeadRefused(_as_exception(error))
    return exc


def _after_insert(
    exc: ClientBulkWriteException, at: int, probed: bool, follower_at: int | None, followers: int
) -> Inserted:
    """An ordered ``bulkWrite`` [guard?, lead?, the insert at ``at``, probe?, follower?,
    trailer?] that stopped after the insert: the probe refused means it matched; any other
    failure of the probe leaves its answer unknown (the caller reads itself) — either way
    nothing after it ran (the caller applies the follower itself). A failure of the follower
    means the probe did not match and the follower did not apply; a failure of the trailer,
    that the follower ran (what it matched, read from the partial result)."""
    error = next(iter(exc.write_errors or []), {})
    failed_at = error.get("idx")
    if probed and failed_at == at + 1:
        return Inserted(True if error.get("code") == IMMUTABLE_FIELD else None, None)
    if follower_at is None:
        return Inserted(False if probed else None)
    trailer_ran = False if followers > 1 else None  # it failed, or did not run after the follower
    if isinstance(failed_at, int) and failed_at > follower_at:
        return Inserted(False if probed else None, _matched(exc.partial_result, follower_at), trailer_ran)
    return Inserted(False if probed else None, False, trailer_ran)


def _matched(result: ClientBulkWriteResult | None, index: int) -> bool | None:
    """Whether update ``index`` of a verbose client ``bulkWrite`` matched; None: not known."""
    if result is None or not result.has_verbose_results:
        return None
    update = result.update_results.get(index)
    return None if update is None else update.matched_count > 0


def _as_exception(error: dict[str, Any]) -> OperationFailure:
    if error.get("code") == DUPLICATE_KEY:
        return DuplicateKeyError(error.get("errmsg", "duplicate key"), DUPLICATE_KEY, error)
    return OperationFailure(error.get("errmsg", "write failed"), error.get("code"), error)


@dataclass(frozen=True)
class Shortcut:
    """An update written for a guessed state of the document: ``query`` matches only while the
    document is in that state (and carries the update's own guard), ``after`` is the document
    once ``update`` applied. When it matches, ``after`` is the outcome and nothing is read."""

    query: dict[str, Any]
    update: dict[str, Any]
    after: dict[str, Any]


@dataclass
class GroupUpdate:
    """One caller's single-document update for :class:`GroupUpdater`."""

    doc_id: Any
    query: dict[str, Any]  # selects ``doc_id`` (plus the caller's guard)
    update: Any  # an update document or pipeline
    # Does the document read back carry this update's own mark (a token it wrote)?
    is_mine: Callable[[dict[str, Any]], bool]
    # The shard key of the document (``{"channel_id": …}``), named by the read-back too.
    scope: dict[str, Any] = field(default_factory=dict)
    # Tried alongside ``update`` (never both applied: each carries the same guard).
    shortcut: Shortcut | None = None


@dataclass
class UpdateOutcome:
    doc: dict[str, Any] | None  # the document after the batch; None: it does not exist
    applied: bool  # this update matched (see GroupUpdater for the one ambiguous case)
    own_mark: bool  # ``doc`` shows this update's mark: nothing else wrote it in between


class GroupUpdater(_Batcher[GroupUpdate, UpdateOutcome]):
    """Concurrent single-document updates into one collection share one ``bulk_write`` and
    one read-back ``find`` by ``_id: {$in}`` — group commit for updates.

    Why: on the embedded store a command costs several documents' worth of work (a read by
    ``_id`` costs 0.7 ms alone, 0.1 ms per document in a batch of eight), and every message
    updates its conversation and reads it back. As with :class:`GroupInserter` nothing
    waits for a timer: a lone update is sent at once, alone; the ones that queue while a
    batch is in flight go together in the next.

    A bulk write reports only how many statements matched, not which. Each caller therefore
    writes a mark of its own (a fresh token) into the document, and the read-back says who
    applied: a document showing my mark was updated by me. Two updates of one document never
    share a batch (the second waits for the next), so within a batch the only writer that
    can overwrite a mark before the read-back is another process. What matched but shows no
    mark is counted: when every match is explained by a visible mark, the others did not
    match (``applied=False``); otherwise a mark was overwritten, and each update without a
    visible mark is reported ``applied=True, own_mark=False`` — the caller then assumes the
    least (one that did not apply is reported applied only in that rare overlap, and its
    update was idempotent anyway).

    An update may come with a :class:`Shortcut` (the same change written for the state the
    caller remembers). With a client ``bulkWrite`` both go in one command and its
    per-statement results say which matched: a matched shortcut needs no read-back. Without
    one, a lone update tries its shortcut first, alone, and falls back on a miss.
    """

    # Whether a shortcut goes with its update in one client bulkWrite (per-statement results).
    # Off unless turned on as for :class:`GroupInserter`: then a lone update tries its shortcut
    # first, alone.
    client_bulk_write = False

    async def update(self, op: GroupUpdate) -> UpdateOutcome:
        """Apply one update in the next batch; its result."""
        return await self._submit(op)

    async def _shortcut_alone(self, op: GroupUpdate, future: asyncio.Future[UpdateOutcome]) -> bool:
        """Without client bulkWrite: the shortcut alone; True when it applied (then nothing is
        read). A miss costs the caller one round trip more than the update alone would."""
        assert op.shortcut is not None
        try:
            result = await self.coll.update_one(op.shortcut.query, op.shortcut.update)
        except OperationFailure:
            return False  # refused (the state it was written for is not there): the update decides
        if not result.matched_count:
            return False
        if not future.done():
            future.set_result(UpdateOutcome(op.shortcut.after, True, True))
        return True

    async def _send_with_shortcuts(self, batch: list[tuple[GroupUpdate, asyncio.Future[UpdateOutcome]]]) -> bool:
        """The batch as one unordered client ``bulkWrite`` of each caller's shortcut and update,
        answered from the per-statement results: a shortcut that matched needs no read; an
        update that matched is read back (one ``find`` for all); neither matched, nothing to
        read. The order of the two statements does not matter: they share the caller's guard,
        so whichever runs second matches nothing. False: the server has no client bulkWrite."""
        namespace = self.coll.full_name
        operations: list[UpdateOne] = []
        slots: list[tuple[int | None, int]] = []
        for op, _ in batch:
            at = None
            if op.shortcut is not None:
                at = len(operations)
                operations.append(UpdateOne(op.shortcut.query, op.shortcut.update, namespace=namespace))
            operations.append(UpdateOne(op.query, op.update, namespace=namespace))
            slots.append((at, len(operations) - 1))
        failed: dict[int, BaseException] = {}
        try:
            sent = await _client_bulk_write(self.coll, operations, ordered=False, verbose=True)
        except ClientBulkWriteException as exc:
            # A statement refused fails its caller alone; the others' results still came back.
            if exc.error is not None or exc.write_concern_errors or exc.partial_result is None:
                _fail_all(batch, _ordered_failure(exc, -1))
                return True
            refused = {error.get("idx"): _as_exception(error) for error in exc.write_errors or []}
            for i, (_, at) in enumerate(slots):
                # A refused shortcut only means it did not apply: the caller's update ran anyway.
                if at in refused:
                    failed[i] = refused[at]
            sent = exc.partial_result
        if sent is None:
            self.client_bulk_write = False
            return False
        matched = {i for i, r in sent.update_results.items() if r.matched_count}
        to_read = [op for i, ((op, _), (_, at)) in enumerate(zip(batch, slots, strict=True)) if at in matched]
        docs = await self._read_back(to_read) if to_read else {}
        for i, ((op, future), (short, at)) in enumerate(zip(batch, slots, strict=True)):
            if future.done():
                continue
            if i in failed:
                future.set_exception(failed[i])
            elif short in matched and op.shortcut is not None:
                future.set_result(UpdateOutcome(op.shortcut.after, True, True))
            elif at in matched:
                doc = docs.get(op.doc_id)
                future.set_result(UpdateOutcome(doc, True, doc is not None and op.is_mine(doc)))
            else:
                future.set_result(UpdateOutcome(None, False, False))
        return True

    async def _read_back(self, ops: list[GroupUpdate]) -> dict[Any, dict[str, Any]]:
        ids = [op.doc_id for op in ops]
        if len(ids) == 1:
            found = await self.coll.find_one({"_id": ids[0], **ops[0].scope})
            return {ids[0]: found} if found is not None else {}
        query = {"_id": {"$in": ids}, **_scopes_of(ops)}
        return {d["_id"]: d for d in await self.coll.find(query).to_list(None)}

    def _take(self) -> list[tuple[GroupUpdate, asyncio.Future[UpdateOutcome]]]:
        batch: list[tuple[GroupUpdate, asyncio.Future[UpdateOutcome]]] = []
        later: list[tuple[GroupUpdate, asyncio.Future[UpdateOutcome]]] = []
        seen: set[Any] = set()
        for entry in self._queue:
            if entry[0].doc_id in seen or len(batch) >= self.max_batch:
                later.append(entry)
            else:
                seen.add(entry[0].doc_id)
                batch.append(entry)
        self._queue = later
        return batch

    async def _send(self, batch: list[tuple[GroupUpdate, asyncio.Future[UpdateOutcome]]]) -> None:
        try:
            if self.client_bulk_write and any(op.shortcut is not None for op, _ in batch):
                if await self._send_with_shortcuts(batch):
                    return
            elif len(batch) == 1 and batch[0][0].shortcut is not None and await self._shortcut_alone(*batch[0]):
                return
        except BaseException as exc:
            _fail_all(batch, exc)
            return
        failed: dict[int, BaseException] = {}
        try:
            if len(batch) == 1:
                op = batch[0][0]
                matched = (await self.coll.update_one(op.query, op.update)).matched_count
            else:
                requests = [UpdateOne(op.query, op.update) for op, _ in batch]
                try:
                    matched = (await self.coll.bulk_write(requests, ordered=False)).matched_count
                except BulkWriteError as exc:
                    matched = exc.details.get("nMatched", 0)
                    failed = _statement_failures(exc, len(batch))
            docs = await self._read_back([op for op, _ in batch])
        except BaseException as exc:
            _fail_all(batch, exc)
            return
        mine = [
            i not in failed and (doc := docs.get(op.doc_id)) is not None and op.is_mine(doc)
            for i, (op, _) in enumerate(batch)
        ]
        overwritten = matched - sum(mine) > 0
        for i, (op, future) in enumerate(batch):
            if future.done():
                continue
            if i in failed:
                future.set_exception(failed[i])
                continue
            doc = docs.get(op.doc_id)
            future.set_result(UpdateOutcome(doc, mine[i] or (overwritten and doc is not None), mine[i]))


def _scopes_of(ops: list[GroupUpdate]) -> dict[str, Any]:
    """The read-back's shard key condition: each field's values (``$in``), when every op has it."""
    if not ops or not all(op.scope for op in ops):
        return {}
    fields = set(ops[0].scope)
    return {f: {"$in": list(dict.fromkeys(op.scope[f] for op in ops))} for f in fields}


class GroupManyUpdater(_Batcher[tuple[dict[str, Any], dict[str, Any]], None]):
    """Concurrent idempotent multi-document updates into one collection share one
    ``bulk_write`` of ``UpdateMany`` statements (unordered) — group commit for updates whose
    callers need no count back (marking a thread's customer messages answered).

    Each statement fails alone (its write error goes to its caller); a failure of the whole
    command fails every caller of the batch, as for the other committers."""

    async def update_many(self, query: dict[str, Any], update: dict[str, Any]) -> None:
        """Apply ``update`` to every document matching ``query``, in the next batch."""
        await self._submit((query, update))

    async def _send(self, batch: list[tuple[tuple[dict[str, Any], dict[str, Any]], asyncio.Future[None]]]) -> None:
        failures: dict[int, BaseException] = {}
        try:
            if len(batch) == 1:
                query, update = batch[0][0]
                await self.coll.update_many(query, update)
            else:
                await self.coll.bulk_write([UpdateMany(q, u) for (q, u), _ in batch], ordered=False)
        except BulkWriteError as exc:  # only the bulk write raises it
            failures = _statement_failures(exc, len(batch))
        except BaseException as exc:
            _fail_all(batch, exc)
            return
        _settle(batch, failures)


class GroupFinder(_Batcher[tuple[Any, list[Any]], list[dict[str, Any]]]):
    """Concurrent equality look-ups on ``key_field`` (within ``scope_field`` = s, when given)
    share one ``find`` per scope with ``key_field: {$in: …}`` — natural batching for reads that
    many requests make (an owner message's mid, the events that arrived before a message).
    An index on ``(scope_field, key_field)`` — or on ``key_field`` alone, also multikey —
    serves the ``$in`` on the embedded store too (measured: 0.07 ms per key in a batch of eight
    against 0.5 ms for a lone look-up, flat at 5 000 rows). A read joins a batch only after its
    caller asked, so it never sees less than a lone read issued at that moment would."""

    def __init__(
        self, coll: AsyncCollection, key_field: str, *, scope_field: str | None = None, max_batch: int = MAX_BATCH
    ) -> None:
        super().__init__(coll, max_batch=max_batch)
        self.scope_field = scope_field
        self.key_field = key_field

    async def find(self, keys: list[Any], scope: Any = None) -> list[dict[str, Any]]:
        """The documents whose key (or one of whose keys, for an array) is one of ``keys``."""
        if not keys:
            return []
        return await self._submit((scope, list(keys)))

    async def _send(self, batch: list[tuple[tuple[Any, list[Any]], asyncio.Future[list[dict[str, Any]]]]]) -> None:
        scopes: dict[Any, list[tuple[list[Any], asyncio.Future[list[dict[str, Any]]]]]] = {}
        for (scope, keys), future in batch:
            scopes.setdefault(scope, []).append((keys, future))
        for scope, callers in scopes.items():
            await self._read(scope, callers)

    async def _read(self, scope: Any, callers: list[tuple[list[Any], asyncio.Future[list[dict[str, Any]]]]]) -> None:
        wanted = list(dict.fromkeys(k for keys, _ in callers for k in keys))
        query: dict[str, Any] = {self.key_field: wanted[0] if len(wanted) == 1 else {"$in": wanted}}
        if self.scope_field is not None:
            query = {self.scope_field: scope, **query}
        try:
            rows = await self.coll.find(query).to_list(None)
        except BaseException as exc:
            _fail_all(callers, exc)
            return
        for keys, future in callers:
            if not future.done():
                own = set(keys)
                future.set_result([row for row in rows if _keys_of(row.get(self.key_field)) & own])


def _keys_of(value: Any) -> set[Any]:
    if isinstance(value, list):
        return {v for v in value if not isinstance(v, (dict, list))}
    return set() if isinstance(value, dict) else {value}
