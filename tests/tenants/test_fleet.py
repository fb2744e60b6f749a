"""The fleet's front door: lifecycle, deletes under load, corrupt files, reconcile after a crash."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

import pytest

from tenants.catalog import Catalog
from tenants.errors import (
    InvalidTenantId,
    SqlfleetError,
    TenantCorrupt,
    TenantExists,
    TenantNotFound,
    TenantUnavailable,
)
from tenants.execute import Statement
from tenants.fleet import Fleet
from tenants.state import TenantState
from tests.support.tenants import TEST_CONFIG, MakeFleet, filled_and_folded

SLOW = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 2000000) SELECT count(*) FROM c"


def tenant_files_on_disk(fleet: Fleet) -> list[str]:
    return sorted(p.name for p in fleet.layout.tenants_dir.rglob("*") if p.is_file())


def write_rows(fleet: Fleet, tenant: str, n: int = 3) -> None:
    fleet.execute(tenant, Statement("CREATE TABLE t(x)"))
    for i in range(n):
        fleet.execute(tenant, Statement("INSERT INTO t VALUES (?)", (i,)))


def count(fleet: Fleet, tenant: str) -> object:
    return fleet.execute(tenant, Statement("SELECT count(*) FROM t")).rows[0][0]


def test_create_info_delete_and_reuse_the_id(fleet: Fleet) -> None:
    row = fleet.create("acme", group="shop")
    assert (row.id, row.state, row.group, row.error) == ("acme", "active", "shop", None)
    assert row.size > 0 and abs(row.created_at - time.time()) < 60
    assert fleet.layout.tenant_path("acme").exists()
    write_rows(fleet, "acme")
    info = fleet.info("acme")
    assert info.size >= row.size and info.to_json()["state"] == "active"
    with pytest.raises(TenantExists) as exists:
        fleet.create("acme")
    assert exists.value.status == 409
    assert count(fleet, "acme") == 3  # the failed create changed nothing

    fleet.delete("acme")
    assert tenant_files_on_disk(fleet) == []
    with pytest.raises(TenantNotFound):
        fleet.info("acme")
    with pytest.raises(TenantNotFound):
        fleet.delete("acme")
    with pytest.raises(TenantNotFound):
        count(fleet, "acme")
    assert fleet.list_tenants() == []

    fleet.create("acme")  # the id is free again, and the new tenant starts empty
    assert fleet.execute("acme", Statement("SELECT count(*) FROM sqlite_schema")).rows == [(0,)]


def test_invalid_ids_never_reach_the_disk(fleet: Fleet, tmp_path: Path) -> None:
    for bad in ("../x", "a/b", "x" * 64, "Acme", "", "é"):
        for call in (fleet.create, fleet.info, fleet.delete):
            with pytest.raises(InvalidTenantId):
                call(bad)
        with pytest.raises(InvalidTenantId):
            fleet.execute(bad, Statement("SELECT 1"))
    assert tenant_files_on_disk(fleet) == []
    assert fleet.list_tenants() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_list_tenants_pages_by_prefix_and_cursor(fleet: Fleet) -> None:
    for tenant in ("a1", "b1", "b2", "b3", "c1"):
        fleet.create(tenant)
    assert [r.id for r in fleet.list_tenants()] == ["a1", "b1", "b2", "b3", "c1"]
    assert [r.id for r in fleet.list_tenants("b", limit=2)] == ["b1", "b2"]
    assert [r.id for r in fleet.list_tenants("b", after="b2", limit=2)] == ["b3"]
    assert [r.id for r in fleet.list_tenants(after="b3")] == ["c1"]


def test_data_survives_a_restart(make_fleet: MakeFleet) -> None:
    fleet = make_fleet()
    fleet.create("acme")
    write_rows(fleet, "acme", 5)
    fleet.close()
    fleet = make_fleet()
    assert count(fleet, "acme") == 5
    assert fleet.info("acme").state == "active"


def test_delete_while_a_long_statement_runs(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(dataclasses.replace(TEST_CONFIG, statement_timeout=10.0))
    fleet.create("acme")
    fleet.create("other")
    write_rows(fleet, "acme")
    outcome: list[object] = []
    finished = threading.Event()

    def long_statement() -> None:
        try:
            outcome.append(fleet.execute("acme", Statement(SLOW)).rows)
        except SqlfleetError as exc:
            outcome.append(exc)
        finally:
            finished.set()

    runner = threading.Thread(target=long_statement)
    runner.start()
    deadline = time.monotonic() + 10
    while not (fleet.pool.is_open("acme") and fleet.pool._handles["acme"].lock.locked()):
        assert time.monotonic() < deadline
        time.sleep(0.002)
    fleet.delete("acme")  # waits for the statement, then removes the files
    assert finished.is_set()
    runner.join(30)
    assert outcome == [[(2000000,)]] or isinstance(outcome[0], SqlfleetError), outcome
    assert not any(p.exists() for p in fleet.layout.tenant_files("acme"))
    with pytest.raises(TenantNotFound):
        count(fleet, "acme")
    assert fleet.execute("other", Statement("SELECT 1")).rows == [(1,)]


def test_corrupt_file_between_restarts_fails_alone(make_fleet: MakeFleet) -> None:
    fleet = make_fleet()
    for tenant in ("bad", "good"):
        fleet.create(tenant)
        write_rows(fleet, tenant)
    fleet.close()
    path = fleet.layout.tenant_path("bad")
    path.write_bytes(os.urandom(3 * 4096))  # garbage, no valid header
    Path(f"{path}-wal").unlink(missing_ok=True)

    fleet = make_fleet()
    with pytest.raises(TenantCorrupt) as info:
        count(fleet, "bad")
    assert info.value.status == 503 and info.value.code == "tenant_corrupt"
    row = fleet.info("bad")
    assert row.state == TenantState.CORRUPT and row.error
    with pytest.raises(TenantCorrupt):  # refused from the catalog now, without reopening
        count(fleet, "bad")
    assert not fleet.pool.is_open("bad")
    assert count(fleet, "good") == 3
    fleet.execute("good", Statement("INSERT INTO t VALUES (9)"))
    assert fleet.info("good").state == TenantState.ACTIVE
    fleet.delete("bad")  # a corrupt tenant can still be deleted
    assert not path.exists()


def test_corrupt_file_while_evicted_fails_alone(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(capacity=1)
    for tenant in ("bad", "good"):
        fleet.create(tenant)
        write_rows(fleet, tenant)
    assert not fleet.pool.is_open("bad")  # evicted by "good": the server is not holding it
    path = fleet.layout.tenant_path("bad")
    path.write_bytes(b"this is not a database" * 500)
    Path(f"{path}-wal").unlink(missing_ok=True)
    with pytest.raises(TenantCorrupt):
        count(fleet, "bad")
    assert fleet.info("bad").state == TenantState.CORRUPT
    assert count(fleet, "good") == 3


def test_corrupt_pages_found_by_a_query_mark_the_tenant(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(capacity=1)
    for tenant in ("bad", "good"):
        fleet.create(tenant)
    path = filled_and_folded(fleet, "bad")  # then trash every page after the first
    with open(path, "r+b") as f:
        f.seek(4096)
        f.write(b"\xa5" * (path.stat().st_size - 4096))

    fleet = make_fleet(capacity=1)
    with pytest.raises(TenantCorrupt):
        fleet.execute("bad", Statement("SELECT count(*), sum(length(x)) FROM t"))
    assert fleet.info("bad").state == TenantState.CORRUPT
    assert fleet.execute("good", Statement("SELECT 1")).rows == [(1,)]


def _crash_leftovers(fleet: Fleet) -> dict[str, Path]:
    """Recreate what a crash at each step of create/delete leaves behind, with the fleet closed."""
    layout = fleet.layout
    names = ("half-created", "half-created-nofile", "half-deleted", "orphan", "vanished", "kept", "stray-tmp")
    paths = {t: layout.tenant_path(t) for t in names}
    cat = Catalog(layout.catalog_path)
    try:
        cat.insert("half-created", None, TenantState.CREATING)
        cat.insert("half-created-nofile", None, TenantState.CREATING)
        cat.set_state("half-deleted", TenantState.DELETING)
        cat.remove("orphan")  # its file stays
        # "vanished" keeps its active row; its file goes below
    finally:
        cat.close()
    for tenant in ("half-created",):
        p = paths[tenant]
        p.parent.mkdir(parents=True, exist_ok=True)
        p.with_name(p.name + ".tmp1a2b3c4d").write_bytes(b"partial")
        p.write_bytes(b"")
    for p in layout.tenant_files("vanished"):
        p.unlink(missing_ok=True)
    stray = paths["stray-tmp"]
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.with_name(stray.name + ".tmpdeadbeef").write_bytes(b"partial")
    stray.with_name(stray.name + ".tmpdeadbeef-wal").write_bytes(b"partial")
    return paths


def test_reconcile_after_a_crash(make_fleet: MakeFleet) -> None:
    fleet = make_fleet()
    for tenant in ("half-deleted", "orphan", "vanished", "kept"):
        fleet.create(tenant)
        write_rows(fleet, tenant)
    fleet.close()
    paths = _crash_leftovers(fleet)

    fleet = make_fleet()
    ids = {r.id: r.state for r in fleet.list_tenants()}
    assert ids == {"orphan": "active", "vanished": "missing", "kept": "active"}
    for gone in ("half-created", "half-created-nofile", "half-deleted", "stray-tmp"):
        assert list(paths[gone].parent.glob(f"{gone}.db*")) == [], gone
        with pytest.raises(TenantNotFound):
            count(fleet, gone)
    assert count(fleet, "orphan") == 3  # adopted with its data
    assert count(fleet, "kept") == 3
    with pytest.raises(TenantUnavailable) as info:
        count(fleet, "vanished")
    assert "missing" in info.value.message
    assert fleet.info("vanished").error
    fleet.delete("vanished")  # a missing tenant can be deleted, and its id reused
    fleet.create("half-created")  # so can the ids of undone creates
    assert fleet.execute("half-created", Statement("SELECT 1")).rows == [(1,)]


def test_reconcile_ignores_files_that_are_not_tenants(make_fleet: MakeFleet) -> None:
    fleet = make_fleet()
    fleet.close()
    folder = fleet.layout.tenants_dir / "ab" / "cd"
    folder.mkdir(parents=True)
    (folder / "Not-A-Tenant.db").write_bytes(b"")
    (folder / "-x.db").write_bytes(b"")
    (fleet.layout.tenants_dir / "loose.db").write_bytes(b"")
    fleet = make_fleet()
    assert fleet.list_tenants() == []
    assert (folder / "Not-A-Tenant.db").exists()  # not ours to delete either


def test_reconcile_restores_a_missing_tenant_whose_file_is_back(make_fleet: MakeFleet) -> None:
    fleet = make_fleet()
    fleet.create("acme")
    write_rows(fleet, "acme")
    fleet.close()
    path = fleet.layout.tenant_path("acme")
    aside = path.with_name("aside")
    path.rename(aside)
    fleet = make_fleet()
    assert fleet.info("acme").state == TenantState.MISSING
    fleet.close()
    aside.rename(path)
    fleet = make_fleet()
    assert fleet.info("acme").state == TenantState.ACTIVE
    assert count(fleet, "acme") == 3


def test_closed_fleet_refuses_work_cleanly(make_fleet: MakeFleet) -> None:
    fleet = make_fleet()
    fleet.create("acme")
    fleet.close()
    with pytest.raises(TenantUnavailable):
        fleet.execute("acme", Statement("SELECT 1"))
    fleet.close()  # idempotent
