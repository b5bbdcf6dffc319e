"""A real local Tornado HTTP server on a loopback port, the base of every fake."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets


def quiet(handler: tornado.web.RequestHandler) -> None:
    return None


class LocalServer:
    """A Tornado app on a free loopback port; quiet (a fake's access log would print the
    tokens igsync must never log)."""

    def __init__(self) -> None:
        self.http: HTTPServer | None = None
        self.port = 0

    def routes(self) -> list[Any]:
        raise NotImplementedError

    def start(self) -> Any:
        sockets = bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self.http = HTTPServer(tornado.web.Application(self.routes(), log_function=quiet))
        self.http.add_sockets(sockets)
        return self

    async def stop(self) -> None:
        if self.http is not None:
            self.http.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.http.close_all_connections(), 1.0)
