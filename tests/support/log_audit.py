"""Session-wide log audit: no secret, token or signature in any log line of the test session.

:class:`LogAuditPlugin` (registered by ``tests/conftest.py``) installs one handler on the
root logger for the whole session — every record of every in-process server, at DEBUG
for igsync's own loggers — and at the end also reads the output files of subprocess
servers (every ``ServerProcessHandle`` log, and every ``*.log`` under the session's temp
directory). A finding fails the session (exit status 1) and is reported *without* the
secret itself.

What counts as a leak:

* a test secret (``tests.support.helpers.ALL_SECRETS``) or an inbox token issued during the
  session (``AUDIT.note_token``, fed by ``tests.support.helpers.Client``), anywhere;
* an ``X-Hub-Signature-256`` value: ``sha256=<64 hex>``, or a bare 64-hex run equal to a
  signature the tests computed (``AUDIT.note_signature``, fed by ``tests.support.helpers.sign``)
  or to the stored hash of an issued token;
* in log records, anything shaped like an inbox token (``igs_…``) or a bearer credential.
  (Subprocess output is not held to the shape rules: ``igsync serve`` in embedded mode
  prints its own dev token in the start-up banner on stdout by design.)
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HEX64 = re.compile(r"(?<![0-9a-fA-F])[0-9a-fA-F]{64}(?![0-9a-fA-F])")
SIGNATURE_HEADER = re.compile(r"sha256=[0-9a-fA-F]{64}")
INBOX_TOKEN_SHAPE = re.compile(r"\bigs_[A-Za-z0-9_\-]{40,}")
BEARER_SHAPE = re.compile(r"Bearer [A-Za-z0-9._~+/=\-]{16,}")
# Files the audit reads at the end, and how much of each (a runaway log must not hang it).
OUTPUT_GLOBS = ("*.log",)
MAX_FILE_BYTES = 50 * 1024 * 1024
# Where a pytest-xdist worker hands its audit to the controller (``config.workeroutput``).
WORKER_OUTPUT_KEY = "igsync_log_audit"
_STANDARD_RECORD_KEYS = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}


@dataclass
class Finding:
    where: str
    what: str
    line: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}: {self.line[:300]}"


@dataclass
class LogAudit:
    secrets: tuple[str, ...] = ()
    tokens: set[str] = field(default_factory=set)
    token_hashes: set[str] = field(default_factory=set)
    signatures: set[str] = field(default_factory=set)
    output_files: list[Path] = field(default_factory=list)
    output_dirs: list[Path] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    lines_checked: int = 0

    # -- what the tests tell us ----------------------------------------------------------

    def note_token(self, token: str) -> None:
        self.tokens.add(token)
        self.token_hashes.add(hashlib.sha256(token.encode()).hexdigest())

    def note_signature(self, signature: str) -> None:
        self.signatures.add(signature.removeprefix("sha256=").lower())

    def note_output_file(self, path: Path) -> None:
        self.output_files.append(Path(path))

    def note_output_dir(self, path: Path) -> None:
        """Every ``*.log`` below ``path`` is read at the end of the session."""
        self.output_dirs.append(Path(path))

    # -- checking ------------------------------------------------------------------------

    def leaks(self, line: str, *, shapes: bool = True) -> list[str]:
        """What in ``line`` is a leak (descriptions, never the secret itself)."""
        found = []
        for i, secret in enumerate(self.secrets):
            if secret and secret in line:
                found.append(f"test secret #{i}")
        if any(token in line for token in self.tokens):
            found.append("an issued inbox token")
        if SIGNATURE_HEADER.search(line):
            found.append("a sha256= signature")
        for run in HEX64.findall(line):
            run = run.lower()
            if run in self.signatures:
                found.append("a webhook signature (bare hex)")
            elif run in self.token_hashes:
                found.append("the stored hash of an inbox token")
        if shapes:
            if INBOX_TOKEN_SHAPE.search(line):
                found.append("an inbox-token-shaped string")
            if BEARER_SHAPE.search(line):
                found.append("a bearer credential")
        return found

    def redact(self, line: str) -> str:
        """The line as it may be shown in the report."""
        for secret in (*self.secrets, *self.tokens):
            if secret:
                line = line.replace(secret, "<SECRET>")
        for pattern in (SIGNATURE_HEADER, INBOX_TOKEN_SHAPE, BEARER_SHAPE, HEX64):
            line = pattern.sub("<SECRET>", line)
        return line

    def check(self, line: str, where: str, *, shapes: bool = True) -> None:
        self.lines_checked += 1
        for what in self.leaks(line, shapes=shapes):
            self.findings.append(Finding(where, what, self.redact(line)))

    def check_files(self, paths: Iterable[Path]) -> None:
        for path in dict.fromkeys(Path(p).resolve() for p in paths):
            if not path.is_file():
                continue
            with open(path, "rb") as fh:
                data = fh.read(MAX_FILE_BYTES)
            for number, raw in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
                self.check(raw, f"{path}:{number}", shapes=False)


def record_text(record: logging.LogRecord) -> str:
    """Everything a formatter could print of a record: message, extra fields, traceback."""
    try:
        parts = [record.getMessage()]
    except Exception:  # a broken %-format is a bug elsewhere; still audit the raw parts
        parts = [str(record.msg), repr(record.args)]
    for key, value in record.__dict__.items():
        if key not in _STANDARD_RECORD_KEYS:
            parts.append(f"{key}={value}")
    if record.exc_info and record.exc_info[1] is not None:
        parts.append(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        parts.append(str(record.stack_info))
    return " ".join(parts)


class AuditHandler(logging.Handler):
    def __init__(self, audit: LogAudit) -> None:
        super().__init__(logging.DEBUG)
        self.audit = audit

    def emit(self, record: logging.LogRecord) -> None:
        self.audit.check(record_text(record), f"log record {record.name} ({record.pathname}:{record.lineno})")


# The session's one audit: tests.support.helpers feeds it tokens, signatures and output files.
AUDIT = LogAudit()


class LogAuditPlugin:
    def __init__(self, audit: LogAudit, secrets: Iterable[str]) -> None:
        self.audit = audit
        self.audit.secrets = tuple(secrets)
        self.handler = AuditHandler(audit)

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        root = logging.getLogger()
        root.addHandler(self.handler)
        # What production logs at its default level, plus igsync's DEBUG lines (an operator
        # may turn them on): a leak at DEBUG is still a leak. pymongo stays at WARNING as
        # in server.logs.configure (its DEBUG command log prints whole documents).
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        logging.getLogger("igsync").setLevel(logging.DEBUG)
        logging.getLogger("pymongo").setLevel(logging.WARNING)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        logging.getLogger().removeHandler(self.handler)
        files: list[Path] = list(self.audit.output_files)
        for directory in self.audit.output_dirs:
            for pattern in OUTPUT_GLOBS:
                files.extend(directory.rglob(pattern))
        self.audit.check_files(files)
        worker_output = getattr(session.config, "workeroutput", None)
        if worker_output is not None:
            # A pytest-xdist worker: its findings go to the controller, which reports them and
            # fails the session (a worker's own exit status does not decide the run's).
            worker_output[WORKER_OUTPUT_KEY] = {
                "lines_checked": self.audit.lines_checked,
                "findings": [(f.where, f.what, f.line) for f in self.audit.findings],
            }
        if self.audit.findings:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """pytest-xdist controller: collect a finished worker's audit."""
        report = getattr(node, "workeroutput", {}).get(WORKER_OUTPUT_KEY)
        if report is None:
            return
        self.audit.lines_checked += report["lines_checked"]
        self.audit.findings.extend(Finding(*finding) for finding in report["findings"])

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.audit.findings:
            terminalreporter.write_line(
                f"log audit: {self.audit.lines_checked} log lines checked, no secret, token or signature found"
            )
            return
        terminalreporter.section("log audit: secrets in logs", sep="=", red=True, bold=True)
        for finding in self.audit.findings[:50]:
            terminalreporter.write_line(str(finding))
        if len(self.audit.findings) > 50:
            terminalreporter.write_line(f"… and {len(self.audit.findings) - 50} more")
        terminalreporter.write_line("LOG AUDIT FAILED: the session fails even though the tests passed.", red=True)
