"""The one HMAC signature formula of igsync: ``sha256=<hex HMAC-SHA256 of the raw body>``.

Meta signs every webhook this way (``X-Hub-Signature-256``, keyed by the app secret), and
igsync signs its trigger deliveries the same way (``X-Igsync-Signature-256``, keyed by the
channel's trigger secret), so receivers verify both with the same code. Everything in the
server that signs or checks a body — the webhook pipeline, ``igsync simulate``, ``doctor``'s
probe, the trigger dispatcher — calls these two functions; ``igsync_client.triggers`` carries
its own copy because the client is installed without the server.
"""

from __future__ import annotations

import hashlib
import hmac


def sign(body: bytes, secret: str) -> str:
    """The signature header value of ``body`` under ``secret``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def signature_ok(body: bytes, header: str | None, secret: str) -> bool:
    """Whether ``header`` signs the raw ``body`` under ``secret``, compared in constant time."""
    if not header or not secret:
        return False
    return hmac.compare_digest(sign(body, secret).encode("ascii"), header.strip().encode("utf-8", "replace"))
