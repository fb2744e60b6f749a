"""Streams across HTTP requests: expiry, the tenant lock an open transaction holds, pinning
against eviction, the stream limits, and shutdown with a transaction open."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tenants.hooks import FleetHooks
from tests.support.app import ADMIN, InProcess, bearer, in_process


def pipe(app: InProcess, token: str, requests: list[Any], baton: str | None = None) -> httpx2.Response:
    r = app.client.post("/v2/pipeline", json={"baton": baton, "requests": requests}, headers=bearer(token))
    assert r.status_code != 500, r.text
    return r


def execute(sql: str) -> dict[str, Any]:
    return {"type": "execute", "stmt": {"sql": sql}}


def rows(app: InProcess, tenant: str, sql: str) -> Any:
    r = app.query(tenant, sql)
    assert r.status_code == 200, r.text
    return r.json()["rows"]


def test_idle_stream_expires_rolls_back_and_frees_the_tenant(tmp_path: Path) -> None:
    with in_process(tmp_path / "data", stream_idle_timeout=0.5) as app:
        _expires(app)


def _expires(app: InProcess) -> None:
    app.create("acme")
    token = app.token("acme")
    pipe(app, token, [execute("CREATE TABLE t (x)")])
    baton = pipe(app, token, [execute("BEGIN"), execute("INSERT INTO t VALUES (1)")]).json()["baton"]
    streams = app.server.context.streams
    deadline = time.monotonic() + 5
    while len(streams) and time.monotonic() < deadline:  # idle timeout 0.5 s, swept every 0.125 s
        time.sleep(0.05)
    assert len(streams) == 0
    r = pipe(app, token, [execute("COMMIT")], baton)
    assert (r.status_code, r.json()["code"]) == (400, "STREAM_EXPIRED")
    assert rows(app, "acme", "SELECT count(*) FROM t") == [[0]]


def test_open_transaction_holds_the_tenant_and_others_get_503(tmp_path: Path) -> None:
    # idle timeout far above the waits below, so the stream cannot expire mid-test
    with in_process(tmp_path / "data", stream_idle_timeout=30, busy_timeout=0.3) as app:
        _holds_tenant(app)


def _holds_tenant(app: InProcess) -> None:
    app.create("acme")
    app.create("beta")
    token = app.token("acme")
    baton = pipe(app, token, [execute("BEGIN"), execute("CREATE TABLE t (x)")]).json()["baton"]
    started = time.monotonic()
    busy = app.query("acme", "SELECT 1")
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "1", busy.text
    assert busy.json()["error"]["code"] == "tenant_busy"
    assert time.monotonic() - started < 3  # bounded by busy_timeout (0.3 s here)
    other = pipe(app, token, [execute("SELECT 1")])  # a second stream of the same tenant waits too
    assert (other.status_code, other.json()["code"]) == (503, "TENANT_BUSY")
    assert rows(app, "beta", "SELECT 2") == [[2]]  # other tenants are not held
    r = pipe(app, token, [execute("INSERT INTO t VALUES (1)"), execute("COMMIT")], baton)
    assert [x["type"] for x in r.json()["results"]] == ["ok", "ok"]
    assert rows(app, "acme", "SELECT count(*) FROM t") == [[1]]  # released at COMMIT
    pipe(app, token, [{"type": "close"}], r.json()["baton"])


def test_begin_readonly_refuses_writes_until_the_transaction_ends(app: InProcess) -> None:
    app.create("acme")
    token = app.token("acme")
    results = pipe(
        app,
        token,
        [
            execute("CREATE TABLE t (x)"),
            execute("BEGIN TRANSACTION READONLY"),
            execute("INSERT INTO t VALUES (1)"),
            execute("ROLLBACK"),
            execute("INSERT INTO t VALUES (2)"),
            {"type": "close"},
        ],
    ).json()["results"]
    assert [r["type"] for r in results] == ["ok", "ok", "error", "ok", "ok", "ok"]
    assert results[2]["error"]["code"] == "SQLITE_READONLY"
    assert rows(app, "acme", "SELECT x FROM t") == [[2]]


def test_read_only_token_cannot_write_even_in_a_transaction(app: InProcess) -> None:
    app.create("acme")
    rw, ro = app.token("acme"), app.token("acme", "ro")
    pipe(app, rw, [execute("CREATE TABLE t (x)")])
    results = pipe(app, ro, [execute("BEGIN"), execute("INSERT INTO t VALUES (1)"), execute("COMMIT")])
    assert [r["type"] for r in results.json()["results"]] == ["ok", "error", "ok"]
    baton = pipe(app, rw, [execute("BEGIN")]).json()["baton"]
    # a ro caller holding an rw stream's baton still cannot write: access is per request
    refused = pipe(app, ro, [execute("INSERT INTO t VALUES (2)"), execute("ROLLBACK")], baton)
    assert refused.json()["results"][0]["error"]["code"] == "SQLITE_READONLY"
    assert rows(app, "acme", "SELECT count(*) FROM t") == [[0]]


def test_stream_pins_its_tenant_against_eviction(tmp_path: Path) -> None:
    with in_process(tmp_path / "data", pool_capacity=1) as app:
        for tenant in ("acme", "beta", "gamma"):
            app.create(tenant)
        token = app.token("acme")
        baton = pipe(app, token, [execute("SELECT 1")]).json()["baton"]
        pool = app.server.fleet.pool
        assert rows(app, "beta", "SELECT 1") == [[1]]
        assert rows(app, "gamma", "SELECT 1") == [[1]]
        assert pool.is_open("acme")  # pinned by the idle stream
        assert not pool.is_open("beta")  # capacity 1: the unpinned one went
        pipe(app, token, [{"type": "close"}], baton)
        assert rows(app, "beta", "SELECT 1") == [[1]]
        assert not pool.is_open("acme")  # unpinned, so evictable again


def test_stream_limits_per_tenant_and_per_server(tmp_path: Path) -> None:
    with in_process(tmp_path / "data", max_streams_per_tenant=2, max_streams=3) as app:
        for tenant in ("acme", "beta", "gamma"):
            app.create(tenant)
        acme, beta, gamma = app.token("acme"), app.token("beta"), app.token("gamma")
        batons = [pipe(app, acme, []).json()["baton"] for _ in range(2)]
        third = pipe(app, acme, [])
        assert (third.status_code, third.json()["code"]) == (429, "TOO_MANY_STREAMS")
        assert third.headers["Retry-After"] == "1"
        assert pipe(app, beta, []).status_code == 200
        full = pipe(app, gamma, [])
        assert (full.status_code, full.json()["code"]) == (503, "STREAMS_EXHAUSTED")
        pipe(app, acme, [{"type": "close"}], batons[0])
        assert pipe(app, gamma, [{"type": "close"}]).status_code == 200


def test_deleted_tenant_ends_its_streams(app: InProcess) -> None:
    app.create("acme")
    token = app.token("acme")
    baton = pipe(app, token, [execute("SELECT 1")]).json()["baton"]
    assert app.client.delete("/v1/admin/tenants/acme", headers=ADMIN).status_code == 204
    r = pipe(app, token, [execute("SELECT 1")], baton)
    assert (r.status_code, r.json()["code"]) == (404, "TENANT_NOT_FOUND")
    assert len(app.server.context.streams) == 0


def test_shutdown_rolls_back_open_transactions(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with in_process(data) as app:
        app.create("acme")
        token = app.token("acme")
        pipe(app, token, [execute("CREATE TABLE t (x)")])
        pipe(app, token, [execute("BEGIN"), execute("INSERT INTO t VALUES (1)")])
        started = time.monotonic()
    assert time.monotonic() - started < 5  # the open transaction did not hold shutdown up
    with in_process(data) as app:
        assert rows(app, "acme", "SELECT count(*) FROM t") == [[0]]


class _Frozen(FleetHooks):
    """What backups say while a tenant's unshipped WAL is over its limit."""

    def writable(self, tenant_id: str) -> bool:
        return False


def test_frozen_tenant_serves_reads_and_refuses_writes_as_unavailable(
    app: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.create("acme")
    token = app.token("acme")
    pipe(app, token, [execute("CREATE TABLE t (x)")])
    monkeypatch.setattr(app.server.fleet, "hooks", (*app.server.fleet.hooks, _Frozen()))
    read, write = pipe(
        app, token, [execute("SELECT count(*) FROM t"), execute("INSERT INTO t VALUES (1)")]
    ).json()["results"]
    assert read["type"] == "ok"
    assert write["error"]["code"] == "TENANT_UNAVAILABLE", write
