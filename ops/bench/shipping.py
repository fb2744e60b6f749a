"""What `sqlfleet bench backups` measures of shipping itself: the tenants and writes of the
workload, commit-to-replica lag under sustained writes (the server's lag histogram, cross-checked
from outside by `LagProbe`), PUTs per second, and one flush with N dirty tenants."""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from backups.segment import FRAMES
from ops.bench.driver import Driver, latency_ms
from ops.bench.errors import BenchError
from ops.bench.loadgen import Phase, PhaseResult, run_phase
from ops.bench.s3 import LAG, SEGMENTS, Segments, delta, lag_histogram, quantile, scrape, share_within
from ops.bench.server import BenchServer

CREATE_SQL = "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT NOT NULL)"
INSERT_SQL = "INSERT INTO kv(v) VALUES (?)"
ROW = "v" * 100

# -- workload ----------------------------------------------------------------------------------------


def run_sampled(
    server: BenchServer, phase: Phase, clients: int, on_tick: Callable[[], None] | None = None
) -> PhaseResult:
    """`run_phase` against `server`, sampling its memory (and calling `on_tick`) every tick."""

    def tick() -> None:
        server.sample()
        if on_tick is not None:
            on_tick()

    return run_phase(server.url, phase, clients, on_tick=tick)


def check(result: PhaseResult, want: int, step: str, server: BenchServer) -> None:
    """Raises BenchError (with the server's log) unless all `want` requests of `step` succeeded."""
    if result.errors or result.sent < want:
        statuses = dict(result.statuses)
        raise BenchError(f"{step}: {result.ok} of {want} succeeded, {statuses}\n{server.log_tail(60)}")


def admin_http(server: BenchServer, timeout: float = 60) -> httpx.Client:
    """An httpx client with the server's admin key, for the few requests made outside a phase."""
    headers = {"Authorization": f"Bearer {server.admin_key}"}
    return httpx.Client(base_url=server.url, headers=headers, timeout=timeout)


def setup_tenants(driver: Driver, ids: Sequence[str], concurrency: int) -> dict[str, Any]:
    """Create `ids`, each with an empty `kv` table. Raises BenchError if any step fails."""
    plan = {
        "create": [driver.request("POST", "/v1/admin/tenants", {"id": t}) for t in ids],
        "schema": [driver.request("POST", f"/v1/tenants/{t}/query", {"sql": CREATE_SQL}) for t in ids],
    }
    steps = {}
    for step, requests in plan.items():
        result = driver.run(step, requests, len(ids), concurrency)
        check(result, len(ids), f"setup {step}", driver.server)
        steps[step] = {"seconds": round(result.elapsed, 2), "per_s": round(result.rate, 1)}
    return steps


def writes(driver: Driver, ids: Sequence[str]) -> list[bytes]:
    return [
        driver.request("POST", f"/v1/tenants/{t}/query", {"sql": INSERT_SQL, "params": [ROW]}) for t in ids
    ]


def settle(server: BenchServer, interval: float, wait: float = 300.0) -> None:
    """Wait until the shipper has nothing left: backlog 0 and no new lag observation for two
    flush intervals. Raises BenchError after `wait` seconds."""
    deadline = time.monotonic() + wait
    last = -1.0
    while time.monotonic() < deadline:
        m = scrape(server.url)
        count = m.get(f"{LAG}_count", 0.0)
        if m.get("sqlfleet_backup_backlog_bytes", 0.0) == 0 and count == last:
            return
        last = count
        time.sleep(2 * interval)
    raise BenchError(f"the shipper did not drain within {wait:g} s\n{server.log_tail()}")


# -- lag ---------------------------------------------------------------------------------------------


class LagProbe:
    """From outside: commit one row on `tenant`, then poll the bucket until a new segment holds
    a commit of that tenant at or after the moment the row was sent; lag = seen - sent (high by
    at most one poll and one request). Random pauses spread the probes over the flush cycle;
    a probe under way when `stop` is called still waits for its commit (at most 60 s). Its
    thread starts after the load generator forked (`start` is the phase's tick)."""

    def __init__(self, server: BenchServer, segments: Segments, tenant: str, poll: float = 0.02) -> None:
        self.server, self.segments, self.tenant, self.poll = server, segments, tenant, poll
        self.lags: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lag-probe", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)

    def _run(self) -> None:
        rng = random.Random(7)
        seen = self.segments.last()
        with admin_http(self.server) as http:
            while not self._stop.is_set():
                try:
                    seen = self._probe(http, seen)
                except Exception as exc:  # reported with the results; the phase goes on
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                self._stop.wait(rng.uniform(0.1, 0.6))

    def _probe(self, http: httpx.Client, seen: str) -> str:
        sent = time.time()
        r = http.post(f"/v1/tenants/{self.tenant}/query", json={"sql": INSERT_SQL, "params": ["probe"]})
        r.raise_for_status()
        while time.time() < sent + 60:
            for key, _ in self.segments.after(seen):
                seen = key
                if any(
                    c.tenant == self.tenant and c.kind == FRAMES and c.commits[-1][1] >= sent
                    for c in self.segments.chunks(key)
                ):
                    self.lags.append(time.time() - sent)
                    return seen
            time.sleep(self.poll)
        raise BenchError(f"the probe's commit of {sent:.3f} reached no segment within 60 s")


def measure_lag(
    server: BenchServer,
    driver: Driver,
    segments: Segments,
    ids: Sequence[str],
    seconds: float,
    concurrency: int,
    interval: float,
) -> dict[str, Any]:
    """Sustained writes over `ids` (shuffled) for `seconds`, then until the shipper drained."""
    order = list(range(len(ids)))
    random.Random(len(ids)).shuffle(order)
    bound = int(seconds * 20_000) + len(ids)  # a count far above the rate: time ends the phase
    phase = Phase(f"lag-{len(ids)}", writes(driver, ids), bound, concurrency, seconds, order)
    probe = LagProbe(server, segments, "probe")
    first, before, started, cpu0 = segments.last(), scrape(server.url), time.time(), server.cpu_seconds()
    try:
        result = run_sampled(server, phase, driver.clients, on_tick=probe.start)
    finally:
        probe.stop()
    ended, at_end, cpu = time.time(), scrape(server.url), server.cpu_seconds() - cpu0
    in_phase = [(k, s) for k, s in segments.after(first) if int(k.rsplit("/", 1)[1][:13]) <= ended * 1000]
    settle(server, interval)
    buckets = lag_histogram(before, scrape(server.url))
    puts = delta(before, at_end, SEGMENTS)
    hits, misses = (delta(before, at_end, f"sqlfleet_pool_{k}_total") for k in ("hits", "misses"))
    return {
        "tenants": len(ids),
        "writes": result.sent,
        "errors": result.errors,
        "writes_per_s": round(result.rate, 1),
        "write_latency_ms": latency_ms(result.latencies),
        "server_cores": round(cpu / result.elapsed, 2) if result.elapsed else 0.0,
        "pool_miss_rate": round(misses / (hits + misses), 3) if hits + misses else 0.0,
        "commits_observed": int(buckets[-1][1]) if buckets else 0,
        "lag_p50_s": round(quantile(buckets, 0.5), 3),
        "lag_p99_s": round(quantile(buckets, 0.99), 3),
        "lag_share_within_1_5_s": round(share_within(buckets, 1.5), 4),
        "lag_buckets": [[b if math.isfinite(b) else "+Inf", int(c)] for b, c in buckets],
        "probe": {"samples": len(probe.lags), "errors": probe.errors[:5], **_seconds(probe.lags)},
        "puts": int(puts),
        "puts_per_s": round(puts / (ended - started), 3),
        "flush_period_s": round((ended - started) / puts, 2) if puts else None,
        **segments.dirty(in_phase),
    }


def _seconds(values: Sequence[float]) -> dict[str, float]:
    ms = latency_ms(values)
    return {f"{k}_s": round(ms[k] / 1000, 3) for k in ("p50", "p99", "max")}


def measure_bursts(
    server: BenchServer,
    driver: Driver,
    segments: Segments,
    ids: Sequence[str],
    sizes: Sequence[int],
    concurrency: int,
) -> list[dict[str, Any]]:
    """On a server that never flushes by itself: one commit on each of N tenants, then one
    flush, for each N: the flush's PUTs, time and dirty tenants. A verify flushes before it
    restores; a second verify, with nothing to flush, gives the time to subtract."""
    out = []
    with admin_http(server, timeout=600) as http:

        def verify() -> float:
            started = time.perf_counter()
            r = http.post("/v1/admin/tenants/probe/backups/verify")
            if r.status_code != 200 or not r.json()["ok"]:
                raise BenchError(f"verify after the burst: {r.status_code} {r.text}\n{server.log_tail()}")
            return time.perf_counter() - started

        for n in sizes:
            check(driver.run(f"burst-{n}", writes(driver, ids[:n]), n, concurrency), n, "burst", server)
            first, before = segments.last(), scrape(server.url)
            with_flush = verify()
            puts = delta(before, scrape(server.url), SEGMENTS)
            alone = verify()
            out.append(
                {
                    "dirty_tenants": n,
                    "puts": int(puts),
                    "flush_seconds": round(max(0.0, with_flush - alone), 3),
                    **segments.dirty(segments.after(first)),
                }
            )
    return out
