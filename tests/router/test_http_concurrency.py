"""Many clients over many tenants through real HTTP against a real server with a tiny pool."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests.support.app import ADMIN
from tests.support.server import run_server

TENANTS = 40
WRITES = 6  # per tenant, from different clients
CLIENTS = 12


def test_concurrent_writes_over_many_tenants_through_a_small_pool_all_land(tmp_path: Path) -> None:
    args = ("--pool-capacity", "4", "--worker-threads", "6")
    with run_server(tmp_path / "data", *args) as server:
        tenants = [f"t{i:03d}" for i in range(TENANTS)]
        with server.client() as admin:
            for tenant in tenants:
                assert admin.post("/v1/admin/tenants", json={"id": tenant}).status_code == 201
                r = admin.post(f"/v1/tenants/{tenant}/query", json={"sql": "create table w(k, v)"})
                assert r.status_code == 200
        jobs = [(tenant, n) for n in range(WRITES) for tenant in tenants]
        local = threading.local()
        opened: list[httpx.Client] = []
        failures: list[str] = []

        def client() -> httpx.Client:
            """One keep-alive client per thread, like real application instances."""
            if not hasattr(local, "client"):
                local.client = httpx.Client(base_url=server.url, headers=ADMIN, timeout=30)
                opened.append(local.client)
            c: httpx.Client = local.client
            return c

        def write(job: tuple[str, int]) -> None:
            tenant, n = job
            body: dict[str, Any]
            if n % 2:  # odd writes go through /batch: two rows, atomically
                body = {"statements": [{"sql": "insert into w values (?, ?)", "params": [n, tenant]}] * 2}
                r = client().post(f"/v1/tenants/{tenant}/batch", json=body)
            else:
                body = {"sql": "insert into w values (:k, :v)", "params": {"k": n, "v": tenant}}
                r = client().post(f"/v1/tenants/{tenant}/query", json=body)
            if r.status_code != 200:
                failures.append(f"{tenant} #{n}: {r.status_code} {r.text[:200]}")

        started = time.monotonic()
        try:
            with ThreadPoolExecutor(CLIENTS) as pool:
                list(pool.map(write, jobs))
        finally:
            for c in opened:
                c.close()
        elapsed = time.monotonic() - started
        assert not failures, failures[:5]
        expected = sorted([n for n in range(WRITES) for _ in range(1 + n % 2)])
        with server.client() as admin:
            for tenant in tenants:
                r = admin.post(f"/v1/tenants/{tenant}/query", json={"sql": "select k, v from w order by k"})
                rows = r.json()["rows"]
                assert [k for k, _ in rows] == expected, tenant
                assert {v for _, v in rows} == {tenant}
            metrics = admin.get("/metrics").text
        evictions = _sample(metrics, "sqlfleet_pool_evictions_total")
        assert evictions > 0  # the pool really was too small for the working set
        assert _sample(metrics, "sqlfleet_pool_open_handles") <= 4 + 6  # capacity + in-flight leases
        print(f"{len(jobs)} writes from {CLIENTS} clients in {elapsed:.2f} s, {evictions:.0f} evictions")
    assert server.proc.returncode == 0


def _sample(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")
