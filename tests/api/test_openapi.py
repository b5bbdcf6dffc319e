"""The OpenAPI document (GET /api/openapi.json): valid OpenAPI 3.1, one operation per route
of the application, and true — schemathesis fuzzes a live server with it (every operation, its
examples, coverage cases and generated ones) and every check must pass: no 5xx, every status,
content type and body as documented, invalid input refused with a 4xx, valid input accepted."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import orjson
from openapi_spec_validator import validate

from server.app.routes import route_table
from tests.support.helpers import ADMIN_TOKEN, INTERNAL_TOKEN, Client, body_of, messaging_body, text_item
from tests.support.server import RunningServer, Tenant

# Generated cases per operation in the fuzzing phase (the coverage and examples phases add
# their own on top). Several hundred per operation in all; about a minute on two cores.
FUZZ_EXAMPLES = 150
SCHEMATHESIS_TIMEOUT_SECS = 600

CONFIG = """
[auth.openapi.adminToken]
bearer = "${IGSYNC_ST_ADMIN}"
[auth.openapi.internalToken]
bearer = "${IGSYNC_ST_INTERNAL}"
[auth.openapi.inboxToken]
bearer = "${IGSYNC_ST_INBOX}"

# Two answers the document cannot rule out by a schema, each expected for a valid-looking
# request: a cursor must be one this server issued (anything else is 400 invalid_cursor), and a
# plain HTTP client cannot complete a WebSocket upgrade (426).
[[operations]]
include-path-regex = "^/api/v1/(conversations|triggers/dead)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404"]

[[operations]]
include-path-regex = "^/ws$"
checks.positive_data_acceptance.expected-statuses = ["101", "401", "403", "426"]

[parameters]
# Messages and read receipts of a conversation that exists, so that the generated
# limit/after/before values run the real queries, not only the 404 path.
"path.conversation_id" = "${IGSYNC_ST_CONVERSATION}"
"""


def _template(route: str) -> str:
    """A Tornado route pattern as an OpenAPI path template (``([^/]+)`` → ``{param}``)."""
    return re.sub(r"\(\?P<\w+>[^)]*\)|\([^)]*\)", "{}", route).rstrip("$")


async def test_the_document_is_valid_openapi_31_and_covers_every_route(client: Client) -> None:
    response = await client.get("/api/openapi.json")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    document = body_of(response)
    assert document["openapi"] == "3.1.0"
    validate(document)  # openapi-spec-validator: raises on any violation of the 3.1 schema
    documented = {re.sub(r"\{[^}]+\}", "{}", path) for path in document["paths"]}
    routed = {_template(route[0]) for route in route_table()}
    routed = {"/" if path == "/{}" else path for path in routed}
    assert routed == documented, f"routes without a document entry: {routed - documented}; stale: {documented - routed}"
    # Secrets never appear in the document, and input rules of @validates_schema are in it.
    assert ADMIN_TOKEN not in response.body.decode()
    assert document["components"]["schemas"]["TokenInput"]["oneOf"]


async def test_a_plain_get_of_the_socket_is_426_in_the_json_shape(client: Client, tenant: Tenant) -> None:
    response = await client.get("/ws", token=tenant.token)
    assert response.code == 426
    assert body_of(response)["error"] == "upgrade_required"


async def _seed_conversation(client: Client, tenant: Tenant) -> str:
    for n in range(3):
        response = await client.webhook(messaging_body(text_item(f"m_openapi_{n}", f"hello {n}")))
        assert response.code == 200, response.body
    listed = body_of(await client.get("/api/v1/conversations", token=tenant.token))
    return listed["conversations"][0]["id"]


async def test_schemathesis_finds_no_server_error_and_no_nonconforming_answer(
    server: RunningServer, client: Client, tenant: Tenant, tmp_path: Path
) -> None:
    conversation_id = await _seed_conversation(client, tenant)
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    env = {
        **os.environ,
        "IGSYNC_ST_ADMIN": ADMIN_TOKEN,
        "IGSYNC_ST_INTERNAL": INTERNAL_TOKEN,
        "IGSYNC_ST_INBOX": tenant.token,
        "IGSYNC_ST_CONVERSATION": conversation_id,
        "NO_COLOR": "1",
    }
    argv = [
        str(Path(sys.executable).with_name("st")),
        "--config-file",
        str(config),
        "run",
        f"{server.base_url}/api/openapi.json",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(FUZZ_EXAMPLES),
        "--seed",
        "20261205",
        "--request-timeout",
        "20",
        "--suppress-health-check",
        "too_slow",
    ]
    # The server runs in this event loop: the fuzzer must be awaited, never waited for.
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), SCHEMATHESIS_TIMEOUT_SECS)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-20000:]
    # It really ran every operation it found, and found them all (the document's own URL is
    # the one operation schemathesis leaves out of its count).
    operations = sum(len(ops) for ops in orjson.loads((await client.get("/api/openapi.json")).body)["paths"].values())
    selected = re.search(r"Selected: (\d+)/(\d+)", text)
    tested = re.search(r"Tested: (\d+)", text)
    assert selected and tested, text[-3000:]
    assert int(selected.group(1)) == int(selected.group(2)) == int(tested.group(1)) >= operations - 1, text[-3000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", text)
    assert generated and generated.group(1) == generated.group(2), text[-3000:]
    # Hundreds of cases per operation, across the phases.
    assert int(generated.group(1)) >= 100 * (operations - 1), text[-3000:]
