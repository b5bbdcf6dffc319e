"""Input schemas of igsync's own API (marshmallow 4), built once and reused.

Our API rejects unknown fields (``RAISE``): a typo in a field name is a 422 that says so,
not a silently ignored setting. Validators raise (marshmallow 4 ignores a ``False``).
"""

from __future__ import annotations

import re
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from models.channels import LOGINS
from models.messages import TYPE_AI, TYPE_SUPPORT
from models.timeutil import parse_iso
from server.api.errors import bad_request, validation_error

# Ids from other systems (page ids, IGSIDs, client ids): short opaque strings.
ID_LENGTH = validate.Length(min=1, max=64)


class OwnerId(fields.Field):
    """The app's id of an owner: an integer or a non-empty string, never an object — it goes
    into queries, where an object would be an operator (``{"$ne": null}`` matches anyone)."""

    def __init__(self, **kwargs: Any) -> None:
        # How the OpenAPI document (apispec) describes this field.
        schema = {
            "oneOf": [
                {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
                {"type": "string", "minLength": 1, "maxLength": 64},
            ]
        }
        super().__init__(metadata=schema, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int | str:
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            # JSON has one number type: 123.0 is the integer 123. (A float beyond 2**53 is not
            # exact: the JSON parser hands integers past 64 bits over as floats.)
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
            raise ValidationError("must be an integer or a non-empty string")
        if isinstance(value, str) and len(value) > 64:
            raise ValidationError("must be at most 64 characters")
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise ValidationError("must fit in 64 bits")
        return value


# An http(s) URL with a host, no whitespace: the same rule in the OpenAPI document (a JSON
# Schema pattern) and here, so that what the document calls valid is accepted. What the host
# then answers is the fetcher's business (a bad link fails that send or download, visibly).
HTTP_URL_PATTERN = r"^https?://([A-Za-z0-9._~%!$&'()*+,;=:-]+@)?[A-Za-z0-9._~%!$&'()*+,;=:\[\]-]+([/?#][!-~]*)?$"
_HTTP_URL = re.compile(HTTP_URL_PATTERN)
MAX_URL_LENGTH = 4096


class HttpUrl(fields.String):
    """An http(s) URL (see ``HTTP_URL_PATTERN``)."""

    def __init__(self, **kwargs: Any) -> None:
        metadata = {"pattern": HTTP_URL_PATTERN, "description": "an http(s) URL"}
        super().__init__(metadata=metadata, validate=validate.Length(min=1, max=MAX_URL_LENGTH), **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if not _HTTP_URL.match(text):
            raise ValidationError("must be an http(s) URL with a host")
        return text


class WholeNumber(fields.Integer):
    """A JSON integer: ``5`` or ``5.0`` (JSON has one number type), never ``"5"`` or ``true``."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError("Not a valid integer.")
        return super()._deserialize(value, attr, data, **kwargs)


class StrictBoolean(fields.Boolean):
    """``true`` or ``false`` only: marshmallow's Boolean also takes 0, 1, "yes", "on"…, which a
    JSON API documents as booleans should refuse."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("must be true or false")
        return value


class OwnerSchema(Schema):
    class Meta:
        unknown = RAISE

    id = OwnerId(required=True)
    email = fields.Email(required=True)


class HttpTriggerSchema(Schema):
    class Meta:
        unknown = RAISE

    url = HttpUrl(required=True)
    secret = fields.String(required=True, validate=validate.Length(min=16, max=256))
    timeout_secs = fields.Float(load_default=10.0, validate=validate.Range(min=0.1, max=60))
    # None: IGSYNC_TRIGGER_MAX_ATTEMPTS (8, about an hour of retries).
    max_attempts = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1, max=50))


class TriggersSchema(Schema):
    class Meta:
        unknown = RAISE

    http = fields.Nested(HttpTriggerSchema, allow_none=True, load_default=None)
    redis_stream = StrictBoolean(load_default=False)


class ChannelInputSchema(Schema):
    class Meta:
        unknown = RAISE

    page_id = fields.String(required=True, validate=[ID_LENGTH, validate.Regexp(r"^[0-9A-Za-z_-]+$")])
    instagram_user_id = fields.String(allow_none=True, validate=[ID_LENGTH, validate.Regexp(r"^[0-9A-Za-z_-]+$")])
    username = fields.String(required=True, validate=validate.Length(min=1, max=64))
    owner = fields.Nested(OwnerSchema, required=True)
    access_token = fields.String(allow_none=True, validate=validate.Length(max=1024))
    # How the account was connected: the Graph API host, endpoints and webhook fields follow.
    login = fields.String(validate=validate.OneOf(LOGINS))
    # Meta's expires_in of the token (seconds); unknown: learnt from its first refresh.
    token_expires_in = WholeNumber(validate=validate.Range(min=1, max=10 * 365 * 86400))
    ai_enabled = StrictBoolean()
    triggers = fields.Nested(TriggersSchema, allow_none=True)


class TokenInputSchema(Schema):
    class Meta:
        unknown = RAISE

    owner_email = fields.Email()
    owner_id = OwnerId()
    label = fields.String(validate=validate.Length(max=100))

    @validates_schema
    def _one_owner(self, data: dict[str, Any], **_: Any) -> None:
        if ("owner_email" in data) == ("owner_id" in data):
            raise ValidationError("give exactly one of owner_email or owner_id", "owner_email")


MESSAGE_TYPES = (
    "text",
    "image",
    "audio",
    "video",
    "file",
    "share",
    "ig_reel",
    "ig_post",
    "story_mention",
    "story_reply",
    "postback",
    "quick_reply",
    "referral",
    "unsupported",
)


class MarkSentSchema(Schema):
    class Meta:
        unknown = RAISE

    conversation_id = fields.String(validate=ID_LENGTH)
    account_id = fields.String(validate=ID_LENGTH)
    customer_instagram_id = fields.String(validate=ID_LENGTH)
    content = fields.String(load_default="", validate=validate.Length(max=20_000))
    type = fields.String(required=True, validate=validate.OneOf([TYPE_AI, TYPE_SUPPORT]))
    message_type = fields.String(load_default="text", validate=validate.OneOf(MESSAGE_TYPES))
    mids = fields.List(
        fields.String(validate=validate.Length(min=1, max=512)), load_default=list, validate=validate.Length(max=20)
    )
    client_message_id = fields.String(allow_none=True, load_default=None, validate=validate.Length(min=1, max=128))
    media_url = HttpUrl(allow_none=True, load_default=None)

    @validates_schema
    def _target_and_content(self, data: dict[str, Any], **_: Any) -> None:
        by_id = "conversation_id" in data
        by_account = "account_id" in data or "customer_instagram_id" in data
        if by_id == by_account:
            raise ValidationError("give conversation_id, or account_id and customer_instagram_id", "conversation_id")
        if by_account:
            for name in ("account_id", "customer_instagram_id"):
                if name not in data:
                    raise ValidationError("required together with the other of account_id/customer_instagram_id", name)
        if not data.get("content") and not data.get("media_url"):
            raise ValidationError("give the text that was sent (or a media_url)", "content")


ATTACHMENT_TYPES = ("image", "video", "audio", "file")
# Meta's limits: a text of at most 1 000 bytes (UTF-8); we allow 10 attachments per send.
MAX_TEXT_BYTES = 1000
MAX_ATTACHMENTS = 10


class AttachmentInputSchema(Schema):
    class Meta:
        unknown = RAISE

    type = fields.String(required=True, validate=validate.OneOf(ATTACHMENT_TYPES))
    url = HttpUrl(required=True)


class SendSchema(Schema):
    """``POST /api/v1/conversations/{id}/messages`` (API.md §2b)."""

    class Meta:
        unknown = RAISE

    content = fields.String(load_default="", validate=validate.Length(max=MAX_TEXT_BYTES))
    # None: "support" (a person); only internal tokens may send as "AI".
    type = fields.String(load_default=None, validate=validate.OneOf([TYPE_AI, TYPE_SUPPORT]))
    attachments = fields.List(
        fields.Nested(AttachmentInputSchema), load_default=list, validate=validate.Length(max=MAX_ATTACHMENTS)
    )
    reply_to = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=64))
    client_message_id = fields.String(allow_none=True, load_default=None, validate=validate.Length(min=1, max=128))

    @validates_schema
    def _something_to_send(self, data: dict[str, Any], **_: Any) -> None:
        content = data.get("content") or ""
        if not content.strip() and not data.get("attachments"):
            raise ValidationError("give a text (or attachments)", "content")
        if len(content.encode("utf-8")) > MAX_TEXT_BYTES:
            raise ValidationError(f"Instagram takes at most {MAX_TEXT_BYTES} bytes of text", "content")


class HistoryInputSchema(Schema):
    class Meta:
        unknown = RAISE

    # Only conversations active since then, only messages sent since then (RFC 3339).
    since = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(min=1, max=64), metadata={"format": "date-time"}
    )

    @validates_schema
    def _since_is_a_time(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("since") is not None:
            try:
                parse_iso(data["since"])
            except ValueError:
                raise ValidationError("not an RFC 3339 time", "since") from None


CHANNEL_INPUT = ChannelInputSchema()
HISTORY_INPUT = HistoryInputSchema()
TOKEN_INPUT = TokenInputSchema()
MARK_SENT_INPUT = MarkSentSchema()
SEND_INPUT = SendSchema()


def load(schema: Schema, payload: Any) -> dict[str, Any]:
    """Validate a parsed JSON body; 400 when it is not an object, 422 with ``fields`` otherwise."""
    if not isinstance(payload, dict):
        raise bad_request("invalid_json", "The body must be a JSON object.")
    try:
        return schema.load(payload)
    except ValidationError as exc:
        raise validation_error(exc.messages_dict) from None
