"""server/api: the pieces of the contract with callers that are pure functions — bearer tokens,
the error shape, cursors and limits, the one signature formula."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac

import pytest
from bson import ObjectId

from server.api.auth import ADMIN, INBOX, Authenticator, Principal, bearer_token
from server.api.errors import ApiError, validation_error
from server.api.pagination import MAX_LIMIT, decode_cursor, encode_cursor, parse_limit
from server.api.signatures import sign, signature_ok


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_a_principal_of_another_kind_is_403_and_none_is_401() -> None:
    with pytest.raises(ApiError) as missing:
        Authenticator.check(None, INBOX)
    assert missing.value.status == 401
    with pytest.raises(ApiError) as other:
        Authenticator.check(Principal(ADMIN), INBOX)
    assert other.value.status == 403
    owner = Principal(INBOX, {"id": 7})
    assert Authenticator.check(owner, INBOX) is owner


def test_validation_errors_have_the_error_shape_with_string_keys() -> None:
    error = validation_error({"items": {0: ["bad"]}})
    assert error.status == 422
    assert error.body() == {
        "error": "validation_error",
        "message": "Some fields are invalid.",
        "fields": {"items": {"0": ["bad"]}},
    }


def test_a_cursor_round_trips_to_the_millisecond() -> None:
    at = dt.datetime(2026, 12, 4, 21, 30, 15, 123000, tzinfo=dt.UTC)
    oid = ObjectId()
    assert decode_cursor(encode_cursor(at, oid)) == (at, oid)


@pytest.mark.parametrize("cursor", ["", "not-base64!", "bnVsbA", "WzEsIDJd", "WyJ4IiwgInkiXQ"])
def test_a_cursor_that_is_not_ours_is_400(cursor: str) -> None:
    with pytest.raises(ApiError) as bad:
        decode_cursor(cursor)
    assert bad.value.status == 400


def test_limits() -> None:
    assert parse_limit(None) == 50
    assert parse_limit(str(MAX_LIMIT)) == MAX_LIMIT
    # An empty value is not an integer either (the OpenAPI document says integer).
    for raw in ("", "0", str(MAX_LIMIT + 1), "-1", "ten"):
        with pytest.raises(ApiError) as bad:
            parse_limit(raw)
        assert bad.value.status == 422


def test_the_signature_is_metas_formula_and_checked_in_full() -> None:
    body, secret = b'{"object":"instagram"}', "s3cret"
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert sign(body, secret) == expected
    assert signature_ok(body, expected, secret)
    assert signature_ok(body, f"  {expected} ", secret)
    assert not signature_ok(body + b" ", expected, secret)
    assert not signature_ok(body, expected[:-1], secret)
    assert not signature_ok(body, expected, "other")
    assert not signature_ok(body, None, secret)
    assert not signature_ok(body, expected, "")
