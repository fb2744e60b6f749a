from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import apsw
import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ops.bench.driver import latency_ms
from ops.bench.floor import fleet_floor
from ops.bench.loadgen import Phase, render, run_phase
from ops.process import spawn, stop
from ops.settings import Settings
from tenants.layout import Layout
from tests.support.app import ADMIN, bearer
from tests.support.server import run_bench, run_server

LATENCY = {"p50", "p99", "mean", "max"}


def _bench(tmp_path: Path, *args: str) -> dict[str, Any]:
    """Run `sqlfleet bench ...` as the user would and return its JSON."""
    proc, result = run_bench(tmp_path, *args, "--timeout", "60", timeout=90)
    assert f"sqlfleet bench {args[0]}" in proc.stdout
    assert result["server_exit_code"] == 0  # stopped gracefully, not left running
    return result


def test_fleet_reports_throughput_latency_pool_and_rss(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    args = ["--rounds", "2", "--concurrency", "3", "--pool-capacity", "4", "--data-dir", data]
    r = _bench(tmp_path, "fleet", "--tenants", "6", *args)
    assert r["requests"] == 12 and r["errors"] == 0 and r["rounds"] == 2
    assert r["req_per_s"] > 0 and set(r["latency_ms"]) == LATENCY
    assert r["pool"]["hits"] + r["pool"]["misses"] == 12 and 0 <= r["pool"]["hit_rate"] <= 1
    assert r["pool_capacity"] == 4
    assert 10 << 20 < r["server_peak_rss_bytes"] < 2 << 30
    assert {step: v["count"] for step, v in r["setup"].items()} == {"create": 6, "schema": 6, "token": 6}
    assert {"throughput", "server peak RSS"} <= set(r["targets"])
    # the setup as a whole (issue 14: a 100k fleet in <= 120 s) and its create step
    assert {"tenant create", "whole setup (create + table + token)"} <= set(r["targets"])
    assert r["setup_seconds"] > 0 and r["setup_per_s"] > 0 and r["setup_server_cpu_us_per_tenant"] > 0
    # the floor: the same steps with bare Python and APSW, same run, shown beside the server's
    assert {step: v["count"] for step, v in r["floor"].items()} == {"create": 6, "setup": 6, "query": 6}
    assert all(v["per_s"] > 0 and v["cpu_us_per_op"] > 0 for v in r["floor"].values())

    # --reuse keeps the tenants a run created (409 is fine), creates the missing ones
    r = _bench(tmp_path, "fleet", "--tenants", "8", *args, "--reuse", "--no-floor")
    assert {step: v["count"] for step, v in r["setup"].items()} == {"create": 8, "schema": 8, "token": 8}
    assert r["requests"] == 16 and r["errors"] == 0
    assert "floor" not in r


def test_the_fleet_floor_does_each_step_for_real_in_the_servers_layout(tmp_path: Path) -> None:
    ids = ["a1", "b2", "c3"]
    floor = fleet_floor(tmp_path, ids, 10, Settings.load({}), (2, 3))
    assert {step: v["count"] for step, v in floor.items()} == {"create": 3, "setup": 3, "query": 3}
    layout = Layout(tmp_path)
    for tenant in ids:  # made where the server keeps a tenant, with its table and rows
        conn = apsw.Connection(str(layout.tenant_path(tenant)), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            assert conn.execute("SELECT count(*), max(k) FROM kv").fetchall() == [(10, 10)]
        finally:
            conn.close()


def test_hot_compares_query_with_bare_endpoint(tmp_path: Path) -> None:
    r = _bench(tmp_path, "hot", "--slices", "3", "--slice-seconds", "0.3", "--concurrency", "4")
    for kind in ("query", "ws", "ping"):  # ws: the same query over Hrana over WebSocket
        assert r[kind]["requests"] > 0 and r[kind]["errors"] == 0
        assert r[kind]["req_per_s"] > 0 and set(r[kind]["latency_ms"]) == LATENCY
    assert r["ratio"] == round(r["query"]["req_per_s"] / r["ping"]["req_per_s"], 3)
    assert r["ws_ratio"] == round(r["ws"]["req_per_s"] / r["ping"]["req_per_s"], 3)
    assert "query / ping" in r["targets"]


def test_cold_requests_all_miss_the_pool(tmp_path: Path) -> None:
    r = _bench(tmp_path, "cold", "--tenants", "10", "--pool-capacity", "2", "--rounds", "2")
    assert r["requests"] == 20 and r["errors"] == 0
    assert r["pool"]["misses"] == 20 and r["pool"]["hits"] == 0 and r["miss_rate"] == 1.0
    assert set(r["latency_ms"]) == LATENCY and r["latency_ms"]["p99"] > 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupt_stops_the_server_and_removes_its_temp_dir(tmp_path: Path, sig: int) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    # a fleet that takes a while to set up, interrupted once its first tenants exist
    command = [sys.executable, "-m", "ops", "bench", "fleet", "--tenants", "2000", "--timeout", "120"]
    env = {**os.environ, "TMPDIR": str(temp)}
    bench = spawn(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        server = _wait_for_tenants(bench)
        os.kill(bench.pid, sig)  # only the bench process, not its group
        bench.wait(30)
        server.wait(5)  # raises psutil.TimeoutExpired if the server outlived the bench
    finally:
        stop(bench, 5)
    assert bench.returncode != 0
    assert not (tmp_path / "bench-fleet.json").exists()
    assert list(temp.iterdir()) == []  # the server's temp dir is gone


def _wait_for_tenants(bench: subprocess.Popen[bytes], wait: float = 90.0) -> psutil.Process:
    """The bench's server, once its /metrics count a tenant (the bench is creating its fleet)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and bench.poll() is None:
        for child in psutil.Process(bench.pid).children():
            with contextlib.suppress(psutil.Error):
                cmdline = child.cmdline()
                if "serve" in cmdline and _active_tenants(cmdline[cmdline.index("--port") + 1]) > 0:
                    return child
        time.sleep(0.05)
    raise AssertionError(f"the bench never created a tenant (exit status {bench.poll()})")


def _active_tenants(port: str) -> float:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sqlfleet_tenants" and sample.labels.get("state") == "active":
                return sample.value
    return 0.0


def test_loadgen_counts_statuses_and_keeps_responses(tmp_path: Path) -> None:
    with run_server(tmp_path / "data") as server, server.client() as client:
        assert client.post("/v1/admin/tenants", json={"id": "acme"}).status_code == 201
        token = client.post("/v1/admin/tenants/acme/tokens", json={}).json()["token"]
        body = json.dumps({"sql": "select ?", "params": [7]}).encode()
        headers = {"Content-Type": "application/json"}
        requests = [
            render(server.url, "POST", "/v1/tenants/acme/query", {**headers, **bearer(token)}, body),
            render(server.url, "POST", "/v1/tenants/acme/query", {**headers, **bearer("forged")}, body),
            render(server.url, "GET", "/v1/admin/tenants/acme", ADMIN),
        ]
        result = run_phase(server.url, Phase("t", requests, 9, 2, 30.0, keep_responses=True), processes=2)
    assert result.sent == 9 and result.statuses == {200: 6, 401: 3} and result.errors == 3
    (ok, body), (denied, error), (info, tenant) = (result.responses[i] for i in range(3))
    assert (ok, denied, info) == (200, 401, 200)
    assert json.loads(body)["rows"] == [[7]]
    assert json.loads(error)["error"]["code"] == "unauthorized"
    assert json.loads(tenant)["id"] == "acme"
    assert len(result.latencies) == 9 and not result.timed_out


def test_latency_percentiles_use_nearest_rank() -> None:
    summary = latency_ms([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert summary == {"p50": 50.0, "p99": 99.0, "mean": 50.5, "max": 100.0}
