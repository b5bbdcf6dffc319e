"""PyMongo command listeners for tests: the commands a client sends, counted by name or listed
with the collections they touch."""

from __future__ import annotations

from collections import Counter

from pymongo import monitoring

from models.sharding import client_bulk_write_parts


class Commands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.seen[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


class CommandNames(monitoring.CommandListener):
    """(command, collection) of every command while ``on``; a client bulkWrite by its parts."""

    def __init__(self) -> None:
        self.on = False
        self.commands: list[list[tuple[str, str]]] = []  # the same, command by command
        self.seen: list[tuple[str, str]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if not self.on:
            return
        if event.command_name == "bulkWrite":
            parts = [("bulkWrite " + name, coll) for name, coll, _ in client_bulk_write_parts(event.command)]
        elif isinstance(event.command.get(event.command_name), str):
            parts = [(event.command_name, event.command[event.command_name])]
        else:
            return
        self.seen += parts
        self.commands.append(parts)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        return None

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        return None


def touching(commands: list[list[tuple[str, str]]], coll: str) -> list[list[tuple[str, str]]]:
    """The commands (a client bulkWrite by its parts) that name ``coll``."""
    return [parts for parts in commands if any(c == coll for _, c in parts)]
