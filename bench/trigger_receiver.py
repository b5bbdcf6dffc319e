"""A workflow-trigger receiver for the benchmarks, run as its own process so that it takes no
CPU from the load generator: verifies each signature with the client helper and answers 200.

    python -m bench.trigger_receiver PORT SECRET     # prints READY, then serves until SIGTERM
"""

from __future__ import annotations

import asyncio
import signal
import sys

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from igsync_client.triggers import verify_trigger_signature


class TriggerHook(tornado.web.RequestHandler):
    def initialize(self, secret: str) -> None:
        self.secret = secret

    def post(self) -> None:
        if not verify_trigger_signature(
            self.request.body, self.request.headers.get("X-Igsync-Signature-256"), self.secret
        ):
            self.set_status(401)
        self.finish(b"{}")


async def serve(port: int, secret: str) -> None:
    server = HTTPServer(tornado.web.Application([(r"/hook", TriggerHook, {"secret": secret})]))
    server.add_sockets(bind_sockets(port, "127.0.0.1"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("READY", flush=True)
    await stop.wait()
    server.stop()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), sys.argv[2]))
