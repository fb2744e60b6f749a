"""Limits end to end: runaway statements, oversized results, a busy tenant among idle ones."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from router.context import Context
from tenants.errors import TenantUnavailable
from tests.support.app import ADMIN, InProcess, in_process
from tests.support.http_contract import assert_error_shape, checking
from tests.support.server import ServerProcess, run_server

RUNAWAY = "with recursive r(i) as (select 1 union all select i + 1 from r) select count(*) from r"


def _timed_post(client: httpx.Client, path: str, body: Any, out: list[tuple[float, httpx.Response]]) -> None:
    started = time.monotonic()
    r = client.post(path, json=body)
    out.append((time.monotonic() - started, r))


LIMIT = 1.0  # the statement timeout of the shared server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server for this module: 2 worker threads, small bodies, a 1 s statement limit."""
    args = ("--statement-timeout", str(LIMIT), "--worker-threads", "2", "--max-body-bytes", "10000")
    with run_server(tmp_path_factory.mktemp("limits") / "data", *args) as running:
        with running.client() as admin:
            for tenant in ("slow", "quick", "busy", "idle"):
                assert admin.post("/v1/admin/tenants", json={"id": tenant}).status_code == 201
        yield running


def test_a_runaway_query_is_504_within_the_limit_while_other_tenants_are_served(
    server: ServerProcess,
) -> None:
    with server.client() as admin, server.client() as other:
        checking(admin)
        checking(other)
        runaway: list[tuple[float, httpx.Response]] = []
        thread = threading.Thread(
            target=_timed_post, args=(admin, "/v1/tenants/slow/query", {"sql": RUNAWAY}, runaway)
        )
        thread.start()
        time.sleep(0.1)
        quick: list[tuple[float, httpx.Response]] = []
        for i in range(10):
            _timed_post(other, "/v1/tenants/quick/query", {"sql": f"select {i}"}, quick)
        assert not runaway, "the quick requests must all finish while the runaway still runs"
        thread.join(LIMIT + 10)
    ((elapsed, r),) = runaway
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "statement_timeout"
    assert LIMIT <= elapsed < LIMIT + 1.5
    assert [r.json()["rows"] for _, r in quick] == [[[i]] for i in range(10)]
    assert max(t for t, _ in quick) < LIMIT / 2


def test_a_tenant_flooded_with_slow_requests_does_not_starve_the_others(server: ServerProcess) -> None:
    """With 2 worker threads and 3 runaways queued on one tenant, another tenant's request is
    answered before the first runaway ends: queued requests wait without holding a thread."""
    slow: list[tuple[float, httpx.Response]] = []
    clients = [server.client() for _ in range(3)]
    threads = [
        threading.Thread(target=_timed_post, args=(c, "/v1/tenants/busy/query", {"sql": RUNAWAY}, slow))
        for c in clients
    ]
    try:
        for t in threads:
            t.start()
        time.sleep(0.15)
        quick: list[tuple[float, httpx.Response]] = []
        with server.client() as admin:
            _timed_post(admin, "/v1/tenants/idle/query", {"sql": "select 1"}, quick)
        answered_before = len(slow)
        for t in threads:
            t.join(3 * LIMIT + 10)
    finally:
        for c in clients:
            c.close()
    assert quick[0][1].status_code == 200
    assert answered_before == 0, "the idle tenant waited behind the busy one"
    assert sorted(r.status_code for _, r in slow) == [504] * 3


def test_oversized_bodies_over_real_http_are_413_and_the_connection_lives_on(server: ServerProcess) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(200):  # 20 kB in chunks, no Content-Length
            yield b" " * 100

    with server.client() as client:
        checking(client)
        r = client.post("/v1/tenants/quick/query", content=chunks())
        assert r.request.headers["transfer-encoding"] == "chunked"
        assert (r.status_code, r.json()["error"]["code"]) == (413, "too_large")
        r = client.post("/v1/tenants/quick/query", content=b" " * 20_000)
        assert r.request.headers["content-length"] == "20000"
        assert (r.status_code, r.json()["error"]["code"]) == (413, "too_large")
        assert client.post("/v1/tenants/quick/query", json={"sql": "select 2"}).json()["rows"] == [[2]]


def test_a_runaway_inside_a_batch_is_504_and_rolls_back(tmp_path: Path) -> None:
    with in_process(tmp_path / "data", statement_timeout=0.3) as app:
        checking(app.client)
        app.create("acme")
        app.query("acme", "create table t(x)")
        body = {"statements": [{"sql": "insert into t values (1)"}, {"sql": RUNAWAY}]}
        r = app.client.post("/v1/tenants/acme/batch", json=body, headers=ADMIN)
        assert r.status_code == 504
        assert r.json()["error"] == {
            "code": "statement_timeout",
            "message": "statement 1: statement exceeded the 0.3 s time limit",
            "index": 1,
        }
        assert app.query("acme", "select count(*) from t").json()["rows"] == [[0]]
        assert app.query("acme", "insert into t values (2)").status_code == 200  # tenant still fine


def test_requests_queued_on_one_tenant_are_bounded(tmp_path: Path) -> None:
    """Beyond `max_queued_per_tenant` waiting calls, a tenant answers 503 at once; the count
    goes back down as calls finish."""
    with in_process(tmp_path / "data", max_queued_per_tenant=2) as app:
        _queue_is_bounded(app.server.context)


def _queue_is_bounded(context: Context) -> None:
    release = threading.Event()
    outcomes: list[str] = []

    async def call(tenant: str) -> None:
        try:
            await context.for_tenant(tenant, release.wait, 5)
            outcomes.append(f"{tenant} ok")
        except TenantUnavailable:
            outcomes.append(f"{tenant} busy")

    async def scenario() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(call, "a")
            tg.start_soon(call, "b")
            await anyio.sleep(0.2)
            release.set()
        async with anyio.create_task_group() as tg:  # all freed: two fit again
            tg.start_soon(call, "a")
            tg.start_soon(call, "a")

    anyio.run(scenario)
    assert sorted(outcomes) == ["a busy", "a ok", "a ok", "a ok", "a ok", "b ok"]


@pytest.fixture
def limited(tmp_path: Path) -> Any:
    with in_process(
        tmp_path / "data", max_result_rows=100, max_result_bytes=50_000, max_sql_length=2000
    ) as app:
        checking(app.client)
        app.create("acme")
        yield app


def test_an_oversized_result_is_413(limited: InProcess) -> None:
    rows = "with recursive r(i) as (select 1 union all select i + 1 from r limit {n}) select {col} from r"
    assert limited.query("acme", rows.format(n=100, col="i")).status_code == 200
    for sql in (
        rows.format(n=101, col="i"),
        rows.format(n=10, col="randomblob(10000)"),
        rows.format(n=1000, col="i"),
    ):
        r = limited.query("acme", sql)
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "too_large"
    body = {"statements": [{"sql": "select 1"}, {"sql": rows.format(n=101, col="i")}]}
    r = limited.client.post("/v1/tenants/acme/batch", json=body, headers=ADMIN)
    assert r.status_code == 413
    assert r.json()["error"]["index"] == 1


def test_sql_beyond_the_length_limit_is_refused(limited: InProcess) -> None:
    r = limited.query("acme", "select '" + "x" * 2100 + "'")
    assert r.status_code == 413
    assert_error_shape(r)


def test_a_huge_value_is_refused_not_allocated(limited: InProcess) -> None:
    for sql in (
        "select randomblob(3000000000)",
        "select zeroblob(2000000000)",
        "select printf('%.*c', 2000000000, 'x')",
    ):
        r = limited.query("acme", sql)
        assert r.status_code == 413, (sql, r.text)
