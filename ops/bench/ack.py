"""The cost of durable acks (`--ack replica`, backups.ack): write latency p50/p99 and throughput
of the same writes against a server with ack=local and one with ack=replica, both shipping to
the same S3 (each under its own prefix), in alternating time slices (drift hits both alike;
ops.bench.overhead). `sqlfleet bench cluster --failover` reports it; anything may call
`measure_ack` (no CLI in it)."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Sequence
from typing import Any

from ops.bench.driver import Driver
from ops.bench.overhead import measure_ratio
from ops.bench.report import Row
from ops.bench.server import BenchServer, running_server
from ops.bench.shipping import setup_tenants
from ops.moto_s3 import MotoServer


def measure_ack(
    s3: MotoServer,
    *,
    tenants: int = 8,
    concurrency: int = 16,
    slices: int = 4,
    slice_seconds: float = 3.0,
    flush_interval: float = 1.0,
    ack_window: float = 0.02,
    timeout: float = 600.0,
    serve_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Start two servers on `s3` (ack=local and ack=replica, `flush_interval`, `ack_window`,
    plus `serve_args`), give each `tenants` tenants, then run `slices` alternating slices of
    `slice_seconds` of single-row inserts at `concurrency`. Returns
    {"local": {...}, "replica": {...}, "throughput_ratio", "p50_cost_ms", "p99_cost_ms", ...}
    where each side has writes, errors, writes_per_s, latency_ms {p50, p99, mean, max} and
    server_cpu_us_per_write; the ratio is replica / local. Raises BenchError (a setup step or
    the time budget `timeout` failed), LaunchError (a server did not start)."""
    deadline = time.monotonic() + timeout
    ids = [f"ack{i:04d}" for i in range(tenants)]
    args = ["--backup-flush-interval", str(flush_interval), "--ack-window", str(ack_window), *serve_args]

    def server(ack: str) -> contextlib.AbstractContextManager[BenchServer]:
        env = s3.server_env(f"bench-ack-{ack}-{uuid.uuid4().hex[:8]}")
        return running_server(None, [*args, "--ack", ack], env=env)

    with server("local") as local, server("replica") as replica:
        drivers = {side: Driver(s, 1, deadline) for side, s in (("local", local), ("replica", replica))}
        for driver in drivers.values():
            setup_tenants(driver, ids, min(concurrency, tenants))
        measured = measure_ratio(
            drivers["replica"], drivers["local"], ids, slices, slice_seconds, concurrency, flush_interval
        )
        return _report(measured, flush_interval, ack_window)


def _report(measured: dict[str, Any], flush_interval: float, window: float) -> dict[str, Any]:
    """measure_ratio's result (on: ack=replica, off: ack=local) under the sides' names."""
    on, off = measured["on"], measured["off"]
    lat_on, lat_off = on["latency_ms"], off["latency_ms"]
    return {
        "tenants": measured["tenants"],
        "slices": measured["slices"],
        "slice_seconds": measured["slice_seconds"],
        "flush_interval": flush_interval,
        "ack_window": window,
        "local": off,
        "replica": on,
        "throughput_ratio": measured["ratio"],
        "p50_cost_ms": round(lat_on["p50"] - lat_off["p50"], 3),
        "p99_cost_ms": round(lat_on["p99"] - lat_off["p99"], 3),
    }


def ack_rows(r: dict[str, Any]) -> list[Row]:
    """`measure_ack`'s result as report rows (ops.bench.report)."""
    rows: list[Row] = []
    for side in ("local", "replica"):
        lat = r[side]["latency_ms"]
        rows.append(
            (
                f"ack={side}: writes/s, latency p50 / p99",
                f"{r[side]['writes_per_s']:,.0f}/s, {lat['p50']} / {lat['p99']} ms",
                "",
                None,
            )
        )
    rows.append(
        (
            "ack=replica cost: p50 / p99, throughput",
            f"{r['p50_cost_ms']:+} / {r['p99_cost_ms']:+} ms, {r['throughput_ratio']}x",
            "",
            None,
        )
    )
    return rows
