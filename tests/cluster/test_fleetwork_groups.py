"""Fleet-wide groups (ops.fleetwork.FleetGroups) on a real etcd, two stores in-process: changes
go through etcd by compare-and-swap, every store follows them and catches up when it starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.fleet_groups import FleetGroups, GroupChanged
from schema_sync.errors import GroupExists, GroupNotFound
from tests.cluster.peers import Peers

TIMEOUT = 5.0


def _names(store: FleetGroups) -> list[str]:
    return [m.name for m in store.get("shop").state(fresh=True).migrations]


def test_group_changes_go_through_etcd_and_every_store_follows(peers: Peers, tmp_path: Path) -> None:
    a = FleetGroups(tmp_path / "a", TIMEOUT, peers.start("a", ownership=False).node)
    a.start()
    b: FleetGroups | None = None
    try:
        a.create("shop", "CREATE TABLE items (id, name)")
        a.add_migration("shop", "price", "ALTER TABLE items ADD COLUMN price REAL")
        with pytest.raises(GroupExists):
            a.create("shop", "CREATE TABLE other (x)")

        # a store that starts later has every group when `start` returns
        b = FleetGroups(tmp_path / "b", TIMEOUT, peers.start("b", ownership=False).node)
        b.start()
        assert _names(b) == ["0001_price"]
        assert b.get("shop").state().head == 0
        with pytest.raises(GroupExists):
            b.create("shop")

        # a change through one store, then a read through the other that syncs first
        b.add_sync("shop", "qty", "CREATE TABLE items (id, name, price REAL, qty INTEGER)")
        a.sync("shop")
        assert _names(a) == ["0001_price", "0002_qty"]

        # two changes read at one version: the second loses (409), whichever store it goes through
        definition, revision = a.definition("shop")
        assert definition is not None
        b.add_migration("shop", "note", "ALTER TABLE items ADD COLUMN note TEXT")
        with pytest.raises(GroupChanged) as lost:
            a.swap_definition("shop", {**definition, "released": 1}, revision)
        assert lost.value.status == 409

        # a release written fleet-wide reaches each template; writing it again changes nothing
        definition, revision = a.definition("shop")
        assert definition is not None
        revision = a.swap_definition("shop", {**definition, "released": 2}, revision)
        b.wait_applied(revision)
        assert a.get("shop").state(fresh=True).head == b.get("shop").state(fresh=True).head == 2
        a.swap_definition("shop", {**definition, "released": 2}, revision)
        assert _names(a) == _names(b) == ["0001_price", "0002_qty", "0003_note"]

        with pytest.raises(GroupNotFound):
            b.add_migration("nope", "x", "SELECT 1")
    finally:
        a.close()
        if b is not None:
            b.close()
