"""Input schemas of igsync's own API (marshmallow 4), built once and reused.

Our API rejects unknown fields (``RAISE``): a typo in a field name is a 422 that says so,
not a silently ignored setting. Validators raise (marshmallow 4 ignores a ``False``).
"""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from models.messages import TYPE_AI, TYPE_SUPPORT
from server.api.errors import bad_request, validation_error

# Ids from other systems (page ids, IGSIDs, client ids): short opaque strings.
ID_LENGTH = validate.Length(min=1, max=64)


class OwnerId(fields.Field):
    """The app's id of an owner: an integer or a non-empty string, never an object — it goes
    into queries, where an object would be an operator (``{"$ne": null}`` matches anyone)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int | str:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
            raise ValidationError("must be an integer or a non-empty string")
        if isinstance(value, str) and len(value) > 64:
            raise ValidationError("must be at most 64 characters")
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise ValidationError("must fit in 64 bits")
        return value


class OwnerSchema(Schema):
    class Meta:
        unknown = RAISE

    id = OwnerId(required=True)
    email = fields.Email(required=True)


class HttpTriggerSchema(Schema):
    class Meta:
        unknown = RAISE

    url = fields.Url(required=True, require_tld=False, schemes={"http", "https"})
    secret = fields.String(required=True, validate=validate.Length(min=16, max=256))
    timeout_secs = fields.Float(load_default=10.0, validate=validate.Range(min=0.1, max=60))
    # None: IGSYNC_TRIGGER_MAX_ATTEMPTS (8, about an hour of retries).
    max_attempts = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1, max=50))


class TriggersSchema(Schema):
    class Meta:
        unknown = RAISE

    http = fields.Nested(HttpTriggerSchema, allow_none=True, load_default=None)
    redis_stream = fields.Boolean(load_default=False)


class ChannelInputSchema(Schema):
    class Meta:
        unknown = RAISE

    page_id = fields.String(required=True, validate=[ID_LENGTH, validate.Regexp(r"^[0-9A-Za-z_-]+$")])
    instagram_user_id = fields.String(allow_none=True, validate=[ID_LENGTH, validate.Regexp(r"^[0-9A-Za-z_-]+$")])
    username = fields.String(required=True, validate=validate.Length(min=1, max=64))
    owner = fields.Nested(OwnerSchema, required=True)
    access_token = fields.String(allow_none=True, validate=validate.Length(max=1024))
    ai_enabled = fields.Boolean()
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
    media_url = fields.Url(
        allow_none=True,
        load_default=None,
        require_tld=False,
        schemes={"http", "https"},
        validate=validate.Length(max=4096),
    )

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


CHANNEL_INPUT = ChannelInputSchema()
TOKEN_INPUT = TokenInputSchema()
MARK_SENT_INPUT = MarkSentSchema()


def load(schema: Schema, payload: Any) -> dict[str, Any]:
    """Validate a parsed JSON body; 400 when it is not an object, 422 with ``fields`` otherwise."""
    if not isinstance(payload, dict):
        raise bad_request("invalid_json", "The body must be a JSON object.")
    try:
        return schema.load(payload)
    except ValidationError as exc:
        raise validation_error(exc.messages_dict) from None
