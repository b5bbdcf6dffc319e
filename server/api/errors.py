"""The one error type the core raises for a client's mistake, and its JSON shape (API.md §6).

The core raises :class:`ApiError`; handlers turn it into
``{"error": "<code>", "message": "<sentence>", "fields": {...}?}`` with its status.
Anything else that escapes is a bug: logged with its traceback, answered ``500``
without details.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *, fields: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields

    def body(self) -> dict[str, Any]:
        """The JSON error shape of API.md: ``error``, ``message``, ``fields``."""
        out: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.fields is not None:
            out["fields"] = self.fields
        return out


def not_found(what: str = "resource") -> ApiError:
    """404 ``not_found`` naming what is missing."""
    return ApiError(404, "not_found", f"No such {what}.")


def unauthorized(message: str = "A valid bearer token is required.") -> ApiError:
    """401 ``unauthorized``."""
    return ApiError(401, "unauthorized", message)


def forbidden(message: str = "This token may not use this endpoint.") -> ApiError:
    """403 ``forbidden``."""
    return ApiError(403, "forbidden", message)


def bad_request(code: str, message: str) -> ApiError:
    """400 with ``code``."""
    return ApiError(400, code, message)


def validation_error(fields: dict[str, Any]) -> ApiError:
    """422 ``validation_error`` with the invalid fields."""
    return ApiError(422, "validation_error", "Some fields are invalid.", fields=_string_keys(fields))


def _string_keys(value: Any) -> Any:
    # marshmallow keys list items by position (``{"mids": {0: [...]}}``); JSON needs strings.
    if isinstance(value, dict):
        return {str(k): _string_keys(v) for k, v in value.items()}
    return value


class StoreUnavailable(Exception):
    """MongoDB could not be reached or failed mid-operation: the caller should retry (503)."""
