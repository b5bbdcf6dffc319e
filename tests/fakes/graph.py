"""A fake Graph API: a real local HTTP server answering what a test scripts (profiles,
attachment links, Meta's errors, slowness), the Send API, token refreshes, webhook
subscriptions (``subscribed_apps``) and the Conversations API with paging and Meta's
20-message detail limit — for either host (a test starts one fake per host).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import orjson
import tornado.web

from tests.fakes.local import LocalServer

# The channel token the fake accepts (tests connect their channel with it).
ACCESS_TOKEN = "IGQVJ-test-channel-access-token-0123456789"


@dataclass
class GraphAnswer:
    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)
    delay_secs: float = 0.0
    # Held until the test opens it: proves a caller does not wait for this answer.
    gate: asyncio.Event | None = None


class _GraphHandler(tornado.web.RequestHandler):
    def initialize(self, graph: FakeGraphApi) -> None:
        self.graph = graph

    async def get(self, version: str, user_id: str) -> None:
        fields = self.get_query_argument("fields", None) or ""
        if user_id in self.graph.conversation_by_id or user_id in self.graph.message_by_id:
            self.graph.history_calls.append((user_id, fields))
            status, body = self.graph.history_answer(user_id, fields, self.get_query_argument("after", None))
            if self.get_query_argument("access_token", "") not in self.graph.valid_tokens:
                status, body = 400, _meta_error(190, "Error validating access token: Session has expired")
            self.set_status(status)
            self.finish(body)
            return
        self.graph.requests.append(
            {
                "version": version,
                "user_id": user_id,
                "fields": self.get_query_argument("fields", None),
                "access_token": self.get_query_argument("access_token", None),
            }
        )
        answers = self.graph.answers.get(user_id) or [GraphAnswer(404, _meta_error(100, "Unsupported get request"))]
        answer = answers[min(len(self.graph.requests_for(user_id)) - 1, len(answers) - 1)]
        self.graph.inflight += 1
        self.graph.max_inflight = max(self.graph.max_inflight, self.graph.inflight)
        try:
            if answer.delay_secs:
                await asyncio.sleep(answer.delay_secs)
            if answer.gate is not None:
                await answer.gate.wait()
        finally:
            self.graph.inflight -= 1
        if self.get_query_argument("access_token", "") not in self.graph.valid_tokens:
            answer = GraphAnswer(400, _meta_error(190, "Error validating access token: Session has expired"))
        self.set_status(answer.status)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(answer.body))


class _AccountHandler(tornado.web.RequestHandler):
    """``/<version>/<me|page id>/(conversations|subscribed_apps)`` and ``/refresh_access_token``."""

    def initialize(self, graph: FakeGraphApi, what: str) -> None:
        self.graph = graph
        self.what = what

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(body))

    def _refused(self) -> bool:
        token = self.get_query_argument("access_token", "")
        if token in self.graph.valid_tokens:
            return False
        self._answer(400, _meta_error(190, "Error validating access token: Session has expired", 463))
        return True

    async def get(self, version: str | None = None, node: str | None = None) -> None:
        self.graph.account_calls.append({"what": self.what, "method": "GET", "node": node, "version": version})
        scripted = self.graph.next_failure()
        if scripted is not None:
            self._answer(scripted.status, scripted.body)
            return
        if self.what == "refresh":
            await self._refresh()
            return
        if self._refused():
            return
        if self.what == "subscribed_apps":
            fields = self.graph.subscriptions.get(node or "")
            self._answer(200, {"data": [] if fields is None else [{"id": "app", "subscribed_fields": fields}]})
            return
        start = int(self.get_query_argument("after", "0") or 0)
        page = self.graph.conversations_sorted()[start : start + self.graph.page_size]
        body: dict[str, Any] = {"data": [{"id": c.id, "updated_time": c.updated_time} for c in page]}
        if start + self.graph.page_size < len(self.graph.conversations):
            after = str(start + self.graph.page_size)
            body["paging"] = {"cursors": {"after": after}, "next": f"{self.graph.url}/next?after={after}"}
        self._answer(200, body)

    async def post(self, version: str, node: str) -> None:
        self.graph.account_calls.append({"what": self.what, "method": "POST", "node": node, "version": version})
        scripted = self.graph.next_failure()
        if scripted is not None:
            self._answer(scripted.status, scripted.body)
            return
        if self._refused():
            return
        fields = [f for f in self.get_query_argument("subscribed_fields", "").split(",") if f]
        self.graph.subscriptions[node] = sorted(set(self.graph.subscriptions.get(node) or []) | set(fields))
        self._answer(200, {"success": True})

    async def delete(self, version: str, node: str) -> None:
        self.graph.subscriptions.pop(node, None)
        self._answer(200, {"success": True})

    async def _refresh(self) -> None:
        token = self.get_query_argument("access_token", "")
        if self.get_query_argument("grant_type", "") != "ig_refresh_token" or token not in self.graph.valid_tokens:
            self._answer(400, _meta_error(190, "Error validating access token", 467))
            return
        if self.graph.refresh_gate is not None:
            await self.graph.refresh_gate.wait()
        self.graph.refreshes.append(token)
        fresh = f"IGQVJ-refreshed-{len(self.graph.refreshes)}-{token[-6:]}"
        self.graph.valid_tokens.add(fresh)
        self._answer(200, {"access_token": fresh, "token_type": "bearer", "expires_in": self.graph.refresh_expires_in})


@dataclass
class FakeConversation:
    id: str
    customer_id: str
    updated_time: str
    # Newest first, as Meta lists them: {"id", "created_time", "from", "to", "message"}.
    messages: list[dict[str, Any]] = field(default_factory=list)


class _SendHandler(tornado.web.RequestHandler):
    """``POST /<version>/<account>/messages``: Meta's Send API. Answers what the test scripted
    (``send_answers``, in order; then a fresh ``message_id``), after the test's ``on_send``
    hook ran — which is where a test emits the echo webhook before, with or after the answer."""

    def initialize(self, graph: FakeGraphApi) -> None:
        self.graph = graph

    async def post(self, version: str, account_id: str) -> None:
        body = orjson.loads(self.request.body or b"{}")
        number = len(self.graph.sends) + 1
        request = {
            "version": version,
            "account_id": account_id,
            "body": body,
            "access_token": self.get_query_argument("access_token", None),
            "n": number,
        }
        self.graph.sends.append(request)
        answer = self.graph.send_answers.pop(0) if self.graph.send_answers else GraphAnswer()
        mid = f"aWdfZAG1fake_send_{self.graph.port}_{number}"
        if answer.status == 200 and not answer.body:
            answer = GraphAnswer(
                200,
                {"recipient_id": body.get("recipient", {}).get("id"), "message_id": mid},
                answer.delay_secs,
                answer.gate,
            )
        if self.get_query_argument("access_token", "") not in self.graph.valid_tokens:
            answer = GraphAnswer(400, _meta_error(190, "Error validating access token: Session has expired"))
        delay = answer.delay_secs
        if self.graph.on_send is not None and answer.status == 200:
            # The hook may hold the answer back (seconds): a slow Send API, or one that times out.
            delay = (await self.graph.on_send(request, answer.body["message_id"])) or delay
        if delay:
            await asyncio.sleep(delay)
        if answer.gate is not None:
            await answer.gate.wait()
        self.set_status(answer.status)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(answer.body))


def _meta_error(code: int, message: str, subcode: int | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "type": "IGApiException", "code": code, "fbtrace_id": "Afake"}
    if subcode is not None:
        error["error_subcode"] = subcode
    return {"error": error}


class FakeGraphApi(LocalServer):
    """``GET /<version>/<igsid>?fields=…&access_token=…`` like graph.instagram.com."""

    def __init__(self, valid_token: str = ACCESS_TOKEN) -> None:
        super().__init__()
        # Tokens Meta accepts now: a refresh adds one (the old stays valid until it expires).
        self.valid_tokens = {valid_token}
        self.refreshes: list[str] = []
        self.refresh_expires_in = 60 * 86400
        self.refresh_gate: asyncio.Event | None = None
        # subscribed_apps: node ("me" or a page id) → fields.
        self.subscriptions: dict[str, list[str]] = {}
        # The Conversations API: conversations, their messages, and every call made to it.
        self.conversations: list[FakeConversation] = []
        self.conversation_by_id: dict[str, FakeConversation] = {}
        self.message_by_id: dict[str, tuple[FakeConversation, int]] = {}
        self.page_size = 25
        self.history_calls: list[tuple[str, str]] = []
        self.account_calls: list[dict[str, Any]] = []
        # Scripted failures of the next account/history calls (rate limits, outages).
        self.failures: list[GraphAnswer] = []
        self.answers: dict[str, list[GraphAnswer]] = {}
        self.requests: list[dict[str, Any]] = []
        self.inflight = 0
        self.max_inflight = 0
        # The Send API: calls seen, scripted answers, and a hook run before each accepted answer.
        self.sends: list[dict[str, Any]] = []
        self.send_answers: list[GraphAnswer] = []
        self.on_send: Any = None

    @property
    def valid_token(self) -> str:
        return sorted(self.valid_tokens)[0]

    def revoke(self) -> None:
        """Meta stops accepting every token (the user changed their password, removed the app)."""
        self.valid_tokens = {"IGQVJ-nothing-is-valid"}

    def routes(self) -> list[Any]:
        return [
            (r"/refresh_access_token", _AccountHandler, {"graph": self, "what": "refresh"}),
            (r"/(v[0-9.]+)/([^/?]+)/conversations", _AccountHandler, {"graph": self, "what": "conversations"}),
            (r"/(v[0-9.]+)/([^/?]+)/subscribed_apps", _AccountHandler, {"graph": self, "what": "subscribed_apps"}),
            (r"/(v[0-9.]+)/([^/?]+)/messages", _SendHandler, {"graph": self}),
            (r"/(v[0-9.]+)/([^/?]+)", _GraphHandler, {"graph": self}),
        ]

    def send_error(self, code: int, *, status: int = 400, message: str = "error", subcode: int | None = None) -> None:
        """The next Send API call answers Meta's error ``code``."""
        self.send_answers.append(GraphAnswer(status, _meta_error(code, message, subcode)))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def profile(self, user_id: str, **fields: Any) -> None:
        self.answers[user_id] = [GraphAnswer(200, {"id": user_id, **fields})]

    def error(
        self, user_id: str, code: int, *, status: int = 400, message: str = "error", subcode: int | None = None
    ) -> None:
        self.answers[user_id] = [GraphAnswer(status, _meta_error(code, message, subcode))]

    def sequence(self, user_id: str, *answers: GraphAnswer) -> None:
        self.answers[user_id] = list(answers)

    def requests_for(self, user_id: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["user_id"] == user_id]

    # -- the Conversations API --------------------------------------------------------------

    def add_conversation(
        self, conversation_id: str, customer_id: str, account_id: str, texts: list[tuple[str, str, int]]
    ) -> FakeConversation:
        """A conversation with messages ``(mid, text, epoch secs)``, oldest first; a mid whose
        text starts with ``owner:`` was sent by the account."""
        messages = []
        for mid, text, at in reversed(texts):
            owner = text.startswith("owner:")
            sender, recipient = (account_id, customer_id) if owner else (customer_id, account_id)
            messages.append(
                {
                    "id": mid,
                    "created_time": _meta_time(at),
                    "from": {"id": sender, "username": f"user{sender[-4:]}"},
                    "to": {"data": [{"id": recipient, "username": f"user{recipient[-4:]}"}]},
                    "message": text,
                }
            )
        conversation = FakeConversation(conversation_id, customer_id, _meta_time(texts[-1][2]), messages)
        self.conversations.append(conversation)
        self.conversation_by_id[conversation_id] = conversation
        for index, message in enumerate(messages):
            self.message_by_id[message["id"]] = (conversation, index)
        return conversation

    def conversations_sorted(self) -> list[FakeConversation]:
        return sorted(self.conversations, key=lambda c: c.updated_time, reverse=True)

    def history_answer(self, node: str, fields: str, after: str | None) -> tuple[int, bytes]:
        scripted = self.next_failure()
        if scripted is not None:
            return scripted.status, orjson.dumps(scripted.body)
        if node in self.conversation_by_id:
            conversation = self.conversation_by_id[node]
            start = int(after or 0)
            page = conversation.messages[start : start + self.page_size]
            listed: dict[str, Any] = {"data": [{"id": m["id"], "created_time": m["created_time"]} for m in page]}
            if start + self.page_size < len(conversation.messages):
                cursor = str(start + self.page_size)
                listed["paging"] = {"cursors": {"after": cursor}, "next": f"{self.url}/next?after={cursor}"}
            return 200, orjson.dumps({"id": node, "messages": listed})
        conversation, index = self.message_by_id[node]
        if index >= 20:
            # Meta details a thread's 20 most recent messages only.
            return 400, orjson.dumps(_meta_error(100, "Requested message is not among the 20 most recent", 2534001))
        return 200, orjson.dumps(conversation.messages[index])

    def fail_next(self, answer: GraphAnswer, times: int = 1) -> None:
        """The next ``times`` account/history calls answer ``answer`` (a rate limit, an outage)."""
        self.failures.extend([answer] * times)

    def next_failure(self) -> GraphAnswer | None:
        return self.failures.pop(0) if self.failures else None

    def detail_calls(self) -> list[str]:
        return [node for node, fields in self.history_calls if node in self.message_by_id]


def meta_error(code: int, message: str, subcode: int | None = None) -> dict[str, Any]:
    """Meta's error body (for tests scripting failures)."""
    return _meta_error(code, message, subcode)


def _meta_time(epoch_secs: int) -> str:
    return dt.datetime.fromtimestamp(epoch_secs, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")
