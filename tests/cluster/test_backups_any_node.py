"""Backups listing and undelete through any node (issue 17): the restorable tenants are every
live node's, and a tenant deleted before its slot moved is undeleted through either node, on two
real `sqlfleet serve` processes (one etcd member, one replica directory, one signing key)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.test_any_node import made, owned_by, rows
from tests.cluster.test_serving import Nodes, running_nodes
from tests.support.etcd import running_etcd
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    with running_etcd(1) as etcd, running_nodes(etcd, tmp_path_factory.mktemp("backups-any-node")) as made:
        yield made


def restorable(nodes: Nodes, via: str, deleted: bool) -> dict[str, dict[str, Any]]:
    """The restorable tenants as `via` lists them, by id (each listed once)."""
    with nodes.servers[via].client(timeout=60) as http:
        r = http.get("/v1/admin/backups/tenants", params={"deleted": "true" if deleted else "false"})
        assert r.status_code == 200, r.text
        listed: list[dict[str, Any]] = r.json()["tenants"]
    ids = [t["id"] for t in listed]
    assert ids == sorted(set(ids)), ids
    return {t["id"]: t for t in listed}


def _all_slots(nodes: Nodes, node: str) -> bool:
    with nodes.servers["n1"].client() as http:
        return bool(http.get("/v1/admin/cluster").json()["nodes"][node]["slots"] == 16384)


def test_every_nodes_restorable_tenants_and_an_undelete_after_the_slot_moved(nodes: Nodes) -> None:
    """n2 deletes two of its tenants; each node lists them (n1's catalog never had them), once.
    Drain n2: their slots are n1's, and the deletions' rows stay with n2 (a slot moves with its
    live tenants only). Undeleting one through n1 (the owner now) and one through n2 restores
    each with its rows, and both nodes list them as existing again."""
    (kept,) = owned_by("n1", "keep")
    gone = owned_by("n2", "undel", 2)
    with nodes.servers["n1"].client(timeout=60) as http:
        assert http.post("/v1/admin/tenants", json={"id": kept}).status_code == 201
    for tenant in gone:
        made(nodes, tenant)
        with nodes.servers["n1"].client(timeout=60) as http:
            assert http.delete(f"/v1/admin/tenants/{tenant}").status_code == 204
    for via in ("n1", "n2"):
        listed = restorable(nodes, via, deleted=True)
        assert listed[kept] == {"id": kept, "exists": True, "deleted": None}, listed
        for tenant in gone:
            assert listed[tenant]["exists"] is False and listed[tenant]["deleted"] is not None, listed
        live = restorable(nodes, via, deleted=False)
        assert kept in live and not set(gone) & set(live), live

    n1 = nodes.servers["n1"]
    with n1.client(timeout=60) as http:
        r = http.post("/v1/admin/cluster/nodes/n2/drain")
        assert r.status_code == 200, r.text
        try:
            wait_until(lambda: _all_slots(nodes, "n1"), timeout=90)
            for tenant, via in zip(gone, ("n1", "n2"), strict=True):
                with nodes.servers[via].client(timeout=60) as through:
                    r = through.post(f"/v1/admin/tenants/{tenant}/restore", json={})
                assert r.status_code == 200, r.text
                assert r.json()["tenant"] == tenant and r.json()["commits_applied"] >= 1, r.text
                assert rows(nodes, "n2", tenant) == rows(nodes, "n1", tenant) == [0, 1, 2]
            for via in ("n1", "n2"):
                listed = restorable(nodes, via, deleted=True)
                for tenant in gone:
                    assert listed[tenant] == {"id": tenant, "exists": True, "deleted": None}, listed
                assert set(gone) <= set(restorable(nodes, via, deleted=False))
        finally:
            assert http.delete("/v1/admin/cluster/nodes/n2/drain").status_code == 200
            nodes.settled(("n1", "n2"))


def _drain(nodes: Nodes, undo: bool = False) -> None:
    with nodes.servers["n1"].client(timeout=60) as http:
        r = (
            http.delete("/v1/admin/cluster/nodes/n2/drain")
            if undo
            else http.post("/v1/admin/cluster/nodes/n2/drain")
        )
        assert r.status_code == 200, r.text
    if undo:
        nodes.settled(("n1", "n2"))
    else:
        wait_until(lambda: _all_slots(nodes, "n1"), timeout=90)


def _insert(nodes: Nodes, tenant: str, value: int) -> None:
    with nodes.servers["n1"].client() as http:
        r = http.post(
            f"/v1/tenants/{tenant}/query", json={"sql": "INSERT INTO t VALUES (?)", "params": [value]}
        )
        assert r.status_code == 200, r.text


def test_a_tenant_deleted_while_its_slot_was_away_stays_deleted_and_undeletes_whole(nodes: Nodes) -> None:
    """A newcomer's finding: n1 kept rows of a tenant from owning its slot once; the slot went
    back to n2, which wrote more and deleted the tenant; when the slot came to n1 again, the
    tenant's first request restored it from n1's stale rows (deleted, it was back, without its
    last writes; an undelete then kept the stale copy). It stays deleted, and an undelete brings
    back every write up to the deletion."""
    (tenant,) = owned_by("n2", "away")
    made(nodes, tenant)
    try:
        _drain(nodes)
        _insert(nodes, tenant, 3)  # on n1
        _drain(nodes, undo=True)
        _insert(nodes, tenant, 4)  # on n2
        with nodes.servers["n1"].client(timeout=60) as http:
            assert http.delete(f"/v1/admin/tenants/{tenant}").status_code == 204
        _drain(nodes)  # n1 again, with its rows of [0..3]
        for via in ("n1", "n2"):
            with nodes.servers[via].client(timeout=60) as http:
                r = http.post(f"/v1/tenants/{tenant}/query", json={"sql": "SELECT x FROM t"})
                assert r.status_code == 404, r.text
                assert http.get(f"/v1/admin/tenants/{tenant}").status_code == 404
        with nodes.servers["n2"].client(timeout=60) as http:
            r = http.post(f"/v1/admin/tenants/{tenant}/restore", json={})
        assert r.status_code == 200, r.text
        assert rows(nodes, "n1", tenant) == [0, 1, 2, 3, 4]
    finally:
        _drain(nodes, undo=True)


def test_restoring_a_tenant_no_node_has_backups_of_says_so(nodes: Nodes) -> None:
    for via in ("n1", "n2"):
        with nodes.servers[via].client(timeout=60) as http:
            r = http.post("/v1/admin/tenants/never-was/restore", json={})
        assert r.status_code == 404, r.text
        error = r.json()["error"]
        assert error["code"] == "tenant_not_found" and "no live node" in error["message"], error


def test_a_nodes_own_backup_rows_of_a_tenant(nodes: Nodes) -> None:
    """What the owner asks the others for: this node's catalog rows, never forwarded."""
    (tenant,) = owned_by("n2", "rowsof")
    made(nodes, tenant)
    with nodes.servers["n2"].client() as http:
        held = http.get(f"/v1/admin/backups/tenants/{tenant}")
    assert held.status_code == 200 and held.json()["tenant"] == tenant, held.text
    assert held.json()["rows"] and all(row[0] == tenant for row in held.json()["rows"]), held.text
    with nodes.servers["n1"].client() as http:
        assert http.get(f"/v1/admin/backups/tenants/{tenant}").json() == {"tenant": tenant, "rows": []}


def test_a_node_that_does_not_answer_makes_the_listing_and_an_undelete_a_503(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """n2 killed: until its lease runs out (10 s here) it is a live node that does not answer,
    so neither the list nor the restore of a tenant n1 lacks is answered with n1's part alone."""
    with running_etcd(1) as etcd, running_nodes(etcd, tmp_path_factory.mktemp("dead-peer"), ttl=10) as two:
        two.servers["n2"].kill9()
        with two.servers["n1"].client(timeout=60) as http:
            for r in (
                http.get("/v1/admin/backups/tenants"),
                http.post("/v1/admin/tenants/never-was/restore", json={}),
            ):
                assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
                assert r.json()["error"]["code"] == "node_unreachable", r.text
