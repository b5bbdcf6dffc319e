"""The OpenAPI 3.1 document of every HTTP endpoint, built from the marshmallow schemas.

Request bodies are the schemas the handlers validate with (:mod:`server.api.schemas`), answers
the shapes of :mod:`server.api.shapes`, so the document cannot drift from what is enforced.
Rules marshmallow states in code (``@validates_schema``: "exactly one of owner_email and
owner_id") are added to the generated components as JSON Schema (``SCHEMA_RULES``), so a client
generated from the document, and schemathesis, know them too. Served at ``/api/openapi.json``
(no auth); ``tests/api/test_openapi.py`` validates it and fuzzes a live server with it.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from server.api import schemas, shapes
from server.api.pagination import MAX_LIMIT

OPENAPI_VERSION = "3.1.0"
JSON = "application/json"

SECURITY_SCHEMES = {
    "adminToken": "IGSYNC_ADMIN_TOKEN: channels, inbox tokens, dead trigger deliveries.",
    "internalToken": "One of IGSYNC_INTERNAL_TOKENS: services that send (the AI service, the app).",
    "inboxToken": "An inbox token (POST /api/v1/tokens): one owner's channels and conversations.",
    "metricsToken": "IGSYNC_METRICS_TOKEN, when set: the Prometheus scrape.",
}

# Cross-field rules of the input schemas (their @validates_schema), in JSON Schema.
SCHEMA_RULES: dict[str, dict[str, Any]] = {
    "TokenInput": {"oneOf": [{"required": ["owner_email"]}, {"required": ["owner_id"]}]},
    "SendInput": {
        "anyOf": [
            {"required": ["content"], "properties": {"content": {"pattern": "\\S"}}},
            {"required": ["attachments"], "properties": {"attachments": {"minItems": 1}}},
        ]
    },
    "MarkSentInput": {
        "allOf": [
            {
                "oneOf": [
                    {
                        "required": ["conversation_id"],
                        "not": {"anyOf": [{"required": ["account_id"]}, {"required": ["customer_instagram_id"]}]},
                    },
                    {"required": ["account_id", "customer_instagram_id"], "not": {"required": ["conversation_id"]}},
                ]
            },
            {
                "anyOf": [
                    {"required": ["content"], "properties": {"content": {"minLength": 1}}},
                    {"required": ["media_url"], "properties": {"media_url": {"type": "string"}}},
                ]
            },
        ]
    },
}

ERROR_DESCRIPTIONS = {
    400: "Malformed request (not JSON, not an object, a bad cursor).",
    401: "No valid token (or, for webhooks, no valid signature).",
    403: "A token of another kind, or a refused origin.",
    404: "No such resource, or one of another owner.",
    405: "Method not allowed.",
    409: "Conflict with what is stored (not_failed, not_sent_yet, not_a_customer, channel_cannot_send, needs_reauth).",
    413: "The body is too large.",
    422: "Invalid fields (`fields` names them).",
    426: "Not a WebSocket upgrade.",
    503: "A store is unavailable, or the server is shutting down: retry.",
}


def _errors(*codes: int) -> dict[str, Any]:
    return {
        str(code): {"description": ERROR_DESCRIPTIONS[code], "content": {JSON: {"schema": "ErrorShape"}}}
        for code in codes
    }


def _ok(schema: Any, description: str, status: int = 200) -> dict[str, Any]:
    return {str(status): {"description": description, "content": {JSON: {"schema": schema}}}}


def _secured(kind: str, operation: dict[str, Any], *, shutting_down: bool = True) -> dict[str, Any]:
    """An operation behind ``kind``'s bearer token: 401/403 (and 503 while draining) added."""
    responses = {**operation["responses"], **_errors(401, 403)}
    if shutting_down:
        responses.update(_errors(503))
    return {**operation, "security": [{kind: []}], "responses": responses}


def _query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"in": "query", "name": name, "required": False, "description": description, "schema": schema}


def _path(name: str, description: str) -> dict[str, Any]:
    return {"in": "path", "name": name, "required": True, "description": description, "schema": {"type": "string"}}


LIMIT = _query("limit", "Page size.", type="integer", minimum=1, maximum=MAX_LIMIT, default=50)
CURSOR = _query("cursor", "`next_cursor` of the previous page.", type="string")


def _body(schema: Any, example: dict[str, Any] | None = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["examples"] = {"example": {"value": example}}
    return {"required": True, "content": {JSON: media}}


# The examples of API.md, in the document (schemathesis sends each of them too).
ACCOUNT_EXAMPLE = "17841400000000777"
CUSTOMER_EXAMPLE = "6200000000000101"
EXAMPLES: dict[str, dict[str, Any]] = {
    "webhook": {
        "object": "instagram",
        "entry": [
            {
                "id": ACCOUNT_EXAMPLE,
                "time": 1762511400000,
                "messaging": [
                    {
                        "sender": {"id": CUSTOMER_EXAMPLE},
                        "recipient": {"id": ACCOUNT_EXAMPLE},
                        "timestamp": 1762511400000,
                        "message": {"mid": "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQxNDAw", "text": "Hello!"},
                    }
                ],
            }
        ],
    },
    "channel": {"page_id": ACCOUNT_EXAMPLE, "username": "shop", "owner": {"id": 123, "email": "owner@shop.example"}},
    "send": {"content": "Your order shipped today.", "client_message_id": "app-42"},
    "token": {"owner_email": "owner@shop.example", "label": "support desk"},
    "mark_sent": {
        "account_id": ACCOUNT_EXAMPLE,
        "customer_instagram_id": CUSTOMER_EXAMPLE,
        "content": "Hi! Your order shipped.",
        "type": "AI",
        "mids": ["aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQxNDAx"],
        "client_message_id": "app-42",
    },
}


def webhook_paths() -> dict[str, dict[str, Any]]:
    """API.md §1: Meta's handshake and its signed event bodies."""
    handshake = {
        "summary": "Meta's subscription handshake",
        "parameters": [
            _query("hub.mode", "Must be `subscribe`.", type="string"),
            _query("hub.verify_token", "Must equal IGSYNC_VERIFY_TOKEN.", type="string"),
            _query("hub.challenge", "Echoed back as plain text.", type="string"),
        ],
        "responses": {
            "200": {"description": "The challenge.", "content": {"text/plain": {"schema": {"type": "string"}}}},
            **_errors(403, 503),
        },
    }
    events = {
        "summary": "Instagram webhook events (messages, echoes, reactions, reads, edits, unsends)",
        "parameters": [
            {
                "in": "header",
                "name": "X-Hub-Signature-256",
                "required": True,
                "description": "`sha256=` + hex HMAC-SHA256 of the raw body with the app secret.",
                "schema": {"type": "string"},
            }
        ],
        "requestBody": _body(
            {
                "type": "object",
                "required": ["object", "entry"],
                "properties": {
                    "object": {"const": "instagram"},
                    "entry": {"type": "array", "items": {"type": "object"}},
                },
            },
            EXAMPLES["webhook"],
        ),
        "responses": {
            "200": {
                "description": "Each item stored once (or a duplicate, an event, ignored, invalid_item).",
                "content": {
                    JSON: {"schema": {"anyOf": [{"$ref": _ref("WebhookItemResult")}, {"$ref": _ref("WebhookResults")}]}}
                },
            },
            **_errors(400, 401, 413, 503),
        },
    }
    return {"/webhooks/instagram": {"get": handshake, "post": events}}


def _ref(name: str) -> str:
    return f"#/components/schemas/{name}"


def inbox_paths() -> dict[str, dict[str, Any]]:
    """API.md §3: an owner's channels, conversations and messages (inbox tokens)."""
    conversation_id = _path("conversation_id", "Our conversation id.")
    return {
        "/api/v1/conversations": {
            "get": _secured(
                "inboxToken",
                {
                    "summary": "The caller's conversations, most recently updated first",
                    "parameters": [
                        _query("channel_id", "Only this channel's.", type="string"),
                        _query(
                            "updated_since",
                            "Only those updated at or after (RFC 3339).",
                            type="string",
                            format="date-time",
                            examples=["2026-11-07T10:30:00Z"],
                        ),
                        LIMIT,
                        CURSOR,
                    ],
                    "responses": {**_ok("ConversationPage", "One page."), **_errors(400, 404, 422)},
                },
            )
        },
        "/api/v1/conversations/{conversation_id}": {
            "get": _secured(
                "inboxToken",
                {
                    "summary": "One conversation",
                    "parameters": [conversation_id],
                    "responses": {**_ok("ConversationOne", "The conversation."), **_errors(404)},
                },
            )
        },
        "/api/v1/conversations/{conversation_id}/read": {
            "post": _secured(
                "inboxToken",
                {
                    "summary": "Mark a conversation read (unread count to 0), told to the owner's other inboxes",
                    "parameters": [conversation_id],
                    "responses": {**_ok("ConversationOne", "The conversation, read."), **_errors(404)},
                },
            )
        },
        "/api/v1/conversations/{conversation_id}/messages": {
            "post": {
                **_secured(
                    "inboxToken",
                    {
                        "summary": "Send a message: stored first (pending), then sent to Instagram by a worker",
                        "parameters": [conversation_id],
                        "requestBody": _body(schemas.SendSchema, EXAMPLES["send"]),
                        "responses": {
                            **_ok("SendAnswer", "The message stored before, under this client_message_id."),
                            **_ok("SendAnswer", "Stored (delivery_status pending) and queued.", 202),
                            **_errors(400, 404, 409, 422),
                        },
                    },
                ),
                "security": [{"inboxToken": []}, {"internalToken": []}],
            },
            "get": _secured(
                "inboxToken",
                {
                    "summary": "A conversation's messages, oldest first, one page",
                    "parameters": [
                        conversation_id,
                        _query("after", "Newer than this message id.", type="string"),
                        _query("before", "Older than this message id.", type="string"),
                        LIMIT,
                    ],
                    "responses": {**_ok("MessagePage", "One page."), **_errors(400, 404, 422)},
                },
            ),
        },
    }


def retry_path() -> dict[str, dict[str, Any]]:
    """API.md §2b: a failed send again."""
    operation = _secured(
        "inboxToken",
        {
            "summary": "Send a failed message again",
            "parameters": [_path("message_id", "Our message id.")],
            "responses": {**_ok("SendAnswer", "Queued again.", 202), **_errors(404, 409)},
        },
    )
    operation["security"] = [{"inboxToken": []}, {"internalToken": []}]
    return {"/api/v1/messages/{message_id}/retry": {"post": operation}}


def admin_paths() -> dict[str, dict[str, Any]]:
    """API.md §3 and §3b: channels and tokens (admin), and the channel list (inbox)."""
    return {
        "/api/v1/channels": {
            "get": _secured(
                "inboxToken",
                {"summary": "The caller's channels", "responses": _ok("ChannelList", "The channels.")},
            ),
            "post": _secured(
                "adminToken",
                {
                    "summary": "Connect a channel (the same page_id again updates and reconnects it)",
                    "requestBody": _body(schemas.ChannelInputSchema, EXAMPLES["channel"]),
                    "responses": {
                        **_ok("ChannelOne", "Updated and reconnected."),
                        **_ok("ChannelOne", "Created.", 201),
                        **_errors(400, 422),
                    },
                },
            ),
        },
        "/api/v1/channels/{channel_id}": {
            "delete": _secured(
                "adminToken",
                {
                    "summary": "Disconnect a channel; its data is kept",
                    "parameters": [_path("channel_id", "Our channel id.")],
                    "responses": {**_ok("ChannelOne", "Disconnected."), **_errors(404)},
                },
            )
        },
        **account_paths(),
        "/api/v1/tokens": {
            "post": _secured(
                "adminToken",
                {
                    "summary": "Issue an inbox token for an owner (shown once, stored hashed)",
                    "requestBody": _body(schemas.TokenInputSchema, EXAMPLES["token"]),
                    "responses": {**_ok("TokenIssued", "Issued.", 201), **_errors(400, 404, 422)},
                },
            )
        },
        "/api/v1/triggers/dead": {
            "get": _secured(
                "adminToken",
                {
                    "summary": "Dead-lettered trigger deliveries, newest first",
                    "parameters": [_query("channel_id", "Only this channel's.", type="string"), LIMIT, CURSOR],
                    "responses": {**_ok("DeadPage", "One page."), **_errors(400, 404, 422)},
                },
            )
        },
    }


def account_paths() -> dict[str, dict[str, Any]]:
    """docs/accounts.md: a channel's webhook subscription and its history import (admin)."""
    channel = _path("channel_id", "Our channel id.")
    return {
        "/api/v1/channels/{channel_id}/subscription": {
            "get": _secured(
                "adminToken",
                {
                    "summary": "The account's webhook subscription as Meta lists it now",
                    "parameters": [channel],
                    "responses": {**_ok("SubscriptionAnswer", "Read back from Meta."), **_errors(404)},
                },
            ),
            "post": _secured(
                "adminToken",
                {
                    "summary": "Subscribe the account to the fields igsync handles, then read it back",
                    "parameters": [channel],
                    "responses": {**_ok("SubscriptionAnswer", "Subscribed and read back."), **_errors(404)},
                },
            ),
        },
        "/api/v1/channels/{channel_id}/history": {
            "get": _secured(
                "adminToken",
                {
                    "summary": "The channel's history import and gap repairs, newest first",
                    "parameters": [channel],
                    "responses": {**_ok("HistoryRuns", "The runs."), **_errors(404)},
                },
            ),
            "post": _secured(
                "adminToken",
                {
                    "summary": "Import the channel's history from the Conversations API, in the background",
                    "parameters": [channel],
                    "requestBody": {
                        **_body(schemas.HistoryInputSchema, {"since": "2026-11-01T00:00:00Z"}),
                        "required": False,
                    },
                    "responses": {**_ok("HistoryStarted", "Queued (or running).", 202), **_errors(400, 404, 409, 422)},
                },
            ),
        },
    }


def sender_paths() -> dict[str, dict[str, Any]]:
    """API.md §2: mark-sent, for services that call Instagram themselves."""
    return {
        "/api/v1/messages/mark-sent": {
            "post": _secured(
                "internalToken",
                {
                    "summary": "Record a reply sent outside igsync, so that its echo is not stored twice",
                    "requestBody": _body(schemas.MarkSentSchema, EXAMPLES["mark_sent"]),
                    "responses": {
                        **_ok("MarkSentAnswer", "Already recorded (same client_message_id), or adopted the echo."),
                        **_ok("MarkSentAnswer", "Recorded.", 201),
                        **_errors(400, 404, 409, 422),
                    },
                },
            )
        }
    }


def operations_paths() -> dict[str, dict[str, Any]]:
    """API.md §4–5: health, metrics, this document, the live socket, media and the inbox page."""
    binary = {"*/*": {"schema": {"type": "string", "format": "binary"}}}
    media = {
        "summary": "A stored media copy (a single byte range is served for seeking)",
        "parameters": [
            _path("media_id", "The id in a message's media_file."),
            {"in": "header", "name": "Range", "required": False, "schema": {"type": "string"}},
        ],
        "responses": {
            "200": {"description": "The bytes.", "content": binary},
            "206": {"description": "The requested range.", "content": binary},
            "304": {"description": "Not modified (ETag)."},
            "416": {"description": "The range cannot be served.", "content": {JSON: {"schema": "ErrorShape"}}},
            **_errors(404),
        },
    }
    return {
        "/healthz": {"get": {"summary": "Liveness", "responses": _ok("Health", "The process answers.")}},
        "/readyz": {
            "get": {
                "summary": "Readiness: MongoDB and Redis answer within a deadline",
                "responses": {**_ok("Readiness", "Ready."), **_ok("Readiness", "Not ready.", 503)},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "security": [{}, {"metricsToken": []}],
                "responses": {
                    "200": {
                        "description": "Text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(401, 403, 503),
                },
            }
        },
        "/api/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {
                    "200": {"description": "OpenAPI 3.1.", "content": {JSON: {"schema": {"type": "object"}}}}
                },
            }
        },
        "/ws": {
            "get": {
                "summary": "The inbox's live events (a WebSocket; frames in API.md §4)",
                "security": [{"inboxToken": []}],
                "parameters": [_query("access_token", "The inbox token, for browsers (no header).", type="string")],
                "responses": {"101": {"description": "Switching protocols."}, **_errors(401, 403, 426, 503)},
            }
        },
        "/media/{media_id}": {
            "get": _secured("inboxToken", media),
            "head": _secured("inboxToken", {**media, "summary": "A media copy's headers"}),
        },
        "/": {
            "get": {
                "summary": "The inbox page",
                "responses": {
                    "200": {"description": "HTML.", "content": {"text/html": {"schema": {"type": "string"}}}}
                },
            }
        },
        "/assets/{asset_path}": {
            "get": {
                "summary": "The inbox page's scripts and styles",
                "parameters": [_path("asset_path", "A file of the page.")],
                "responses": {"200": {"description": "The file.", "content": binary}, **_errors(404)},
            }
        },
    }


def package_version() -> str:
    """igsync's version as installed (``0.0.0`` when run from a tree that is not installed)."""
    try:
        return importlib.metadata.version("igsync")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def build_document(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document, as a JSON-ready dict."""
    spec = APISpec(
        title="igsync",
        version=version,
        openapi_version=OPENAPI_VERSION,
        plugins=[MarshmallowPlugin()],
        info={"description": "Instagram Direct inbox: webhooks in, every message once, live to every inbox."},
    )
    for name, description in SECURITY_SCHEMES.items():
        spec.components.security_scheme(name, {"type": "http", "scheme": "bearer", "description": description})
    for name, schema in _components().items():
        spec.components.schema(name, schema=schema)
    paths = {
        **webhook_paths(),
        **sender_paths(),
        **retry_path(),
        **admin_paths(),
        **inbox_paths(),
        **operations_paths(),
    }
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    document = spec.to_dict()
    for name, rule in SCHEMA_RULES.items():
        document["components"]["schemas"][name].update(rule)
    return document


def _components() -> dict[str, Any]:
    named: dict[str, Any] = {
        "ChannelInput": schemas.ChannelInputSchema,
        "TokenInput": schemas.TokenInputSchema,
        "MarkSentInput": schemas.MarkSentSchema,
        "SendInput": schemas.SendSchema,
        "HistoryInput": schemas.HistoryInputSchema,
    }
    for name in (
        "ErrorShape",
        "ChannelList",
        "ChannelOne",
        "ConversationPage",
        "ConversationOne",
        "MessagePage",
        "TokenIssued",
        "MarkSentAnswer",
        "SendAnswer",
        "DeadPage",
        "SubscriptionAnswer",
        "HistoryStarted",
        "HistoryRuns",
        "Health",
        "Readiness",
        "WebhookItemResult",
        "WebhookResults",
    ):
        named[name] = getattr(shapes, name)
    return named
