"""The local Redis topologies survive a port taken between choosing it and binding it — which
pytest-xdist workers starting topologies at the same time do to each other (a Sentinel once
failed a CI-like run so)."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.support.redis_topologies import Node


def test_a_node_whose_port_was_taken_starts_on_another(tmp_path: Path) -> None:
    node = Node(tmp_path, "sentinel0", ["sentinel monitor m 127.0.0.1 1 2"], sentinel=True)
    taken = node.port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        try:
            node.start()
            assert node.port != taken and node.client().ping()
            assert b"Address already in use" in (node.dir / "log").read_bytes()
        finally:
            node.stop()


def test_a_cluster_node_whose_bus_port_was_taken_starts_on_others(tmp_path: Path) -> None:
    node = Node(tmp_path, "master0", ["--cluster-enabled", "yes"], cluster_bus=True)
    assert node.bus_port is not None
    taken = node.bus_port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        try:
            node.start()
            assert node.bus_port != taken and node.client().ping()
        finally:
            node.stop()
