"""A small synchronous client for igsync's internal senders (AI service, the app's send API).

::

    from igsync_client import IgsyncClient

    igsync = IgsyncClient("http://igsync.internal:8080", token="<IGSYNC_INTERNAL_TOKENS entry>")
    igsync.send(conv_id, "Your order shipped today.", type="AI")  # igsync calls Instagram
    # or, for a sender that calls Instagram's Send API itself:
    igsync.mark_sent(conversation_id=conv_id, content=text, type="AI", mids=[send_api_message_id])

See :class:`IgsyncClient` and README.md.
"""

from igsync_client.client import IgsyncClient, MarkSentResult, SendResult
from igsync_client.errors import (
    IgsyncAuthError,
    IgsyncConnectionError,
    IgsyncError,
    IgsyncNotFound,
    IgsyncServerError,
    IgsyncValidationError,
)
from igsync_client.triggers import verify_trigger_signature

__all__ = [
    "IgsyncAuthError",
    "IgsyncClient",
    "IgsyncConnectionError",
    "IgsyncError",
    "IgsyncNotFound",
    "IgsyncServerError",
    "IgsyncValidationError",
    "MarkSentResult",
    "SendResult",
    "verify_trigger_signature",
]
