"""Driving the server under test: load phases within one overall time budget (`Driver`), the
fleet set-up every benchmark starts with, and the latency and throughput summaries."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ops.bench.errors import BenchError
from ops.bench.loadgen import Drive, Phase, PhaseResult, render, run_phase
from ops.bench.profile import profiling
from ops.bench.server import BenchServer

QUERY_SQL = "SELECT v FROM kv WHERE k = ?"
# Idempotent, so `--reuse` can re-apply it to tenants an interrupted run left without it.
CREATE_SQL = "CREATE TABLE IF NOT EXISTS kv (k INTEGER PRIMARY KEY, v TEXT NOT NULL)"
ROWS_SQL = (
    "INSERT OR IGNORE INTO kv(k, v) "
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
    "SELECT i, 'value-' || i FROM n"
)


@dataclass(frozen=True)
class Profile:
    """Where --profile writes (None: no recording) and its --profile-mode."""

    out: Path | None = None
    mode: str = "active"


@dataclass
class Driver:
    """Runs load phases against `server` within one overall time budget."""

    server: BenchServer
    clients: int
    deadline: float
    profile: Profile = Profile()

    def measuring(self) -> contextlib.AbstractContextManager[None]:
        """Wraps the measured part: records the server with py-spy if --profile asked for it."""
        return profiling(self.server.proc.pid, self.profile.out, self.profile.mode)

    def run(
        self,
        name: str,
        requests: Sequence[bytes],
        total: int,
        concurrency: int,
        order: Sequence[int] | None = None,
        seconds: float | None = None,
        keep_responses: bool = False,
        drive: Drive | None = None,
    ) -> PhaseResult:
        """One load phase (HTTP/1.1 requests, unless `drive` speaks another protocol)."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"time budget exhausted before phase {name}")
        phase = Phase(name, requests, total, concurrency, min(left, seconds or left), order, keep_responses)
        if drive is None:
            return run_phase(self.server.url, phase, self.clients, on_tick=self.server.sample)
        return run_phase(self.server.url, phase, self.clients, on_tick=self.server.sample, drive=drive)

    def request(self, method: str, path: str, body: Any, token: str | None = None) -> bytes:
        headers = {"Authorization": f"Bearer {token or self.server.admin_key}"}
        if body is None:
            return render(self.server.url, method, path, headers)
        headers["Content-Type"] = "application/json"
        return render(self.server.url, method, path, headers, json.dumps(body).encode())

    def setup(
        self, ids: Sequence[str], rows: int, concurrency: int, reuse: bool = False, chunk: int = 10_000
    ) -> tuple[list[str], dict[str, Any]]:
        """Create `ids`, each with a `kv` table of `rows` rows, and mint an rw token each, a chunk
        at a time (progress is printed per chunk). With `reuse`, ids that exist already are kept
        and the (idempotent) table set-up is re-applied to them, in case an interrupted run left
        them without it. Returns the tokens (in `ids` order) and each step's count and rate.
        Raises BenchError on any failure."""
        steps: dict[str, dict[str, float]] = {}
        tokens: list[str] = []
        started = time.monotonic()
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            self._step(steps, "create", part, concurrency, {201, 409} if reuse else {201})
            self._step(steps, "schema", part, concurrency, {200}, rows)
            minted = self._step(steps, "token", part, concurrency, {200})
            tokens += [json.loads(minted.responses[i][1])["token"] for i in range(len(part))]
            if len(ids) > chunk:
                spent = time.monotonic() - started
                click.echo(f"setup: {len(tokens):,}/{len(ids):,} tenants ready in {spent:.0f} s", err=True)
        for step in steps.values():
            step["per_s"] = round(step["count"] / step["seconds"], 1) if step["seconds"] else 0.0
            step["seconds"] = round(step["seconds"], 3)
        return tokens, steps

    def _step(
        self,
        steps: dict[str, dict[str, float]],
        step: str,
        ids: Sequence[str],
        concurrency: int,
        ok: set[int],
        rows: int = 0,
    ) -> PhaseResult:
        body: dict[str, Any]
        if step == "create":
            requests = [self.request("POST", "/v1/admin/tenants", {"id": t}) for t in ids]
        elif step == "schema":
            body = {"statements": [{"sql": CREATE_SQL}, {"sql": ROWS_SQL, "params": [rows]}]}
            requests = [self.request("POST", f"/v1/tenants/{t}/batch", body) for t in ids]
        else:
            body = {"access": "rw", "expires_in": 86400}
            requests = [self.request("POST", f"/v1/admin/tenants/{t}/tokens", body) for t in ids]
        result = self.run(step, requests, len(ids), concurrency, keep_responses=True)
        done = steps.setdefault(step, {"count": 0, "seconds": 0.0})
        done["count"] += result.sent
        done["seconds"] += result.elapsed
        if result.sent < len(ids) or set(result.statuses) - ok:
            raise BenchError(
                f"setup step {step}: {result.sent} of {len(ids)} sent in {result.elapsed:.0f} s, "
                f"statuses {dict(result.statuses)}{' (time budget exhausted)' if result.timed_out else ''}"
                f"; steps so far {steps}\n{self.server.log_tail()}"
            )
        return result

    def query_requests(self, ids: Sequence[str], tokens: Sequence[str], rows: int) -> list[bytes]:
        return [
            self.request("POST", f"/v1/tenants/{t}/query", {"sql": QUERY_SQL, "params": [i % rows + 1]}, tok)
            for i, (t, tok) in enumerate(zip(ids, tokens, strict=True))
        ]


def latency_ms(latencies: Sequence[float]) -> dict[str, float]:
    """p50/p99 (nearest rank), mean and max, in milliseconds."""
    ordered = sorted(latencies)
    if not ordered:
        return {"p50": 0.0, "p99": 0.0, "mean": 0.0, "max": 0.0}

    def rank(q: float) -> float:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000

    mean = sum(ordered) / len(ordered) * 1000
    return {
        "p50": round(rank(0.5), 3),
        "p99": round(rank(0.99), 3),
        "mean": round(mean, 3),
        "max": round(ordered[-1] * 1000, 3),
    }


def summary(results: Sequence[PhaseResult], server_cpu: float) -> dict[str, Any]:
    """Requests, errors, rate, latency, and the CPU each side spent (per request and in cores)."""
    latencies: list[float] = []
    for r in results:
        latencies.extend(r.latencies)
    sent, seconds = sum(r.sent for r in results), sum(r.elapsed for r in results)
    client_cpu = sum(r.client_cpu for r in results)
    return {
        "requests": sent,
        "errors": sum(r.errors for r in results),
        "req_per_s": round(sent / seconds, 1) if seconds else 0.0,
        "latency_ms": latency_ms(latencies),
        "server_cpu_us_per_request": round(server_cpu / sent * 1e6, 1) if sent else 0.0,
        "server_cores": round(server_cpu / seconds, 2) if seconds else 0.0,
        "client_cores": round(client_cpu / seconds, 2) if seconds else 0.0,
    }
