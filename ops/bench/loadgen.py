"""A lean HTTP/1.1 load generator for `sqlfleet bench`, run in its own process(es).

Python HTTP clients (httpx, aiohttp) cost more CPU per request than the server they measure, so on
a 2-core machine they would be the bottleneck. This one writes pre-rendered request bytes on raw
asyncio keep-alive streams and reads the status line, the headers and Content-Length body bytes
back; nothing else (no chunked encoding, no redirects: sqlfleet never sends them).

Contract: `run_phase` sends `phase.total` requests (or stops at `phase.seconds`), from
`phase.concurrency` connections split over `processes` forked workers, and returns every
latency, the status counts, and (if asked) each response's status and body by request index. Loopback only.
"""

from __future__ import annotations

import asyncio
import functools
import time
from array import array
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from ops.bench.errors import LoadgenError
from ops.bench.workers import Failures, Workers


def render(url: str, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    """The exact bytes of one HTTP/1.1 keep-alive request to the server at `url`."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {urlsplit(url).netloc}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass(frozen=True)
class Phase:
    """`total` requests, at most `seconds` long. Position p sends `requests[order[p % len(order)]]`
    (without `order`: `requests[p % len(requests)]`); responses are kept by position. With `rate`,
    an open loop: position p is sent `p / rate` seconds after the start (not before), so the
    load is the same whatever the server's speed; else each connection sends as fast as it can."""

    name: str
    requests: Sequence[bytes]
    total: int
    concurrency: int
    seconds: float
    order: Sequence[int] | None = None
    keep_responses: bool = False
    rate: float | None = None  # requests per second of the whole phase (all workers)


@dataclass
class PhaseResult:
    name: str
    sent: int = 0
    elapsed: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: array[float] = field(default_factory=lambda: array("d"))
    responses: dict[int, tuple[int, bytes]] = field(default_factory=dict)  # index -> status, body
    timed_out: bool = False
    client_cpu: float = 0.0  # CPU seconds the load generator spent (all its processes)

    @property
    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def errors(self) -> int:
        return self.sent - self.ok

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0

    def merge(self, other: PhaseResult) -> None:
        self.sent += other.sent
        self.elapsed = max(self.elapsed, other.elapsed)
        self.statuses.update(other.statuses)
        self.latencies.extend(other.latencies)
        self.responses.update(other.responses)
        self.timed_out = self.timed_out or other.timed_out
        self.client_cpu += other.client_cpu


class _Conn:
    """One keep-alive connection; reconnects after any transport error."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        at = lower.find(b"\r\ncontent-length:")
        length = int(head[at + 17 : head.index(b"\r\n", at + 2)]) if at >= 0 else 0
        close = b"\r\nconnection: close\r\n" in lower
        body = await self.reader.readexactly(length) if length else b""
        if close:
            self.close_now()
        return status, body

    async def exchange(self, raw: bytes) -> tuple[int, bytes, float]:
        t0 = time.perf_counter()
        try:
            status, body = await self.send(raw)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            self.close_now()
            status, body = 0, b""
        return status, body, time.perf_counter() - t0

    async def close(self) -> None:
        self.close_now()

    def close_now(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Link(Protocol):
    """One client connection of a drive, one request in flight at a time."""

    async def exchange(self, raw: bytes) -> tuple[int, bytes, float]:
        """Send `raw`; the answer's status (0: the connection failed, and will be made again for
        the next request), its body and the request's latency in seconds. Never raises."""
        ...

    async def close(self) -> None: ...


async def drive_links(phase: Phase, share: range, concurrency: int, link: Callable[[], Link]) -> PhaseResult:
    """Send the requests at positions `share` of the phase, from `concurrency` links."""
    result = PhaseResult(phase.name)
    latencies, statuses, responses = result.latencies, result.statuses, result.responses
    requests, order, keep, rate = phase.requests, phase.order, phase.keep_responses, phase.rate
    next_index = 0
    clock = time.perf_counter
    started, cpu_started = clock(), time.process_time()
    deadline = started + phase.seconds

    async def connection() -> None:
        nonlocal next_index
        conn = link()
        try:
            while next_index < len(share):
                if clock() >= deadline:
                    result.timed_out = True
                    return
                position = share[next_index]
                next_index += 1
                if rate:
                    due = started + position / rate - clock()
                    if due > 0:
                        await asyncio.sleep(due)
                index = position if order is None else order[position % len(order)]
                status, body, latency = await conn.exchange(requests[index % len(requests)])
                latencies.append(latency)
                statuses[status] += 1
                if keep:
                    responses[position] = (status, body)
        finally:
            await conn.close()

    await asyncio.gather(*(connection() for _ in range(max(1, concurrency))))
    result.elapsed = clock() - started
    result.sent = len(latencies)
    result.client_cpu = time.process_time() - cpu_started
    return result


async def _drive(url: str, phase: Phase, share: range, concurrency: int) -> PhaseResult:
    """The default drive: HTTP/1.1 keep-alive connections (`_Conn`)."""
    host, port = _address(url)
    return await drive_links(phase, share, concurrency, lambda: _Conn(host, port))


Drive = Callable[[str, Phase, range, int], Coroutine[Any, Any, PhaseResult]]


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


async def _drive_spread(
    urls: tuple[str, ...], url: str, phase: Phase, share: range, concurrency: int
) -> PhaseResult:
    addresses = iter([_address(u) for u in urls] * (concurrency // len(urls) + 1))
    return await drive_links(phase, share, concurrency, lambda: _Conn(*next(addresses)))


def spread(urls: Sequence[str]) -> Drive:
    """A drive whose connections go to each of `urls` in turn (e.g. every node of a cluster)."""
    return functools.partial(_drive_spread, tuple(urls))


class _Routed:
    """One connection per server, each request sent to the server `route` names for it."""

    def __init__(self, route: dict[bytes, tuple[str, int]]) -> None:
        self.route = route
        self.conns = {address: _Conn(*address) for address in set(route.values())}

    async def exchange(self, raw: bytes) -> tuple[int, bytes, float]:
        return await self.conns[self.route[raw]].exchange(raw)

    async def close(self) -> None:
        for conn in self.conns.values():
            conn.close_now()


async def _drive_routed(
    route: dict[bytes, tuple[str, int]], url: str, phase: Phase, share: range, concurrency: int
) -> PhaseResult:
    return await drive_links(phase, share, concurrency, lambda: _Routed(route))


def routed(route: dict[bytes, str]) -> Drive:
    """A drive that sends each request to the URL `route` gives for its bytes (what a front
    hashing on the tenant does: each request straight to its tenant's node)."""
    return functools.partial(_drive_routed, {raw: _address(url) for raw, url in route.items()})


def run_phase(
    url: str,
    phase: Phase,
    processes: int = 1,
    on_tick: Callable[[], None] | None = None,
    tick: float = 0.1,
    drive: Drive = _drive,
) -> PhaseResult:
    """Run `phase` from `processes` forked workers (positions dealt round-robin) and merge
    their results. `on_tick` is called every `tick` seconds while waiting (e.g. to sample the
    server's memory). `drive` sends a worker's share (HTTP/1.1 by default; e.g.
    ops.bench.wsload for Hrana over WebSocket). Raises LoadgenError if a worker fails or
    outlives the phase by 30 s."""
    processes = max(1, min(processes, phase.concurrency, phase.total))
    failures = Failures(
        late=lambda _: LoadgenError(f"phase {phase.name}: load generator did not finish in time"),
        died=lambda: LoadgenError(f"phase {phase.name}: a load generator process died"),
        failed=lambda error: LoadgenError(f"phase {phase.name}: {error}"),
    )
    workers = Workers()
    merged = PhaseResult(phase.name)
    finished = False
    try:
        for i in range(processes):
            share = range(i, phase.total, processes)
            conc = phase.concurrency // processes + (1 if i < phase.concurrency % processes else 0)
            workers.start(functools.partial(drive, url, phase, share, conc))
        for result in workers.results(time.monotonic() + phase.seconds + 30.0, failures, on_tick, tick):
            merged.merge(result)
        finished = True
    finally:
        workers.close(grace=5 if finished else 0)
    return merged
