"""Handoff manifests (backups.handoff): what a cluster node giving up a slot leaves for the next
owner, on a real local replica; the end-to-end moves are in tests/cluster/test_serving.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from backups.catalog import BackupCatalog, ChunkRow
from backups.errors import ReplicaError, ReplicaUnavailable
from backups.fleet_doc import TenantRecord
from backups.handoff import Handoffs, Listing, Manifest, Moved, latest_handoff, put_range
from backups.local_replica import LocalReplica
from backups.sealed_replica import SealedReplica
from cluster.slots import slot_of
from tenants.catalog import Catalog
from tests.support.app import ADMIN, in_process
from tests.support.backups import make, values, write


def _row(tenant: str, lsn: int, kind: str = "frames") -> ChunkRow:
    return ChunkRow(
        tenant, "g1", kind, lsn, lsn, 1.0, 2.0, 4096, f"segments/n1/i/{lsn:012d}.seg", 0, 10, ((lsn, 2.0),)
    )


def _moved(tenant: str, *lsns: int) -> Moved:
    return Moved(tenant, TenantRecord(1.0, "shop", "inc-" + tenant, 3, 5.0), [_row(tenant, n) for n in lsns])


def test_the_newest_manifest_of_a_slot_wins_and_round_trips(tmp_path: Path) -> None:
    replica = SealedReplica(LocalReplica(tmp_path / "r"), None)
    put_range(replica, 10, {7: [_moved("a", 1, 2)]})
    put_range(replica, 300, {7: [_moved("b", 3)]})  # a later owner's token: sorts after 10
    put_range(replica, 12, {9: []})
    listing = Listing.of(replica)
    newest = {slot: m.key for slot in (7, 8, 9) if (m := listing.newest(slot)) is not None}
    assert newest == {
        7: f"handoff/range/00/{300:020d}-{1 << 7:064x}.json.zst",
        9: f"handoff/range/00/{12:020d}-{1 << 9:064x}.json.zst",
    }
    got = latest_handoff(replica, 7)
    assert got == {"b": _moved("b", 3)}
    assert latest_handoff(replica, 8) == {}


def test_a_manifest_speaks_for_the_slots_of_its_range_in_its_keys_bitmap(tmp_path: Path) -> None:
    """One manifest per range of 256 slots (a takeover of thousands of slots: tens of PUTs); of
    the manifests that name a slot, the one with the highest token is its newest."""
    replica = SealedReplica(LocalReplica(tmp_path / "r"), None)
    put_range(replica, 10, {7: [_moved("a", 1)]})
    put_range(replica, 40, {9: [_moved("c", 4)]})  # newer than the range manifest below
    key = put_range(replica, 20, {7: [_moved("a", 2)], 9: [_moved("c", 3)], 255: [], 8: [_moved("b", 1)]})
    assert key == f"handoff/range/00/{20:020d}-{(1 << 255) | 0b1110000000:064x}.json.zst"
    assert Manifest.parse(key) == Manifest(key, 20, frozenset({7, 8, 9, 255}))
    assert latest_handoff(replica, 7) == {"a": _moved("a", 2)}
    assert latest_handoff(replica, 8) == {"b": _moved("b", 1)}
    assert latest_handoff(replica, 9) == {"c": _moved("c", 4)}
    assert latest_handoff(replica, 255) == {} and latest_handoff(replica, 256) == {}
    second = put_range(replica, 30, {300: [_moved("d", 1)]})
    assert second.startswith("handoff/range/01/") and latest_handoff(replica, 300) == {"d": _moved("d", 1)}
    assert latest_handoff(replica, 7 + 256) == {}
    with pytest.raises(ValueError):
        put_range(replica, 30, {1: [], 300: []})  # two ranges
    assert Manifest.parse("handoff/range/00/nonsense.json.zst") is None
    assert Manifest.parse("handoff/range/00/00000000000000000001-zz.json.zst") is None


def test_a_manifest_written_again_under_its_key_is_read_again(tmp_path: Path) -> None:
    """A handoff retried after a failed PUT writes the same key with more commits: a node that
    kept the first body reads the second."""
    replica = SealedReplica(LocalReplica(tmp_path / "r"), None)
    put_range(replica, 10, {7: [_moved("a", 1)]})
    catalog = BackupCatalog(tmp_path / "backups.db")
    tenants = Catalog(tmp_path / "catalog.db")
    try:
        handoffs = Handoffs(replica, catalog, tenants, lambda: None, lambda rows: False)
        handoffs.slot_of = lambda tenant: 7
        assert handoffs.adopt("a") == _moved("a", 1)
        put_range(replica, 10, {7: [_moved("a", 1, 2)]})
        assert handoffs.adopt("a") == _moved("a", 1, 2)
    finally:
        catalog.close()
        tenants.close()


def test_a_range_manifest_is_deleted_once_superseded_twice_in_every_slot_it_speaks_for(
    tmp_path: Path,
) -> None:
    replica = SealedReplica(LocalReplica(tmp_path / "r"), None)
    old = put_range(replica, 10, {7: [_moved("a", 1)], 8: [_moved("b", 1)]})
    for token in (20, 30):
        put_range(replica, token, {7: [_moved("a", token)]})
    catalog = BackupCatalog(tmp_path / "backups.db")
    tenants = Catalog(tmp_path / "catalog.db")
    try:
        handoffs = Handoffs(replica, catalog, tenants, lambda: None, lambda rows: False)
        assert handoffs.handed_over({7, 8}) == ["a", "b"]
        assert old in {o.key for o in replica.list("handoff/")}  # still the newest of slot 8
        for token in (20, 30):
            put_range(replica, token, {8: [_moved("b", token)]})
        assert handoffs.handed_over({7}) == ["a"]
        assert old not in {o.key for o in replica.list("handoff/")}
        handoffs.slot_of = lambda tenant: 8
        assert handoffs.adopt("b") == _moved("b", 30)
    finally:
        catalog.close()
        tenants.close()


def test_a_handoff_carries_over_tenants_this_node_never_restored(tmp_path: Path) -> None:
    replica = SealedReplica(LocalReplica(tmp_path / "r"), None)
    put_range(replica, 10, {7: [_moved("old", 1), _moved("gone", 2)]})
    catalog = BackupCatalog(tmp_path / "backups.db")
    tenants = Catalog(tmp_path / "catalog.db")
    try:
        tenants.insert("mine", "shop")
        catalog.add_rows([_row("gone", 5, kind="tombstone")])  # deleted here after it came
        flushed: list[bool] = []
        handoffs = Handoffs(
            replica,
            catalog,
            tenants,
            lambda: flushed.append(True),
            lambda rows: any(r.kind == "tombstone" for r in rows),
        )
        handoffs.hand_off({7: 20, 8: 21}, {7: ["mine"]})  # slot 8: nothing here, no manifest before
        assert flushed == [True]
        moved = latest_handoff(replica, 7)
        assert sorted(moved) == ["mine", "old"]  # "gone" was deleted here: not carried over
        assert moved["old"] == _moved("old", 1)
        assert latest_handoff(replica, 8) == {}
        handoffs.slot_of = lambda tenant: 7
        assert handoffs.adopt("old") == _moved("old", 1)
        assert catalog.chunks("old") == [_row("old", 1)]  # a restore finds them now
        assert handoffs.adopt("nobody") is None
        assert sorted(handoffs.handed_over({7, 8})) == ["mine", "old"]
    finally:
        catalog.close()
        tenants.close()


def test_no_manifest_is_written_when_the_last_commits_did_not_ship(tmp_path: Path) -> None:
    """A server's Handoffs ships for real before it writes: a segment upload that fails stops
    the handoff (the move waits), instead of a manifest that misses acknowledged commits."""
    with in_process(tmp_path / "data") as app:
        make(app, "acme", 1)
        backups = app.server.backups
        assert backups is not None
        inner = backups.replica.inner
        put, put_file = inner.put, inner.put_file

        def refuse_segments(call: Callable[..., None]) -> Callable[..., None]:
            def refusing(key: str, *args: Any, **kwargs: Any) -> None:
                if key.startswith("segments/"):
                    raise ReplicaUnavailable("the bucket is down")
                call(key, *args, **kwargs)

            return refusing

        inner.put, inner.put_file = refuse_segments(put), refuse_segments(put_file)  # type: ignore[method-assign]
        write(app, "acme", 2)
        with pytest.raises(ReplicaError):
            backups.handoffs.hand_off({7: 20}, {7: ["acme"]})
        assert latest_handoff(backups.replica, 7) == {}
        inner.put, inner.put_file = put, put_file  # type: ignore[method-assign]
        backups.handoffs.hand_off({7: 20}, {7: ["acme"]})
        assert set(latest_handoff(backups.replica, 7)) == {"acme"}


def test_a_node_gaining_slots_deletes_their_manifests_superseded_twice(tmp_path: Path) -> None:
    """The newest manifest carries over what the older ones said; the one before it stays, for
    a takeover retried under the same token to read again; slots not gained are not touched."""
    replica = SealedReplica(LocalReplica(tmp_path / "r"), None)
    for token in (10, 20, 30):
        put_range(replica, token, {7: [_moved("a", token)]})
        put_range(replica, token, {8: [_moved("b", token)]})
    catalog = BackupCatalog(tmp_path / "backups.db")
    tenants = Catalog(tmp_path / "catalog.db")
    try:
        handoffs = Handoffs(replica, catalog, tenants, lambda: None, lambda rows: False)
        assert handoffs.handed_over({7, 9}) == ["a"]
        kept = {(token, slot) for token in (10, 20, 30) for slot in (7, 8)} - {(10, 7)}  # 8: not gained
        assert sorted(o.key for o in replica.list("handoff/")) == sorted(
            f"handoff/range/00/{token:020d}-{1 << slot:064x}.json.zst" for token, slot in kept
        )
        handoffs.slot_of = lambda tenant: 7
        assert handoffs.adopt("a") == _moved("a", 30)
    finally:
        catalog.close()
        tenants.close()


def test_an_id_named_in_its_slots_newest_manifest_is_taken_even_if_its_restore_fails(
    tmp_path: Path,
) -> None:
    """A tenant handed to a node whose restore fails (a segment gone) answers its requests with
    that error, and whatever makes a tenant (create, import, a restore into a new id) answers 409
    for its id, never a new empty tenant; an id the manifest names as deleted, or does not name,
    is free."""
    with in_process(tmp_path / "data") as app:
        backups = app.server.backups
        assert backups is not None
        backups.handoffs.slot_of = slot_of
        broken = _moved("k1", 1)  # its segment is in no replica
        gone = Moved("k2", broken.record, [_row("k2", 1, kind="snapshot"), _row("k2", 2, kind="deleted")])
        for moved in (broken, gone):
            put_range(backups.replica, 10, {slot_of(moved.tenant): [moved]})
        read = app.client.post("/v1/tenants/k1/query", json={"sql": "SELECT 1"}, headers=ADMIN)
        assert read.status_code in (404, 503), read.text
        make(app, "src", 1)
        made = {
            "create": app.client.post("/v1/admin/tenants", json={"id": "k1"}, headers=ADMIN),
            "import": app.client.put("/v1/admin/tenants/k1/import", content=b"SQLite", headers=ADMIN),
            "fork": app.client.post("/v1/admin/tenants/src/restore", json={"as": "k1"}, headers=ADMIN),
        }
        for how, r in made.items():
            assert (r.status_code, r.json()["error"]["code"]) == (409, "tenant_exists"), (how, r.text)
        assert app.server.fleet.catalog.get("k1") is None
        for free in ("k2", "k3"):
            assert app.create(free)["id"] == free


def test_a_tenant_deleted_while_its_slot_was_away_stays_deleted_when_the_slot_comes_back(
    tmp_path: Path,
) -> None:
    """Issue 17, a newcomer's finding: this node's rows of a tenant from when it owned the slot
    before (it gave the slot away, the next owner deleted the tenant and gave the slot back, its
    manifest naming the tenant no more) brought the tenant back, stale, on its first request.
    Rows newer than the slot's newest manifest still count: a tenant created after the slot came,
    its local copy lost since, is restored."""
    with in_process(tmp_path / "data") as app:
        backups, fleet = app.server.backups, app.server.fleet
        assert backups is not None
        backups.handoffs.slot_of = slot_of
        make(app, "acme", 1)
        slot = slot_of("acme")
        fleet.let_go(["acme"], lambda _: backups.handoffs.hand_off({slot: 10}, {slot: ["acme"]}))
        put_range(backups.replica, 20, {slot: []})  # deleted there, the slot given back
        assert not backups.recover("acme")
        assert not fleet.exists("acme")

        put_range(backups.replica, 30, {slot_of("later"): []})  # the slot came here
        make(app, "later", 1, 2)
        backups.flush()
        fleet.let_go(["later"], lambda _: None)  # its local copy lost
        assert backups.recover("later")
        assert values(app, "later") == [1, 2]
