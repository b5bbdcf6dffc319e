"""Which MongoDB failures mean "the store is unavailable" and which mean "this document is bad".

The difference decides an answer: a store that is down, slow or failing over answers 503 and
Meta redelivers later, which will succeed; a document the store refuses (a key it cannot hold,
a value too large) would be refused on every redelivery, so it must fail alone — its item is
answered ``invalid_item`` and its neighbours in the same body or batch are stored.
"""

from __future__ import annotations

from bson.errors import InvalidDocument
from pymongo.errors import (
    ConnectionFailure,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
    WriteConcernError,
)

# The bound of store work that is not answering a request (index builds, media copies, the
# monitor's first read of the hour); each request's operations are bound by
# IGSYNC_STORE_TIMEOUT_MS (the client's timeoutMS), this overrides it with pymongo.timeout().
LONG_OPERATION_SECS = 120.0

# Server codes that judge the document, not the server: BadValue, TypeMismatch,
# DollarPrefixedFieldName, EmptyFieldName, DocumentValidationFailure, BSONObjectTooLarge,
# KeyTooLong, and the "invalid field name" family of older servers.
DOCUMENT_ERROR_CODES = frozenset({2, 14, 52, 56, 121, 10334, 17280, 15896, 16755, 17419})


def store_unavailable(exc: BaseException) -> bool:
    """The store could not answer (down, timed out, failing over): retrying later can work."""
    if isinstance(exc, (ConnectionFailure, ExecutionTimeout, WriteConcernError)):
        return True
    return isinstance(exc, PyMongoError) and bool(getattr(exc, "timeout", False))


def document_refused(exc: BaseException) -> bool:
    """The store (or the BSON encoder before it) refused this document itself: retrying the
    same document can never work."""
    if isinstance(exc, InvalidDocument):
        return True
    if store_unavailable(exc):
        return False
    return isinstance(exc, OperationFailure) and exc.code in DOCUMENT_ERROR_CODES
