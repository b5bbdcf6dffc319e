"""The session-wide log audit (tests/support/log_audit.py) catches a deliberately leaked secret.

Unit tests of what counts as a leak, then whole pytest sessions run in a child process
with the same plugin: one that leaks (in each way: a log record, a subprocess output
file, a signature, an issued token) must fail, and report where without printing the
secret; one that does not leak must pass.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.helpers import ADMIN_TOKEN, ALL_SECRETS, APP_SECRET, ROOT
from tests.support.log_audit import LogAudit

INNER_CONFTEST = """
from tests.support.helpers import ALL_SECRETS
from tests.support.log_audit import AUDIT, LogAuditPlugin


def pytest_configure(config):
    config.pluginmanager.register(LogAuditPlugin(AUDIT, ALL_SECRETS), "igsync_log_audit")
"""

LEAKING_TESTS = """
import logging

from tests.support.helpers import ADMIN_TOKEN, sign
from tests.support.log_audit import AUDIT

log = logging.getLogger("igsync.inner")


def test_leaks_a_config_secret_at_debug():
    log.debug("calling the admin API with %s", ADMIN_TOKEN)


def test_leaks_a_signature_in_a_structured_field():
    log.info("webhook received", extra={"path": "/webhooks/instagram", "reason": sign(b"{}")})


def test_leaks_an_issued_token_from_a_subprocess(tmp_path):
    token = "igs_" + "Q" * 43
    AUDIT.note_token(token)
    output = tmp_path / "server-output.txt"
    output.write_text("starting\\nGET /api/v1/channels token=" + token + "\\n")
    AUDIT.note_output_file(output)


def test_leaks_a_bare_signature_hex():
    log.warning("mismatch, expected %s", sign(b"[]").removeprefix("sha256="))
"""

CLEAN_TESTS = """
import logging

from tests.support.helpers import sign

log = logging.getLogger("igsync.inner")


def test_logs_without_secrets(tmp_path):
    sign(b"{}")
    log.info("webhook item: stored mid=%s", "aWdfZAG1faXRlbToxOklHTWVzc2FnZA")
    (tmp_path / "server.log").write_text("igsync started\\n")
"""


def run_inner_session(directory: Path, tests: str, *extra_args: str) -> subprocess.CompletedProcess[str]:
    directory.mkdir()
    (directory / "conftest.py").write_text(INNER_CONFTEST)
    (directory / "test_inner.py").write_text(tests)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:valkey",
            f"--basetemp={directory / 'tmp'}",
            *extra_args,
            str(directory),
        ],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist-workers"])
def test_a_leaking_session_fails_and_names_each_leak_without_the_secret(tmp_path: Path, workers: list[str]) -> None:
    # make test runs the suite on pytest-xdist workers: a worker's findings must fail the run too.
    result = run_inner_session(tmp_path / "leaking", LEAKING_TESTS, *workers)
    output = result.stdout + result.stderr
    assert "4 passed" in output, output  # the tests themselves pass…
    assert result.returncode == 1, output  # …and the session fails anyway
    assert "LOG AUDIT FAILED" in output
    assert "log record igsync.inner" in output
    assert "test secret #2" in output  # ADMIN_TOKEN is ALL_SECRETS[2]
    assert "a sha256= signature" in output
    assert "server-output.txt:2: an issued inbox token" in output
    assert "a webhook signature (bare hex)" in output
    for secret in ALL_SECRETS:
        assert secret not in output


def test_a_clean_session_passes(tmp_path: Path) -> None:
    result = run_inner_session(tmp_path / "clean", CLEAN_TESTS)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "no secret, token or signature found" in output


def test_what_counts_as_a_leak() -> None:
    audit = LogAudit(secrets=ALL_SECRETS)
    token = "igs_" + "x" * 43
    audit.note_token(token)
    audit.note_signature("sha256=" + "ab" * 32)
    assert audit.leaks(f"admin {ADMIN_TOKEN}") == ["test secret #2"]
    assert audit.leaks(f"secret={APP_SECRET}") == ["test secret #0"]
    assert "an issued inbox token" in audit.leaks(f"t={token}")
    assert audit.leaks("x " + "ab" * 32) == ["a webhook signature (bare hex)"]
    assert audit.leaks("sig sha256=" + "0" * 64) == ["a sha256= signature"]
    assert audit.leaks("Authorization: Bearer abcdefghijklmnopqrstuvwxyz") == ["a bearer credential"]
    assert audit.leaks("token igs_" + "y" * 43) == ["an inbox-token-shaped string"]
    # Subprocess output is held to exact values only (the embedded banner prints a dev token).
    assert audit.leaks("token igs_" + "y" * 43, shapes=False) == []
    # Not leaks: ids, content hashes, an unrelated sha256 digest, the word "Bearer".
    for line in (
        "conversation=6b06b0723e735f6b761d86a6 hash=0cc175b9c0f1b6a831c399e269772661",
        "digest " + "cd" * 32,
        "A valid Bearer token is required.",
        "webhook item: stored direction=customer_to_owner",
    ):
        assert audit.leaks(line) == [], line
    assert audit.redact(f"x {ADMIN_TOKEN} {token} sha256={'ab' * 32}") == "x <SECRET> <SECRET> <SECRET>"
