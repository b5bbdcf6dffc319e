"""Checking a workflow trigger's signature on the receiving side (the AI service, a worker).

igsync signs every trigger it POSTs with the channel's trigger secret::

    X-Igsync-Signature-256: sha256=<hex HMAC-SHA256 of the raw request body>

A receiver checks it in one line, over the raw bytes, *before* parsing the JSON::

    from igsync_client.triggers import verify_trigger_signature

    if not verify_trigger_signature(request.body, request.headers.get("X-Igsync-Signature-256"), SECRET):
        return 401

Standard library only, so a receiver needs nothing else from igsync.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Igsync-Signature-256"
_PREFIX = "sha256="


def verify_trigger_signature(body: bytes, header: str | None, secret: str) -> bool:
    """Whether ``header`` is igsync's signature of exactly ``body`` with ``secret``.

    Compared in constant time. False — never an exception — for a missing, malformed or
    wrong header, or an empty secret.
    """
    if not header or not secret or not isinstance(body, (bytes, bytearray, memoryview)):
        return False
    header = header.strip()
    if not header.startswith(_PREFIX):
        return False
    expected = hmac.new(secret.encode("utf-8"), bytes(body), hashlib.sha256).hexdigest()
    given = header[len(_PREFIX) :].strip().lower()
    return hmac.compare_digest(expected.encode("ascii"), given.encode("utf-8", "replace"))
