"""A tenant's WAL stays bounded: without backups it is checkpointed right after the commit that
takes it to checkpoint_frames, and past max_wal_bytes writes are refused (429) until it is folded
back, whatever the protocol; reads and other tenants go on."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tenants.checkpointer import Checkpointer, WalConfig, WalGuard
from tenants.errors import WalFull
from tenants.execute import Statement
from tenants.fleet import Fleet
from tenants.hooks import FleetHooks
from tests.support.app import ADMIN, InProcess, bearer, in_process
from tests.support.tenants import TEST_CONFIG, TEST_POOL
from tests.support.waiting import wait_until

MIB = 1 << 20


def wal_size(fleet: Fleet, tenant: str) -> int:
    path = Path(f"{fleet.layout.tenant_path(tenant)}-wal")
    return path.stat().st_size if path.exists() else 0


def refusals(app: InProcess, limit: str) -> float:
    text = app.client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sqlfleet_limit_refusals_total" and sample.labels.get("limit") == limit:
                return float(sample.value)
    return 0.0


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Fleet]:
    """A fleet without backups: checkpoints only when the guard asks, WAL bound 256 KiB."""
    config = WalConfig(checkpoint_frames=1_000_000, max_wal_bytes=256 << 10)

    def hooks(fleet: Fleet) -> list[FleetHooks]:
        checkpointer = Checkpointer(config, fleet.lease_if_open)
        return [checkpointer, WalGuard(config.max_wal_bytes, checkpointer.request)]

    fleet = Fleet(tmp_path / "data", TEST_CONFIG, TEST_POOL, hooks)
    yield fleet
    fleet.close()


def test_a_wal_past_its_bound_refuses_writes_until_it_is_checkpointed(guarded: Fleet) -> None:
    guarded.create("acme")
    guarded.create("other")
    guarded.execute("acme", Statement("CREATE TABLE t(b)"))
    guarded.execute("other", Statement("CREATE TABLE t(b)"))
    with pytest.raises(WalFull) as info:
        for _ in range(100):  # 100 x 50 KB: far past the bound unless something stops it
            guarded.execute("acme", Statement("INSERT INTO t VALUES (randomblob(50000))"))
    assert info.value.status == 429 and info.value.code == "wal_full"
    assert "max_wal_bytes" in info.value.message
    rows = guarded.execute("acme", Statement("SELECT count(*) FROM t")).rows[0][0]
    assert isinstance(rows, int) and 4 <= rows < 100  # reads go on; the refused insert left nothing
    guarded.execute("other", Statement("INSERT INTO t VALUES (randomblob(50000))"))  # others unaffected
    # the guard asked for a checkpoint off the request path: writes come back, the WAL is empty
    wait_until(lambda: wal_size(guarded, "acme") == 0, timeout=10)
    guarded.execute("acme", Statement("INSERT INTO t VALUES (1)"))
    assert guarded.execute("acme", Statement("SELECT count(*) FROM t")).rows == [(rows + 1,)]


def test_a_single_transaction_past_the_bound_is_rolled_back(guarded: Fleet) -> None:
    guarded.create("acme")
    guarded.execute("acme", Statement("CREATE TABLE t(b)"))
    big = "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 40) "
    with pytest.raises(WalFull):
        guarded.execute("acme", Statement(big + "INSERT INTO t SELECT randomblob(50000) FROM c"))
    assert guarded.execute("acme", Statement("SELECT count(*) FROM t")).rows == [(0,)]
    wait_until(lambda: wal_size(guarded, "acme") == 0, timeout=10)  # its spilled pages go too


def test_server_work_is_never_refused(guarded: Fleet) -> None:
    guarded.create("acme")
    guarded.execute("acme", Statement("CREATE TABLE t(b)"))
    with pytest.raises(WalFull):
        for _ in range(100):
            guarded.execute("acme", Statement("INSERT INTO t VALUES (randomblob(50000))"))
    with guarded.lease("acme") as handle:
        assert handle.conn is not None and handle.sandbox is not None
        handle.sandbox.trusted = True  # as schema sync runs its own statements
        try:
            handle.conn.execute("CREATE TABLE done(x)")
        finally:
            handle.sandbox.trusted = False


def test_without_backups_the_wal_is_checkpointed_after_the_commit_that_fills_it(tmp_path: Path) -> None:
    config = WalConfig(checkpoint_frames=50, max_wal_bytes=64 * MIB)
    fleet = Fleet(
        tmp_path / "data", TEST_CONFIG, TEST_POOL, lambda f: [Checkpointer(config, f.lease_if_open)]
    )
    try:
        fleet.create("acme")
        fleet.execute("acme", Statement("CREATE TABLE t(b)"))
        largest = 0
        for _ in range(200):  # about 13 pages a commit: 2,600 pages written in all
            fleet.execute("acme", Statement("INSERT INTO t VALUES (randomblob(50000))"))
            largest = max(largest, wal_size(fleet, "acme"))
        assert largest <= (50 + 13) * (4096 + 24) + 32
    finally:
        fleet.close()


# -- the quoted case, through the server ----------------------------------------------------------


def pipeline(app: InProcess, token: str, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    r = app.client.post("/v2/pipeline", json={"baton": None, "requests": requests}, headers=bearer(token))
    assert r.status_code == 200, r.text
    results: list[dict[str, Any]] = r.json()["results"]
    return results


def test_churn_without_backups_leaves_a_small_wal(tmp_path: Path) -> None:
    # finding 5: --backups false --max-db-bytes 1048576, a Hrana sequence of 100 x
    # `update t set b=randomblob(600000)` sent 10 times left a 606 MB -wal. Smaller here: 10 x 50
    # updates of 60 KB (old behaviour: a 30 MB WAL).
    settings = {
        "backups": False,
        "max_db_bytes": MIB,
        "backup_checkpoint_frames": 100,
        "synchronous": "NORMAL",
    }
    with in_process(tmp_path / "data", **settings) as app:
        app.create("acme")
        token = app.token("acme")
        fleet = app.server.fleet
        pipeline(app, token, [{"type": "sequence", "sql": "CREATE TABLE t(b); INSERT INTO t VALUES (1)"}])
        churn = "update t set b=randomblob(60000);" * 50
        largest = 0
        for _ in range(10):
            (result,) = pipeline(app, token, [{"type": "sequence", "sql": churn}])
            assert result["type"] == "ok", result
            largest = max(largest, wal_size(fleet, "acme"))
        assert largest <= 2 * MIB
        assert os.path.getsize(fleet.layout.tenant_path("acme")) <= MIB


def test_a_full_wal_is_a_429_on_rest_and_hrana(tmp_path: Path) -> None:
    settings = {"backups": False, "backup_checkpoint_frames": 1_000_000, "max_wal_bytes": 256 << 10}
    with in_process(tmp_path / "data", **settings) as app:
        app.create("acme")
        app.create("other")
        token = app.token("acme")
        for tenant in ("acme", "other"):
            assert app.query(tenant, "CREATE TABLE t(b)").status_code == 200
        before = refusals(app, "wal_bytes")
        insert = {"sql": "INSERT INTO t VALUES (randomblob(50000))"}
        for _ in range(100):
            r = app.client.post("/v1/tenants/acme/query", json=insert, headers=bearer(token))
            if r.status_code != 200:
                break
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == "wal_full" and int(r.headers["Retry-After"]) >= 1
        assert refusals(app, "wal_bytes") > before
        assert app.query("acme", "SELECT count(*) FROM t").status_code == 200
        assert app.query("other", "INSERT INTO t VALUES (randomblob(50000))").status_code == 200
        # the checkpoint runs once the request let go of the tenant: writes come back
        wait_until(lambda: app.query("acme", "INSERT INTO t VALUES (1)").status_code == 200, timeout=10)
        # Hrana: one pipeline holds the tenant throughout, so once refused its writes stay refused
        results = pipeline(app, token, [{"type": "execute", "stmt": insert}] * 100)
        codes = [r["error"]["code"] for r in results if r["type"] == "error"]
        assert codes and set(codes) == {"WAL_FULL"} and results[-1]["type"] == "error", results[-1]
        wait_until(lambda: app.query("acme", "INSERT INTO t VALUES (1)").status_code == 200, timeout=10)
        r = app.client.post("/v1/tenants/acme/batch", json={"statements": [insert]}, headers=ADMIN)
        assert r.status_code == 200, r.text


def test_temp_tables_are_bounded_like_the_database(tmp_path: Path) -> None:
    with in_process(tmp_path / "data", backups=False, max_db_bytes=MIB) as app:
        app.create("acme")
        fill = "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 40) "
        statements = [
            {"sql": "CREATE TEMP TABLE scratch(b)"},  # it lives as long as its request
            {"sql": fill + "INSERT INTO scratch SELECT randomblob(50000) FROM c"},
        ]
        start = time.monotonic()
        r = app.client.post("/v1/tenants/acme/batch", json={"statements": statements}, headers=ADMIN)
        assert r.status_code == 413 and "size limit" in r.json()["error"]["message"], r.text
        assert time.monotonic() - start < 5
        assert app.query("acme", "SELECT count(*) FROM temp.sqlite_schema").json()["rows"] == [[0]]
