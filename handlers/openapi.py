"""``GET /api/openapi.json`` (API.md §5): the OpenAPI 3.1 document, built once per process."""

from __future__ import annotations

from functools import cache

import orjson

from handlers.base import BaseHandler
from server.api.openapi import build_document, package_version


@cache
def document_bytes() -> bytes:
    """The document, serialised once: it only changes with the code."""
    return orjson.dumps(build_document(package_version()))


class OpenApiHandler(BaseHandler):
    def get(self) -> None:
        """The OpenAPI document of every endpoint; no auth (it holds no secret)."""
        self.finish(document_bytes())


routes = [(r"/api/openapi.json", OpenApiHandler)]
