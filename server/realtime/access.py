"""Who may open ``/ws``: the token (header or query) and the browser origin policy.

Plain functions of request values, so the handler stays thin and the rules are unit-tested:

* the token comes from ``Authorization: Bearer`` or, for browsers (which cannot set headers
  on a WebSocket), ``?access_token=``; the header wins when both are given;
* an upgrade without ``Origin`` is a non-browser client and is accepted (the token is the
  credential); a browser's origin must be the server's own host (or ``Sec-Fetch-Site:
  same-origin``) or be listed in ``IGSYNC_WS_ALLOWED_ORIGINS`` (``*`` allows any).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from server.api.auth import bearer_token


def token_from(authorization: str | None, access_token: str | None) -> str | None:
    """The socket's token: the Authorization header, else the ``access_token`` argument."""
    return bearer_token(authorization) or (access_token.strip() if access_token and access_token.strip() else None)


def origin_allowed(origin: str | None, host: str | None, sec_fetch_site: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether a browser's handshake comes from an allowed origin."""
    if origin is None:
        return sec_fetch_site in (None, "same-origin", "none")
    if sec_fetch_site in ("same-origin", "none"):
        return True
    normalized = origin.strip().rstrip("/").lower()
    if "*" in allowed or normalized in (a.rstrip("/").lower() for a in allowed):
        return True
    netloc = urlsplit(normalized).netloc
    return bool(netloc) and netloc == (host or "").strip().lower()
