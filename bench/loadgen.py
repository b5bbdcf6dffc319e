"""A small HTTP/1.1 keep-alive load generator for the benchmarks (asyncio streams, no client library).

Each of ``concurrency`` connections sends its share of pre-built requests back to back and
records the latency of each. Building raw requests keeps the client cheap, so on a 2-core
machine most CPU goes to the server under test — and both the server and its floor are
driven by the same client, which is what makes their ratio meaningful.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.count / self.elapsed if self.elapsed else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    def summary(self) -> str:
        return (
            f"{self.count} requests in {self.elapsed:.2f}s = {self.rate:.0f} req/s; "
            f"p50 {self.percentile(50) * 1000:.1f} ms, p99 {self.percentile(99) * 1000:.1f} ms, "
            f"mean {statistics.fmean(self.latencies) * 1000:.1f} ms; statuses {self.statuses}"
        )


def build_post(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        f"Content-Length: {len(body)}",
        "Content-Type: application/json",
    ]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return status


async def run_load(
    host: str, port: int, requests: list[bytes], concurrency: int, *, rate: float | None = None
) -> LoadResult:
    """Send every request once over ``concurrency`` keep-alive connections, in list order per
    connection: back to back, or with ``rate`` paced at that many requests/s in all (request
    ``i`` is not sent before ``i / rate`` seconds; a connection still waits for its previous
    answer), so that a server can be measured below its limit."""
    result = LoadResult()
    queues = [requests[i::concurrency] for i in range(concurrency)]
    begin = time.perf_counter()

    async def worker(offset: int, batch: list[bytes]) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for n, raw in enumerate(batch):
                if rate:
                    due = begin + (offset + n * concurrency) / rate
                    if due > time.perf_counter():
                        await asyncio.sleep(due - time.perf_counter())  # pacing the load, not ordering
                started = time.perf_counter()
                writer.write(raw)
                status = await _read_response(reader)
                result.latencies.append(time.perf_counter() - started)
                result.statuses[status] = result.statuses.get(status, 0) + 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(i, batch) for i, batch in enumerate(queues) if batch))
    result.elapsed = time.perf_counter() - started
    return result
