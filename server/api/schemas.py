"""Input schemas of igsync's own API (marshmallow 4), built once and reused.

Our API rejects unknown fields (``RAISE``): a typo in a field name is a 422 that says so,
not a silently ignored setting. Validators raise (marshmallow 4 ignores a ``False``).
"""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate, validates_schema

from server.api.errors import bad_request, validation_error

# Ids from other systems (page ids, IGSIDs, client ids): short opaque strings.
ID_LENGTH = validate.Length(min=1, max=64)


class OwnerSchema(Schema):
    class Meta:
        unknown = RAISE

    id = fields.Raw(required=True)
    email = fields.Email(required=True)

    @validates_schema
    def _owner_id(self, data: dict[str, Any], **_: Any) -> None:
        value = data.get("id")
        if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
            raise ValidationError("must be an integer or a non-empty string", "id")


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
    owner_id = fields.Raw()
    label = fields.String(validate=validate.Length(max=100))

    @validates_schema
    def _one_owner(self, data: dict[str, Any], **_: Any) -> None:
        if ("owner_email" in data) == ("owner_id" in data):
            raise ValidationError("give exactly one of owner_email or owner_id", "owner_email")


class WsCommandSchema(Schema):
    """WebSocket client → server commands; unknown keys tolerated (forward compatibility)."""

    class Meta:
        unknown = EXCLUDE

    action = fields.String(required=True, validate=validate.OneOf(["subscribe", "unsubscribe", "ping"]))
    channel_id = fields.String(validate=validate.Length(max=64))
    conversation_id = fields.String(validate=validate.Length(max=64))
    since_seq = fields.Integer(allow_none=True, validate=validate.Range(min=0))
    epoch = fields.String(allow_none=True, validate=validate.Length(max=64))


CHANNEL_INPUT = ChannelInputSchema()
TOKEN_INPUT = TokenInputSchema()
WS_COMMAND = WsCommandSchema()


def load(schema: Schema, payload: Any) -> dict[str, Any]:
    """Validate a parsed JSON body; 400 when it is not an object, 422 with ``fields`` otherwise."""
    if not isinstance(payload, dict):
        raise bad_request("invalid_json", "The body must be a JSON object.")
    try:
        return schema.load(payload)
    except ValidationError as exc:
        raise validation_error(exc.messages_dict) from None
