"""A PyMongo command listener that counts the commands a test's client sends, by name."""

from __future__ import annotations

from collections import Counter

from pymongo import monitoring


class Commands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.seen[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass
