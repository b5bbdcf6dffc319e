"""Meta's Graph API errors, classified by code *and* subcode, in one table.

Owns :func:`classify`: what an error means for every caller (profile look-ups, attachment
links, sends, token refreshes, subscriptions, history import). ``docs/accounts.md`` shows the
same table to operators; :data:`RULES` is its source.

Why subcodes matter: in July 2026 Meta answered ``(#100) Unsupported get request`` for hours to
calls that work; systems that took code 100 as "no such user" gave up profile and media
look-ups for good. Code 100 is a catch-all ("invalid parameter"); only its subcodes that say
*the user is not there* are permanent. Everything not listed as permanent or as a token error
is worth another try later (transient) only when Meta or HTTP says so; the rest fails once.
"""

from __future__ import annotations

from dataclasses import dataclass

# What to do about an error.
TOKEN_EXPIRED = "token_expired"  # the channel needs re-authorisation; stop asking with this token
UNAVAILABLE = "unavailable"  # no such user / no consent: a placeholder, never asked again
TRANSIENT = "transient"  # rate limits, Meta-side outages, timeouts, 5xx: another try later
FAILED = "failed"  # anything else: this call fails, nothing is retried

ANY = None


@dataclass(frozen=True)
class Rule:
    code: int
    subcode: int | None  # ANY: every subcode of the code
    category: str
    meaning: str


# Checked in order: a (code, subcode) rule before the code's catch-all.
RULES: tuple[Rule, ...] = (
    Rule(190, ANY, TOKEN_EXPIRED, "access token expired, revoked or invalid (subcodes 458–467)"),
    Rule(102, ANY, TOKEN_EXPIRED, "session key invalid or no longer valid"),
    Rule(100, 2018001, UNAVAILABLE, "no matching user found"),
    Rule(230, ANY, UNAVAILABLE, "the user has not given consent to the business"),
    Rule(9010, ANY, UNAVAILABLE, "no matching Instagram user"),
    Rule(551, ANY, UNAVAILABLE, "this person is not available right now (blocked or gone)"),
    Rule(100, ANY, TRANSIENT, "catch-all 'invalid parameter / unsupported request': Meta-side outages use it"),
    Rule(1, ANY, TRANSIENT, "unknown error (possibly temporary)"),
    Rule(2, ANY, TRANSIENT, "service temporarily unavailable"),
    Rule(4, ANY, TRANSIENT, "application request limit reached"),
    Rule(17, ANY, TRANSIENT, "user request limit reached"),
    Rule(32, ANY, TRANSIENT, "page request limit reached"),
    Rule(341, ANY, TRANSIENT, "application limit reached"),
    Rule(613, ANY, TRANSIENT, "calls to this API exceeded the rate limit"),
    Rule(80002, ANY, TRANSIENT, "Instagram business-use-case rate limit"),
    Rule(80006, ANY, TRANSIENT, "Messenger business-use-case rate limit"),
)


def classify(
    code: int | None, http_status: int | None, subcode: int | None = None, *, is_transient: bool = False
) -> str:
    """What a Graph API error means: ``token_expired``, ``unavailable``, ``transient`` or ``failed``.

    An error without a Meta code is judged by HTTP alone (no answer, 5xx, 429: transient);
    a code no rule names is transient when Meta flags it ``is_transient`` or HTTP is 5xx."""
    if code is None:
        return TRANSIENT if http_status is None or http_status >= 500 or http_status == 429 else FAILED
    for rule in RULES:
        if rule.code == code and (rule.subcode is ANY or rule.subcode == subcode):
            return rule.category
    if is_transient or (http_status is not None and http_status >= 500):
        return TRANSIENT
    return FAILED


def table_rows() -> list[tuple[str, str, str, str]]:
    """The table as ``docs/accounts.md`` shows it: (code, subcode, category, meaning)."""
    return [(str(r.code), "any" if r.subcode is ANY else str(r.subcode), r.category, r.meaning) for r in RULES]
