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
from backups.handoff import Handoffs, Moved, latest_handoff, newest_handoffs, put_handoff
from backups.local_replica import LocalReplica
from backups.sealed_replica import SealedReplica
from tenants.catalog import Catalog
from tests.support.app import in_process
from tests.support.backups import make, write


def _row(tenant: str, lsn: int, kind: str = "frames") -> ChunkRow:
    return ChunkRow(
        tenant, "g1", kind, lsn, lsn, 1.0, 2.0, 4096, f"segments/n1/i/{lsn:012d}.seg", 0, 10, ((lsn, 2.0),)
    )


def _moved(tenant: str, *lsns: int) -> Moved:
    return Moved(tenant, TenantRecord(1.0, "shop", "inc-" + tenant, 3, 5.0), [_row(tenant, n) for n in lsns])


def test_the_newest_manifest_of_a_slot_wins_and_round_trips(tmp_path: Path) -> None:
    replica = SealedReplica(LocalReplica(tmp_path / "r"), None)
    put_handoff(replica, 7, 10, [_moved("a", 1, 2)])
    put_handoff(replica, 7, 300, [_moved("b", 3)])  # a later owner's token: sorts after 10
    put_handoff(replica, 9, 12, [])
    assert newest_handoffs(replica) == {
        7: "handoff/00007/00000000000000000300.json.zst",
        9: "handoff/00009/00000000000000000012.json.zst",
    }
    got = latest_handoff(replica, 7)
    assert got == {"b": _moved("b", 3)}
    assert latest_handoff(replica, 8) == {}


def test_a_handoff_carries_over_tenants_this_node_never_restored(tmp_path: Path) -> None:
    replica = SealedReplica(LocalReplica(tmp_path / "r"), None)
    put_handoff(replica, 7, 10, [_moved("old", 1), _moved("gone", 2)])
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
        put_handoff(replica, 7, token, [_moved("a", token)])
        put_handoff(replica, 8, token, [_moved("b", token)])
    catalog = BackupCatalog(tmp_path / "backups.db")
    tenants = Catalog(tmp_path / "catalog.db")
    try:
        handoffs = Handoffs(replica, catalog, tenants, lambda: None, lambda rows: False)
        assert handoffs.handed_over({7, 9}) == ["a"]
        assert sorted(o.key for o in replica.list("handoff/00007/")) == [
            "handoff/00007/00000000000000000020.json.zst",
            "handoff/00007/00000000000000000030.json.zst",
        ]
        assert len(list(replica.list("handoff/00008/"))) == 3  # not gained: left alone
        handoffs.slot_of = lambda tenant: 7
        assert handoffs.adopt("a") == _moved("a", 30)
    finally:
        catalog.close()
        tenants.close()
