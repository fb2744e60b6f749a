"""The cost of shipping, for `sqlfleet bench backups`: the same writes against a server that
ships and one started with `--backups false`, in alternating time slices."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from ops.bench.driver import Driver, latency_ms
from ops.bench.loadgen import Phase, PhaseResult
from ops.bench.shipping import run_sampled, settle, writes


def measure_ratio(
    on: Driver,
    off: Driver,
    ids: Sequence[str],
    slices: int,
    slice_seconds: float,
    concurrency: int,
    interval: float,
) -> dict[str, Any]:
    """Alternating slices of the same writes against both servers (on off off on on off ...)."""
    kinds = {"on": (on, writes(on, ids)), "off": (off, writes(off, ids))}
    order = list(range(len(ids)))
    random.Random(1).shuffle(order)
    bound = int(slice_seconds * 20_000) + len(ids)
    done: dict[str, list[PhaseResult]] = {"on": [], "off": []}
    cpu = {"on": 0.0, "off": 0.0}
    for kind, (driver, requests) in kinds.items():  # warm-up, not counted: every tenant open
        run_sampled(
            driver.server, Phase(f"warm-{kind}", requests, len(ids), concurrency, slice_seconds), on.clients
        )
    settle(on.server, interval)
    for i in range(slices):
        kind = ("on", "off")[(i + i // 2) % 2]
        driver, requests = kinds[kind]
        cpu0 = driver.server.cpu_seconds()
        phase = Phase(f"{kind}{i}", requests, bound, concurrency, slice_seconds, order)
        done[kind].append(run_sampled(driver.server, phase, driver.clients))
        cpu[kind] += driver.server.cpu_seconds() - cpu0
        settle(on.server, interval)  # the shipper's tail must not run into the next slice
    out: dict[str, Any] = {"tenants": len(ids), "slices": slices, "slice_seconds": slice_seconds}
    for kind, results in done.items():
        sent, seconds = sum(r.sent for r in results), sum(r.elapsed for r in results)
        out[kind] = {
            "writes": sent,
            "errors": sum(r.errors for r in results),
            "writes_per_s": round(sent / seconds, 1) if seconds else 0.0,
            "latency_ms": latency_ms([x for r in results for x in r.latencies]),
            "server_cpu_us_per_write": round(cpu[kind] / sent * 1e6, 1) if sent else 0.0,
        }
    off_rate = out["off"]["writes_per_s"]
    out["ratio"] = round(out["on"]["writes_per_s"] / off_rate, 3) if off_rate else 0.0
    return out
