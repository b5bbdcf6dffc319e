"""Meta's messaging window, as pure functions: may this reply go, and how.

Meta lets a business answer a customer with a normal response for 24 hours after the
customer's last message; a *person* may answer for 7 days with the ``HUMAN_AGENT`` tag; after
that nothing may be sent until the customer writes again. An AI reply is never tagged as a
human's: after 24 hours it is refused. The boundaries are inclusive of the customer's own
instant and exclusive at the end (a reply at exactly 24 h is already outside the standard
window).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from models.messages import TYPE_AI
from models.timeutil import iso

STANDARD_WINDOW = dt.timedelta(hours=24)
HUMAN_AGENT_WINDOW = dt.timedelta(days=7)

MODE_RESPONSE = "RESPONSE"
MODE_HUMAN_AGENT = "HUMAN_AGENT"


@dataclass(frozen=True)
class WindowDecision:
    """``mode`` is how the reply goes (``RESPONSE`` or ``HUMAN_AGENT``), or None: refused."""

    mode: str | None
    reason: str = ""


def reply_window(last_customer_message_at: dt.datetime | None) -> dict[str, Any]:
    """The conversation's ``reply_window`` (API.md §4): until when each kind of reply may go."""
    if last_customer_message_at is None:
        return {"standard_until": None, "human_agent_until": None}
    return {
        "standard_until": iso(last_customer_message_at + STANDARD_WINDOW),
        "human_agent_until": iso(last_customer_message_at + HUMAN_AGENT_WINDOW),
    }


def decide(sender_type: str, last_customer_message_at: dt.datetime | None, now: dt.datetime) -> WindowDecision:
    """Whether a reply of ``sender_type`` (``AI`` or ``support``) may be sent ``now``, and how."""
    if last_customer_message_at is None:
        return WindowDecision(None, "The customer has not written in this conversation; Instagram allows no reply.")
    since = now - last_customer_message_at
    if since < STANDARD_WINDOW:
        return WindowDecision(MODE_RESPONSE)
    if sender_type == TYPE_AI:
        return WindowDecision(None, "More than 24 hours since the customer's last message: only a person may reply.")
    if since < HUMAN_AGENT_WINDOW:
        return WindowDecision(MODE_HUMAN_AGENT)
    return WindowDecision(None, "More than 7 days since the customer's last message; Instagram allows no reply.")
