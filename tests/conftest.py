"""Shared fixtures: real embedded stores for the session, a fresh database and a real
igsync HTTP server per test.

The stores are the same SecantusDB and Redis servers ``igsync serve`` embeds, started by
:mod:`server.app.embedded` on free loopback ports. Each test gets its own MongoDB database
(dropped afterwards); Redis keys are namespaced by ids that are unique per test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from config import Settings
from server.app.embedded import EmbeddedStores
from tests.support import redis_topologies as topologies
from tests.support.helpers import (
    ALL_SECRETS,
    Client,
)
from tests.support.log_audit import AUDIT, LogAuditPlugin
from tests.support.redis_topologies import ClusterTopology, SentinelTopology
from tests.support.server import RunningServer, Tenant, connect_tenant, make_settings, start_server, stop_server

pytest_plugins = ["tests.support.fixtures_triggers", "tests.support.fixtures_events"]


def pytest_configure(config: pytest.Config) -> None:
    # Every log line of the session is checked for secrets, tokens and signatures; a leak
    # fails the session (tests/support/log_audit.py).
    config.pluginmanager.register(LogAuditPlugin(AUDIT, ALL_SECRETS), "igsync_log_audit")


@pytest.fixture(scope="session", autouse=True)
def _audit_output_files(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Subprocess servers write their output under the session's temp directory."""
    AUDIT.note_output_dir(tmp_path_factory.getbasetemp())


# The suites that run again on a Redis Cluster and on Sentinel (``make test``: IGSYNC_TEST_REDIS).
TOPOLOGY_SUITES = ("dedup", "realtime", "triggers", "ingest")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(Path(__file__).parent).parts
        if parts and parts[0] in TOPOLOGY_SUITES:
            item.add_marker(pytest.mark.topology)


class SessionStores(EmbeddedStores):
    """The embedded stores, plus the Redis topology the session's servers use instead of the
    embedded Redis when ``IGSYNC_TEST_REDIS`` names one (tests/support/redis_topologies.py)."""

    redis_topology: ClusterTopology | SentinelTopology | None = None


@pytest.fixture(scope="session")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStores]:
    embedded = SessionStores(tmp_path_factory.mktemp("stores"), lock=False).start()
    kind = topologies.from_env()
    if kind:
        embedded.redis_topology = topologies.TOPOLOGIES[kind](tmp_path_factory.mktemp(kind)).start()
    yield embedded
    if embedded.redis_topology is not None:
        embedded.redis_topology.stop()
    embedded.stop()


@pytest.fixture
def settings(stores: EmbeddedStores, tmp_path: Path) -> Settings:
    return make_settings(stores, tmp_path)


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[RunningServer]:
    running = await start_server(settings)
    yield running
    await stop_server(running)


@pytest.fixture
def client(server: RunningServer) -> Client:
    return server.client


@pytest.fixture
async def tenant(client: Client) -> Tenant:
    """The fixtures' business account, connected, with an inbox token."""
    return await connect_tenant(client)
