"""A fake Graph API: a real local HTTP server answering what a test scripts (profiles,
attachment links, Meta's errors, slowness).
"""

from __future__ import annotations

import asyncio
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
        if self.get_query_argument("access_token", "") != self.graph.valid_token:
            answer = GraphAnswer(400, _meta_error(190, "Error validating access token: Session has expired"))
        self.set_status(answer.status)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(answer.body))


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
        if self.get_query_argument("access_token", "") != self.graph.valid_token:
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
        self.valid_token = valid_token
        self.answers: dict[str, list[GraphAnswer]] = {}
        self.requests: list[dict[str, Any]] = []
        self.inflight = 0
        self.max_inflight = 0
        # The Send API: calls seen, scripted answers, and a hook run before each accepted answer.
        self.sends: list[dict[str, Any]] = []
        self.send_answers: list[GraphAnswer] = []
        self.on_send: Any = None

    def routes(self) -> list[Any]:
        return [
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

    def error(self, user_id: str, code: int, *, status: int = 400, message: str = "error") -> None:
        self.answers[user_id] = [GraphAnswer(status, _meta_error(code, message))]

    def sequence(self, user_id: str, *answers: GraphAnswer) -> None:
        self.answers[user_id] = list(answers)

    def requests_for(self, user_id: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["user_id"] == user_id]
