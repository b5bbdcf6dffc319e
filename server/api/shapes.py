"""The shapes igsync answers with, as marshmallow schemas: what the OpenAPI document
(:mod:`server.api.openapi`) says every response looks like.

They describe the dicts :mod:`models.serializers` and the services build; they are not used to
build answers (that would cost a second pass over every message). ``tests/api/test_openapi.py``
and schemathesis check that real answers conform, so a serializer that drifts fails a test.
Every schema allows unknown keys: a client must ignore fields it does not know, and the
document promises the ones listed.
"""

from __future__ import annotations

from marshmallow import INCLUDE, Schema, fields, validate

# An owner's id in the app: an integer or a non-empty string (API.md §3).
OWNER_ID = {"oneOf": [{"type": "integer"}, {"type": "string", "minLength": 1}]}


class Open(Schema):
    class Meta:
        unknown = INCLUDE


class ErrorShape(Open):
    error = fields.String(required=True, metadata={"description": "snake_case code"})
    message = fields.String(required=True, metadata={"description": "a sentence for humans"})
    # "fields" would shadow marshmallow's own Schema.fields: the key is named through data_key.
    invalid_fields = fields.Dict(data_key="fields", metadata={"description": "validation errors by field"})


class OwnerShape(Open):
    id = fields.Raw(required=True, metadata=OWNER_ID)
    email = fields.String(required=True)


class HttpTriggerShape(Open):
    url = fields.String(required=True)
    timeout_secs = fields.Float(allow_none=True)
    max_attempts = fields.Integer(allow_none=True)
    secret_set = fields.Boolean(required=True)


class TriggersShape(Open):
    http = fields.Nested(HttpTriggerShape, allow_none=True, required=True)
    redis_stream = fields.Boolean(required=True)


class ChannelShape(Open):
    id = fields.String(required=True)
    page_id = fields.String(required=True)
    instagram_user_id = fields.String(allow_none=True, required=True)
    username = fields.String(allow_none=True, required=True)
    owner = fields.Nested(OwnerShape, allow_none=True, required=True)
    is_connect = fields.Boolean(required=True)
    created_at = fields.String(allow_none=True, required=True, metadata={"format": "date-time"})
    ai_enabled = fields.Boolean(required=True)
    needs_reauth = fields.Boolean()
    login = fields.String(required=True, metadata={"enum": ["instagram_login", "facebook_login"]})
    token_expires_at = fields.String(allow_none=True, required=True, metadata={"format": "date-time"})
    subscription_state = fields.String(
        allow_none=True,
        required=True,
        metadata={"description": "subscribed, incomplete, not_subscribed, unknown; null: never checked"},
    )
    triggers = fields.Nested(TriggersShape, required=True)


class CustomerShape(Open):
    id = fields.String(allow_none=True, required=True)
    instagram_id = fields.String(allow_none=True, required=True)
    first_name = fields.String(allow_none=True, required=True)
    last_name = fields.String(allow_none=True, required=True)
    username = fields.String(allow_none=True, required=True)
    profile_pic = fields.String(allow_none=True, required=True)
    profile_pic_file = fields.String(allow_none=True, required=True)
    enhanced_data_fetched = fields.Boolean(required=True)


class LastMessageShape(Open):
    id = fields.String(allow_none=True, required=True)
    content = fields.String(required=True)
    type = fields.String(allow_none=True, required=True)
    message_type = fields.String(required=True)
    created_at = fields.String(allow_none=True, required=True, metadata={"format": "date-time"})


class ReplyWindowShape(Open):
    standard_until = fields.String(allow_none=True, required=True, metadata={"format": "date-time"})
    human_agent_until = fields.String(allow_none=True, required=True, metadata={"format": "date-time"})


class ConversationShape(Open):
    id = fields.String(required=True)
    channel_id = fields.String(required=True)
    customer = fields.Nested(CustomerShape, required=True)
    source = fields.String(required=True)
    status = fields.String(allow_none=True, required=True)
    unread_count = fields.Integer(required=True, validate=validate.Range(min=0))
    last_message = fields.Nested(LastMessageShape, allow_none=True, required=True)
    created_at = fields.String(allow_none=True, required=True, metadata={"format": "date-time"})
    updated_at = fields.String(allow_none=True, required=True, metadata={"format": "date-time"})
    last_customer_message_at = fields.String(allow_none=True, required=True, metadata={"format": "date-time"})
    reply_window = fields.Nested(ReplyWindowShape, required=True)


def _nullable_time() -> fields.String:
    # Times are ISO 8601 in UTC with milliseconds (``2026-11-07T10:30:00.000Z``), or null.
    return fields.String(allow_none=True, required=True, metadata={"format": "date-time"})


class DeliveryErrorShape(Open):
    code = fields.Integer(allow_none=True, required=True, metadata={"description": "Meta's error code"})
    message = fields.String(required=True)


class SendAnswer(Open):
    message = fields.Nested("MessageShape", required=True)


class MessageShape(Open):
    """WSMessage (API.md §3): the one shape of a message in REST, WebSocket events and triggers."""

    id = fields.String(required=True)
    content = fields.String(required=True)
    type = fields.String(required=True, validate=validate.OneOf(["customer", "support", "AI"]))
    customer = fields.String(allow_none=True, required=True)
    conversation_id = fields.String(allow_none=True, required=True)
    is_ai_response = fields.Boolean(required=True)
    is_answered = fields.Boolean(required=True)
    created_at = _nullable_time()
    feedback = fields.Raw(allow_none=True, required=True)
    feedback_comment = fields.String(allow_none=True, required=True)
    feedback_at = _nullable_time()
    message_type = fields.String(required=True)
    media_url = fields.String(allow_none=True, required=True)
    media_file = fields.String(allow_none=True, required=True)
    processing_status = fields.String(required=True)
    transcription = fields.String(allow_none=True, required=True)
    source = fields.String(allow_none=True, required=True)
    mid = fields.String(allow_none=True, required=True)
    sent_at = _nullable_time()
    reply_to = fields.Dict(allow_none=True, required=True)
    attachments = fields.List(fields.Dict(), required=True)
    reactions = fields.List(fields.Dict(), required=True)
    is_deleted = fields.Boolean(required=True)
    edited_at = _nullable_time()
    read_at = _nullable_time()
    delivery_status = fields.String(
        allow_none=True, required=True, validate=validate.OneOf(["pending", "sent", "failed"])
    )
    delivery_error = fields.Nested(DeliveryErrorShape, allow_none=True, required=True)


class ChannelList(Open):
    channels = fields.List(fields.Nested(ChannelShape), required=True)


class ChannelOne(Open):
    channel = fields.Nested(ChannelShape, required=True)


class SubscriptionShape(Open):
    state = fields.String(required=True, metadata={"enum": ["subscribed", "incomplete", "not_subscribed", "unknown"]})
    fields_ = fields.List(fields.String(), allow_none=True, required=True, data_key="fields")
    missing = fields.List(fields.String(), allow_none=True, required=True)
    checked_at = fields.String(allow_none=True, required=True, metadata={"format": "date-time"})
    error = fields.String(allow_none=True, required=True)


class SubscriptionAnswer(Open):
    channel_id = fields.String(required=True)
    subscription = fields.Nested(SubscriptionShape, required=True)


class CountShape(Open):
    done = fields.Integer(required=True)
    total = fields.Integer(required=True)
    listed = fields.Boolean(required=True)


class HistoryMessagesShape(Open):
    stored = fields.Integer(required=True)
    duplicate = fields.Integer(required=True)
    not_detailed = fields.Integer(required=True)
    invalid = fields.Integer(required=True)


class HistoryRunShape(Open):
    id = fields.String(required=True)
    channel_id = fields.String(required=True)
    mode = fields.String(required=True, metadata={"enum": ["backfill", "repair"]})
    state = fields.String(required=True, metadata={"enum": ["queued", "running", "done", "failed"]})
    since = fields.String(allow_none=True, required=True, metadata={"format": "date-time"})
    conversations = fields.Nested(CountShape, required=True)
    messages = fields.Nested(HistoryMessagesShape, required=True)
    calls = fields.Integer(required=True)
    messages_per_sec = fields.Float(required=True)
    eta_secs = fields.Float(allow_none=True, required=True)
    error = fields.String(allow_none=True, required=True)
    started_at = fields.String(allow_none=True, required=True, metadata={"format": "date-time"})
    finished_at = fields.String(allow_none=True, required=True, metadata={"format": "date-time"})
    updated_at = fields.String(allow_none=True, required=True, metadata={"format": "date-time"})


class HistoryStarted(Open):
    history_import = fields.Nested(HistoryRunShape, required=True)


class HistoryRuns(Open):
    channel_id = fields.String(required=True)
    runs = fields.List(fields.Nested(HistoryRunShape), required=True)


class ConversationPage(Open):
    conversations = fields.List(fields.Nested(ConversationShape), required=True)
    next_cursor = fields.String(allow_none=True, required=True)


class ConversationOne(Open):
    conversation = fields.Nested(ConversationShape, required=True)


class MessagePage(Open):
    messages = fields.List(fields.Nested(MessageShape), required=True)
    has_more = fields.Boolean(required=True)


class TokenIssued(Open):
    token = fields.String(required=True, metadata={"description": "shown once; stored hashed"})
    owner = fields.Nested(OwnerShape, required=True)


class MarkSentAnswer(Open):
    status = fields.String(required=True, validate=validate.OneOf(["success"]))
    message = fields.Nested(MessageShape, required=True)
    adopted = fields.Boolean(required=True)


class DeadError(Open):
    result = fields.String(allow_none=True, required=True)
    status = fields.Integer(allow_none=True, required=True)
    detail = fields.String(allow_none=True, required=True)
    at = _nullable_time()


class DeadDelivery(Open):
    delivery_id = fields.String(required=True)
    target = fields.String(required=True)
    channel_id = fields.String(required=True)
    conversation_id = fields.String(required=True)
    message_id = fields.String(required=True)
    attempts = fields.Integer(required=True)
    retries = fields.Integer(required=True)
    last_error = fields.Nested(DeadError, required=True)
    created_at = _nullable_time()
    dead_at = _nullable_time()


class DeadPage(Open):
    deliveries = fields.List(fields.Nested(DeadDelivery), required=True)
    next_cursor = fields.String(allow_none=True, required=True)


class Health(Open):
    status = fields.String(required=True, validate=validate.OneOf(["ok"]))


class Readiness(Open):
    status = fields.String(required=True, validate=validate.OneOf(["ready", "unavailable"]))
    checks = fields.Dict(keys=fields.String(), values=fields.Boolean(), required=True)


class WebhookItemResult(Open):
    """One item's outcome (API.md §1): a stored message (``data``), a duplicate (``duplicate``,
    ``layer``), a non-message event (``event``, ``message_id``, ``changes``), an item for no
    connected channel (``ignored``) or one that cannot be processed (``error``)."""

    status = fields.String(required=True, validate=validate.OneOf(["success", "ignored", "error"]))
    message = fields.String()
    data = fields.Dict()
    duplicate = fields.Boolean()
    layer = fields.String(validate=validate.OneOf(["mid", "cache", "database"]))
    event = fields.String()
    message_id = fields.String(allow_none=True)
    changes = fields.List(fields.String())
    reason = fields.String()
    error = fields.String()


class WebhookResults(Open):
    status = fields.String(required=True, validate=validate.OneOf(["success"]))
    results = fields.List(fields.Nested(WebhookItemResult), required=True)
