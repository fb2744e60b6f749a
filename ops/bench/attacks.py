"""The attackers of `sqlfleet bench isolation`: issue 10's hostile inputs, sent in a loop by one
forked process per attacker tenant until told to stop.

An attacker runs its attacks (some or all of `KINDS`) one after another, each attacker from
its own starting point so that K attackers cover the list at once, and meanwhile holds
`slow_bodies` connections whose request body trickles in a byte every `TRICKLE` seconds
(finding 12): when the server gives up on one (408) it opens another. What each attack got
back (statuses, time) is tallied per kind.

Contract: `Attackers(...)` forks the processes; `stop` lets each finish the attack it is in
(the server bounds every one of them; an open transaction is let go at once) and returns the
merged tallies. A process that does not end within `wait` seconds is killed and its tallies
are lost (BenchError). Loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from ops.bench.errors import BenchError
from ops.bench.loadgen import render
from ops.bench.workers import Failures, Workers

# The inputs, at their sizes (findings 1, 2, 5, 6, 7).
INSTR = "SELECT instr(printf('%.*c',1600000,'a'), printf('%.*c',800000,'a')||'b')"
_A, _B = "printf('%.*c',48,'a')", "printf('%.*c',48,'b')"
LIKE = f"SELECT printf('%.*c',8000000,'a') LIKE '%' || {_A} || '_' || {_B} || '%'"  # within the pattern bound
BIG = "SELECT printf('%.*c',8000000,'a')"
RUNAWAY = "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r"
CHURN = "UPDATE t SET b = randomblob(600000);" * 100
# The 200,000 semicolons are refused by the default max_sql_length (100,000) before any
# parse: the longest input that the default lets through reaches the parser instead.
TRIGGER = "CREATE TRIGGER t AFTER INSERT ON x BEGIN " + ";" * 99_000
SETUP = [
    "CREATE TABLE IF NOT EXISTS t (a INTEGER PRIMARY KEY, b BLOB)",
    "INSERT OR REPLACE INTO t VALUES (1, randomblob(600000))",
    "CREATE TABLE IF NOT EXISTS x (a)",
]
HOLD = 12.0  # seconds an attacker keeps its transaction open (finding 8: a request every 5 s)
KEEPALIVE = 5.0
TRICKLE = 10.0  # seconds between two bytes of a slow body (finding 12)
_SLOW_BODY = 1000  # bytes a slow body announces


def _execute(sql: str) -> dict[str, Any]:
    return {"type": "execute", "stmt": {"sql": sql}}


def _pipeline(*requests: dict[str, Any], baton: str | None = None) -> dict[str, Any]:
    return {"baton": baton, "requests": list(requests)}


def _steps(sql: str, n: int) -> dict[str, Any]:
    return {"steps": [{"stmt": {"sql": sql}} for _ in range(n)]}


# kind -> (path under the tenant, JSON body) of the one-request attacks
REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "slow_function": ("query", {"sql": INSTR}),
    "slow_like": ("query", {"sql": LIKE}),
    "batch_results": ("batch", {"statements": [{"sql": BIG}] * 100}),
    "pipeline_results": ("v2/pipeline", _pipeline(*[_execute(BIG)] * 100, {"type": "close"})),
    "endless_ctes": (
        "v3/pipeline",
        _pipeline({"type": "batch", "batch": _steps(RUNAWAY, 12)}, {"type": "close"}),
    ),
    "parse": ("v2/pipeline", _pipeline(_execute(TRIGGER), {"type": "close"})),
    "disk_churn": ("v3/pipeline", _pipeline({"type": "sequence", "sql": CHURN}, {"type": "close"})),
}
KINDS = (*REQUESTS, "cursor_results", "open_transaction")


@dataclass
class Tally:
    """What one kind of attack got back: runs, statuses (0: no response), seconds."""

    runs: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    seconds: float = 0.0
    longest: float = 0.0

    def add(self, status: int, seconds: float) -> None:
        self.runs += 1
        self.statuses[status] += 1
        self.seconds += seconds
        self.longest = max(self.longest, seconds)

    def merge(self, other: Tally) -> None:
        self.runs += other.runs
        self.statuses.update(other.statuses)
        self.seconds += other.seconds
        self.longest = max(self.longest, other.longest)

    def report(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "statuses": {str(s): n for s, n in sorted(self.statuses.items())},
            "seconds_mean": round(self.seconds / self.runs, 3) if self.runs else 0.0,
            "seconds_max": round(self.longest, 3),
        }


@dataclass(frozen=True)
class Attacker:
    """One attacker tenant, its rw token, and the kinds of attack it sends, in turn."""

    tenant: str
    token: str
    kinds: tuple[str, ...]


class _Run:
    def __init__(self, url: str, attacker: Attacker, stop: Any) -> None:
        self.url, self.attacker, self.stop = url, attacker, stop
        self.tallies: dict[str, Tally] = {}
        self.prefix = f"/v1/tenants/{attacker.tenant}"

    def record(self, kind: str, status: int, started: float) -> None:
        self.tallies.setdefault(kind, Tally()).add(status, time.monotonic() - started)

    async def attacks(self, http: httpx.AsyncClient) -> None:
        kinds = self.attacker.kinds
        special: dict[str, Callable[[httpx.AsyncClient], Awaitable[int]]] = {
            "cursor_results": self.cursor,
            "open_transaction": self.open_transaction,
        }
        while kinds and not self.stop.is_set():
            for kind in kinds:
                if self.stop.is_set():
                    return
                started = time.monotonic()
                try:
                    if kind in special:
                        status = await special[kind](http)
                    else:
                        path, body = REQUESTS[kind]
                        status = (await http.post(f"{self.prefix}/{path}", json=body)).status_code
                except httpx.HTTPError:
                    status = 0
                self.record(kind, status, started)

    async def cursor(self, http: httpx.AsyncClient) -> int:
        body = {"baton": None, "batch": _steps(BIG, 100)}
        async with http.stream("POST", f"{self.prefix}/v3/cursor", json=body) as response:
            async for _ in response.aiter_bytes():
                pass  # read as it comes: a client that keeps up
            return response.status_code

    async def open_transaction(self, http: httpx.AsyncClient) -> int:
        """BEGIN IMMEDIATE and a write, kept open for HOLD s with a request every KEEPALIVE s
        (let go at once on stop), then rolled back. The status is the first that was not 200."""
        url = f"{self.prefix}/v3/pipeline"
        r = await http.post(
            url, json=_pipeline(_execute("BEGIN IMMEDIATE"), _execute("INSERT INTO x VALUES (1)"))
        )
        baton = r.json().get("baton") if r.status_code == 200 else None
        if not isinstance(baton, str):
            return r.status_code
        last = time.monotonic()
        ends = last + HOLD
        while not self.stop.is_set() and time.monotonic() < ends:
            await asyncio.sleep(0.1)
            if time.monotonic() - last >= KEEPALIVE:
                r = await http.post(url, json=_pipeline(_execute("SELECT 1"), baton=baton))
                baton = r.json().get("baton") if r.status_code == 200 else None
                if not isinstance(baton, str):
                    return r.status_code
                last = time.monotonic()
        r = await http.post(url, json=_pipeline(_execute("ROLLBACK"), {"type": "close"}, baton=baton))
        return r.status_code

    async def slow_body(self) -> None:
        """One connection after another whose body never arrives in time (cancelled at stop)."""
        parts = urlsplit(self.url)
        headers = {"Authorization": f"Bearer {self.attacker.token}", "Content-Type": "application/json"}
        raw = render(self.url, "POST", f"{self.prefix}/query", headers, b" " * _SLOW_BODY)
        head, body = raw[:-_SLOW_BODY], raw[-_SLOW_BODY:]
        while True:
            started = time.monotonic()
            status = 0
            try:
                reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
            except OSError:
                self.record("slow_body", 0, started)
                await asyncio.sleep(1.0)
                continue
            try:
                writer.write(head)
                for byte in range(len(body)):
                    with contextlib.suppress(TimeoutError):
                        line = await asyncio.wait_for(reader.readline(), TRICKLE)
                        status = int(line[9:12]) if line.startswith(b"HTTP/") else 0
                        break
                    writer.write(body[byte : byte + 1])
            except (OSError, ValueError):
                status = 0
            finally:
                writer.close()
            self.record("slow_body", status, started)

    async def main(self, slow_bodies: int) -> dict[str, Tally]:
        headers = {"Authorization": f"Bearer {self.attacker.token}"}
        limits = httpx.Limits(max_connections=4)
        async with httpx.AsyncClient(base_url=self.url, headers=headers, timeout=120, limits=limits) as http:
            trickles = [asyncio.create_task(self.slow_body()) for _ in range(slow_bodies)]
            try:
                await self.attacks(http)
            finally:
                for task in trickles:
                    task.cancel()
                await asyncio.gather(*trickles, return_exceptions=True)
        return self.tallies


class Attackers:
    """The attacker processes of one attack phase."""

    def __init__(self, url: str, attackers: Sequence[Attacker], slow_bodies: int, nice: int) -> None:
        self._workers = Workers()
        self._stop = self._workers.context.Event()
        for attacker in attackers:
            run = _Run(url, attacker, self._stop)
            self._workers.start(functools.partial(run.main, slow_bodies), nice)

    def stop(
        self, wait: float, on_tick: Callable[[], None] | None = None, tick: float = 0.1
    ) -> dict[str, Tally]:
        """Ask every attacker to stop, wait for their tallies (calling `on_tick` every `tick`
        seconds meanwhile) and merge them. Raises BenchError if one fails or is not done
        within `wait` seconds; every process has ended either way."""
        self._stop.set()
        failures = Failures(
            late=lambda pending: BenchError(f"{pending} attacker(s) did not stop within {wait:g} s"),
            died=lambda: BenchError("an attacker process died"),
            failed=lambda error: BenchError(f"an attacker failed: {error}"),
        )
        merged: dict[str, Tally] = {}
        try:
            for tallies in self._workers.results(time.monotonic() + wait, failures, on_tick, tick):
                for name, tally in tallies.items():
                    merged.setdefault(name, Tally()).merge(tally)
        finally:
            self.close()
        return merged

    def close(self) -> None:
        """End every attacker process (idempotent)."""
        self._stop.set()
        self._workers.close()
