"""Reading ``/metrics`` the way Prometheus does, for the observability tests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from tests.support.helpers import Client

Key = tuple[str, frozenset[tuple[str, str]]]


@dataclass
class Scrape:
    """One parsed ``/metrics`` answer: every sample by (name, labels), and every family."""

    samples: dict[Key, float]
    families: dict[str, str]  # family name → type

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples: dict[Key, float] = {}
        families: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            families[family.name] = family.type
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return cls(samples, families)

    def value(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels; KeyError when the series does not exist."""
        return self.samples[(name, frozenset(labels.items()))]

    def has(self, name: str, **labels: str) -> bool:
        return (name, frozenset(labels.items())) in self.samples

    def series(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}

    def delta(self, before: Scrape, name: str, **labels: str) -> float:
        return self.value(name, **labels) - before.value(name, **labels)

    def changed(self, before: Scrape, prefix: str) -> dict[Key, float]:
        """Every series under ``prefix`` whose value moved since ``before`` (and by how much)."""
        out = {}
        for key, value in self.samples.items():
            if key[0].startswith(prefix) and value != before.samples.get(key, 0.0):
                out[key] = value - before.samples.get(key, 0.0)
        return out


async def scrape(client: Client, token: str | None = None) -> Scrape:
    response = await client.get("/metrics", token=token)
    assert response.code == 200, response.body
    return Scrape.parse(response.body.decode())


def key(name: str, labels: Mapping[str, str] | None = None) -> Key:
    return (name, frozenset((labels or {}).items()))
