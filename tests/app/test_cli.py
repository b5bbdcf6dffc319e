"""The newcomer's path, for real: ``igsync serve`` with no configuration (embedded stores, dev
secrets, demo channel, banner), ``igsync simulate``, the admin commands, ``replay``, and a clean stop."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.app.embedded import free_port
from tests.support.helpers import FIXTURES, ROOT


def clean_env(data_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IGSYNC_")}
    env.update({"IGSYNC_DATA_DIR": str(data_dir), "IGSYNC_PORT": str(port)})
    return env


def igsync(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


class Serve:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.port = int(env["IGSYNC_PORT"])
        self._out = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "serve"], cwd=ROOT, env=env, stdout=self._out, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            text = self.log.read_text()
            if "inbox:" in text:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1)
                    return text
                except OSError:
                    pass
            time.sleep(0.05)
        raise AssertionError("igsync serve did not become ready:\n" + self.log.read_text())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self._out.close()
        return code


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "var"


def port_open(url: str) -> bool:
    match = re.search(r"//([\d.]+):(\d+)", url)
    assert match
    try:
        with socket.create_connection((match.group(1), int(match.group(2))), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.slow
def test_serve_on_a_fresh_machine_then_simulate_then_stop(data_dir: Path, tmp_path: Path) -> None:
    env = clean_env(data_dir, free_port())
    serve = Serve(env, tmp_path / "serve.log")
    try:
        banner = serve.wait_ready()
        assert f"webhook URL:    http://127.0.0.1:{serve.port}/webhooks/instagram" in banner
        secrets = json.loads((data_dir / "secrets.json").read_text())
        assert oct((data_dir / "secrets.json").stat().st_mode & 0o777) == "0o600"
        assert f"verify token:   {secrets['verify_token']}" in banner
        assert secrets["demo_inbox_token"] in banner
        # The banner never prints the app secret, admin or internal tokens: it points at the file.
        for name in ("app_secret", "admin_token"):
            assert secrets[name] not in banner
        assert secrets["internal_tokens"][0] not in banner
        mongo_url = re.search(r"MongoDB \(embedded, SecantusDB\): (\S+)", banner).group(1)
        redis_url = re.search(r"Redis \(embedded\):\s+(\S+)", banner).group(1)
        assert "retryWrites=false" in mongo_url

        # A second server on the same data directory refuses clearly.
        second = igsync("serve", env={**env, "IGSYNC_PORT": str(free_port())})
        assert second.returncode == 1 and "already running" in second.stderr

        result = igsync("simulate", str(FIXTURES / "customer_text.json"), str(FIXTURES / "customer_text.json"), env=env)
        assert result.returncode == 0, result.stderr
        assert '"message_direction": "customer_to_owner"' in result.stdout
        assert '"layer": "mid"' in result.stdout

        # The demo token reads the stored conversation over REST.
        request = urllib.request.Request(
            f"http://127.0.0.1:{serve.port}/api/v1/conversations",
            headers={"Authorization": f"Bearer {secrets['demo_inbox_token']}"},
        )
        conversations = json.loads(urllib.request.urlopen(request, timeout=5).read())["conversations"]
        assert conversations[0]["last_message"]["content"] == "Hi! Do you ship to Lisbon?"

        # Admin commands use the running server's stores.
        added = igsync(
            "channel",
            "add",
            "--page-id",
            "17841400000000002",
            "--username",
            "second",
            "--owner-id",
            "7",
            "--owner-email",
            "seven@example.com",
            env=env,
        )
        assert added.returncode == 0, added.stderr
        assert json.loads(added.stdout)["created"] is True
        listed = json.loads(igsync("channel", "list", env=env).stdout)["channels"]
        assert {c["username"] for c in listed} == {"demo_shop", "second"}
        token = igsync("token", "create", "--owner-email", "seven@example.com", env=env)
        assert json.loads(token.stdout)["token"].startswith("igs_")
        second_id = next(c["id"] for c in listed if c["username"] == "second")
        gone = igsync("channel", "disconnect", second_id, env=env)
        assert json.loads(gone.stdout)["channel"]["is_connect"] is False

        # Replay re-processes the stored bodies: everything is already there.
        replay = igsync("replay", env=env)
        assert replay.returncode == 0, replay.stderr
        counts = json.loads(replay.stdout)
        assert counts["bodies"] == 2 and counts["duplicates"] == 2 and counts["stored"] == 0

        assert serve.stop() == 0
        assert "shutting down" in serve.log.read_text() and "stopped" in serve.log.read_text()
        assert not port_open(mongo_url) and not port_open(redis_url)
        assert not (data_dir / "stores.json").exists()
    finally:
        if serve.proc.poll() is None:
            serve.proc.kill()

    # A second start reuses the dev secrets and the demo token; the data survived.
    serve = Serve(env, tmp_path / "serve2.log")
    try:
        banner = serve.wait_ready()
        assert secrets["demo_inbox_token"] in banner
        assert json.loads((data_dir / "secrets.json").read_text())["app_secret"] == secrets["app_secret"]
        request = urllib.request.Request(
            f"http://127.0.0.1:{serve.port}/api/v1/conversations",
            headers={"Authorization": f"Bearer {secrets['demo_inbox_token']}"},
        )
        assert len(json.loads(urllib.request.urlopen(request, timeout=5).read())["conversations"]) == 1
    finally:
        assert serve.stop() == 0


def test_simulate_reports_an_unreachable_server(tmp_path: Path) -> None:
    env = clean_env(tmp_path / "var", free_port())
    result = igsync("simulate", "--app-secret", "x" * 20, str(FIXTURES / "customer_text.json"), env=env)
    assert result.returncode == 1 and "could not reach" in result.stderr


def test_admin_commands_without_a_running_server_start_the_stores_themselves(tmp_path: Path) -> None:
    env = clean_env(tmp_path / "var", free_port())
    added = igsync(
        "channel",
        "add",
        "--page-id",
        "42",
        "--username",
        "solo",
        "--owner-id",
        "a-string-id",
        "--owner-email",
        "solo@example.com",
        env=env,
    )
    assert added.returncode == 0, added.stderr
    listed = json.loads(igsync("channel", "list", env=env).stdout)["channels"]
    assert [(c["page_id"], c["owner"]["id"]) for c in listed] == [("42", "a-string-id")]
    bad = igsync("token", "create", "--owner-email", "nobody@example.com", env=env)
    assert bad.returncode == 1 and "not_found" in bad.stderr


def test_mongo_shard_plan_prints_the_commands_of_the_plan(tmp_path: Path) -> None:
    env = {**clean_env(tmp_path / "var", free_port()), "IGSYNC_MONGO_DB": "inbox_prod"}
    text = igsync("mongo", "shard-plan", env=env)
    assert text.returncode == 0, text.stderr
    assert 'sh.enableSharding("inbox_prod")' in text.stdout
    assert 'sh.shardCollection("inbox_prod.messages", { channel_id: 1 })' in text.stdout
    assert "//   channels:" in text.stdout  # not sharded, with the reason
    as_json = igsync("mongo", "shard-plan", "--json", env=env)
    commands = json.loads(as_json.stdout)
    assert commands[0] == {"enableSharding": "inbox_prod"}
    assert {"shardCollection": "inbox_prod.customers", "key": {"channel_id": 1}} in commands
