"""The errors of :mod:`igsync_client`: one type per thing a caller can do something about."""

from __future__ import annotations

from typing import Any


class IgsyncError(Exception):
    """Any failure of an igsync call. ``status`` is the HTTP status (None: no answer)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        fields: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.fields = fields


class IgsyncConnectionError(IgsyncError):
    """igsync could not be reached (or did not answer in time), after every retry."""


class IgsyncServerError(IgsyncError):
    """igsync answered 5xx (e.g. 503: its store is down) after every retry."""


class IgsyncAuthError(IgsyncError):
    """401/403: the token is missing, wrong, or not an internal sender's token. Not retried."""


class IgsyncNotFound(IgsyncError):
    """404: no such conversation, or the account is not a connected channel. Not retried."""


class IgsyncValidationError(IgsyncError):
    """400/422: the request is invalid; ``fields`` says which field and why. Not retried."""
