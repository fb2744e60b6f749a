"""The change feed's phase of `sqlfleet bench transfer`: commit-to-event latency with many
subscribers (target: p99 <= 50 ms with 100).

`feed_phase` runs against a running server: it creates a tenant, opens `subscribers` streams of
its change feed (raw HTTP/1.1 over asyncio, so the client's own parsing adds little), then one
writer commits `commits` single-row inserts at `rate` per second. A subscriber's latency for a
commit is when it has read the event minus the commit's `time` in the event (the server stamps
it once the commit is durable; client and server share this machine's clock). Every subscriber
must see every commit, in order; a `resync` fails the phase (it means the ring was too small).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any
from urllib.parse import urlsplit

import click
import httpx

from ops.bench.report import Row
from ops.bench.server import BenchServer
from tenants.rfc3339 import parse_time

TARGET_P99 = 0.050
TENANT = "feed-bench"


class FeedBenchError(click.ClickException):
    pass


async def _subscribe(url: str, key: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    request = (
        f"GET /v1/tenants/{TENANT}/changes HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n"
    )
    writer.write(request.encode())
    status = await reader.readline()
    if b" 200 " not in status:
        writer.close()
        raise FeedBenchError(f"subscribing failed: {status.decode().strip()}")
    while (await reader.readline()) not in (b"\r\n", b""):
        pass  # headers; the body is chunked, one chunk holding whole events
    while not (await reader.readline()).startswith(b"event: open"):
        pass  # hooked: every commit from here on is in the stream
    return reader, writer


async def _read(reader: asyncio.StreamReader, commits: int, latencies: list[float]) -> int:
    """Read `commits` commit events (chunked transfer encoding: size lines are skipped); their
    latencies go to `latencies`. Returns the number seen."""
    seen, kind, last = 0, "", -1
    while seen < commits:
        line = await reader.readline()
        if not line:
            raise FeedBenchError(f"a stream ended after {seen} of {commits} commits")
        if line.startswith(b"event: "):
            kind = line[7:].strip().decode()
            if kind == "resync":
                raise FeedBenchError("a subscriber got a resync: raise --serve changes_buffer_bytes")
        elif line.startswith(b"data: ") and kind == "commit":
            received = time.time()
            event = json.loads(line[6:])
            latencies.append(received - parse_time(event["time"]))
            number = int(event["position"].rpartition("-")[2])
            if last >= 0 and number != last + 1:
                raise FeedBenchError(f"a subscriber skipped from commit {last} to {number}")
            last, seen = number, seen + 1
    return seen


async def _run(url: str, key: str, subscribers: int, commits: int, rate: float) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
        r = await client.post("/v1/admin/tenants", json={"id": TENANT})
        if r.status_code not in (201, 409):
            raise FeedBenchError(f"creating the tenant failed: {r.text}")
        await client.post(f"/v1/tenants/{TENANT}/query", json={"sql": "CREATE TABLE IF NOT EXISTS t(v)"})
        streams = await asyncio.gather(*(_subscribe(url, key) for _ in range(subscribers)))
        latencies: list[float] = []
        readers = [asyncio.create_task(_read(reader, commits, latencies)) for reader, _ in streams]
        write_times: list[float] = []
        started = time.perf_counter()
        for i in range(commits):
            due = started + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            t0 = time.perf_counter()
            r = await client.post(
                f"/v1/tenants/{TENANT}/query", json={"sql": "INSERT INTO t VALUES (?)", "params": [i]}
            )
            write_times.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise FeedBenchError(f"a write failed: {r.text}")
        try:
            await asyncio.wait_for(asyncio.gather(*readers), 60)
        finally:
            for _, writer in streams:
                writer.close()
    latencies.sort()
    return {
        "subscribers": subscribers,
        "commits": commits,
        "rate_per_s": rate,
        "events": len(latencies),
        "latency_p50_ms": 1000 * latencies[len(latencies) // 2],
        "latency_p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "latency_max_ms": 1000 * latencies[-1],
        "write_p50_ms": 1000 * statistics.median(write_times),
    }


def feed_phase(
    server: BenchServer, subscribers: int = 100, commits: int = 300, rate: float = 50.0
) -> dict[str, Any]:
    """Commit-to-event latency over `server` (see the module docstring). Raises FeedBenchError."""
    return asyncio.run(_run(server.url, server.admin_key, subscribers, commits, rate))


def feed_rows(result: dict[str, Any]) -> list[Row]:
    p99 = result["latency_p99_ms"]
    return [
        (
            f"feed: commit-to-event p99, {result['subscribers']} subscribers",
            f"{p99:.1f} ms",
            "<= 50 ms",
            p99 <= 1000 * TARGET_P99,
        ),
        ("feed: commit-to-event p50", f"{result['latency_p50_ms']:.1f} ms", "", None),
        ("feed: writer's request p50", f"{result['write_p50_ms']:.1f} ms", "", None),
    ]
