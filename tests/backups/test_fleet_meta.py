"""The fleet metadata in the replica (backups/fleet_meta.py, fleet_doc.py): one PUT per round for
any number of tenant changes, retried whole after a failure, nothing left unpublished by a crash,
logs compacted into a base, sealed when encryption is on, and read back across namespaces with
the newest record winning and a warning when old tokens will not work."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backups import fleet_doc, fleet_meta
from backups.crypto import MAGIC
from backups.errors import BackupKeyMissing, ReplicaUnavailable
from backups.fleet_meta import FleetMeta
from backups.keyring import Keyring
from backups.sealed_replica import SealedReplica
from schema_sync.groups import GroupStore
from tenants.catalog import Catalog
from tenants.state import TenantState
from tests.support.shipper import FlakyReplica

KEYS = Keyring([("k1", b"\x01" * 32)])
DAY = 86400.0


class Place:
    """One server's catalog and groups, publishing into a shared replica directory."""

    def __init__(self, root: Path, replica: FlakyReplica, server: str, keys: Keyring | None = KEYS) -> None:
        self.catalog = Catalog(root / f"{server}.catalog.db")
        self.groups = GroupStore(root / f"{server}-data", timeout=5.0)
        self.replica = replica
        self.sealed = SealedReplica(replica, keys)
        self.meta = self.new_meta(server)

    def new_meta(self, server: str, retention: float = DAY) -> FleetMeta:
        return FleetMeta(self.sealed, self.catalog, self.groups, server, 0.05, retention)

    def create(self, *tenants: str, group: str | None = None) -> None:
        for tenant in tenants:
            assert self.catalog.insert(tenant, group)
            self.catalog.set_state(tenant, TenantState.ACTIVE)
            self.meta.touch(tenant)

    def delete(self, *tenants: str) -> None:
        for tenant in tenants:
            self.catalog.remove(tenant)
            self.meta.touch(tenant)

    def puts(self, under: str = "fleet/") -> list[str]:
        """The fleet metadata PUTs so far; forgets them."""
        done, self.replica.puts = [k for k in self.replica.puts if k.startswith(under)], []
        return done

    def published(self, server: str) -> fleet_doc.Namespace:
        return fleet_doc.read_namespace(self.sealed, server)


@pytest.fixture
def replica(tmp_path: Path) -> FlakyReplica:
    return FlakyReplica(tmp_path / "bucket")


@pytest.fixture
def place(tmp_path: Path, replica: FlakyReplica) -> Iterator[Place]:
    made = Place(tmp_path, replica, "aaaa0001")
    yield made
    made.catalog.close()


def test_any_number_of_tenant_changes_is_one_put_per_round(place: Place) -> None:
    place.create(*(f"t{i:03d}" for i in range(300)), group=None)
    place.meta.publish()
    assert place.puts() == ["fleet/aaaa0001/tenants/log-000000000001.json.zst"]
    for tenant in ("t001", "t002", "t003"):
        place.catalog.revoke_tokens(tenant)
        place.meta.touch(tenant)
    place.delete("t010", "t011")
    place.meta.publish()
    assert place.puts() == ["fleet/aaaa0001/tenants/log-000000000002.json.zst"]
    place.meta.touch("t004")  # touched, unchanged: nothing to write
    place.meta.publish()
    assert place.puts() == []

    records = place.published("aaaa0001").records
    assert len(records) == 300
    for tenant in ("t000", "t001"):
        row = place.catalog.get(tenant)
        assert row is not None
        record = records[tenant]
        assert (record.created, record.incarnation, record.token_generation) == (
            row.created_at,
            row.incarnation,
            row.token_generation,
        )
    assert records["t001"].token_generation == 1 and records["t000"].token_generation == 0
    assert records["t010"].deleted is not None and records["t000"].deleted is None


def test_a_failed_round_is_retried_whole(place: Place, replica: FlakyReplica) -> None:
    place.create("a", "b")
    replica.fail_puts = 1
    with pytest.raises(ReplicaUnavailable):
        place.meta.publish()
    place.create("c")
    place.meta.publish()
    assert place.puts() == ["fleet/aaaa0001/tenants/log-000000000001.json.zst"]
    assert sorted(place.published("aaaa0001").records) == ["a", "b", "c"]


def test_what_a_crash_left_unpublished_is_published_by_the_next_process(place: Place) -> None:
    place.create("a", "b", "c")
    place.meta.publish()
    place.create("d")
    place.catalog.revoke_tokens("a")
    place.delete("b")  # none of it published: the process dies here
    place.puts()

    again = place.new_meta("aaaa0001")  # no to-do list: it compares catalog and namespace
    again.publish()
    assert place.puts() == ["fleet/aaaa0001/tenants/log-000000000002.json.zst"]
    records = place.published("aaaa0001").records
    assert sorted(records) == ["a", "b", "c", "d"]
    assert records["a"].token_generation == 1 and records["b"].deleted is not None
    third = place.new_meta("aaaa0001")
    third.publish()
    assert place.puts() == []  # nothing differs


def test_logs_are_compacted_into_a_base(place: Place, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet_meta, "MAX_LOGS", 3)
    place.meta = place.new_meta("aaaa0001", retention=0.5)
    place.create("gone")
    place.meta.publish()
    place.delete("gone")
    place.meta.publish()
    time.sleep(0.6)  # the deletion is now older than the retention window
    for i in range(2):  # log 3, then (3 logs after no base) base 4
        place.create(f"t{i}")
        place.meta.publish()
    keys = [info.key for info in place.sealed.list("fleet/aaaa0001/tenants/")]
    assert keys == ["fleet/aaaa0001/tenants/base-000000000004.json.zst"]  # logs 1-3 folded and gone
    space = place.published("aaaa0001")
    assert sorted(space.records) == ["t0", "t1"]  # the old deletion dropped
    place.create("t2")
    place.meta.publish()
    space = place.published("aaaa0001")
    assert (space.seq, space.logs, sorted(space.records)) == (5, 1, ["t0", "t1", "t2"])


def test_objects_are_sealed_and_name_no_tenant(place: Place, tmp_path: Path) -> None:
    place.groups.create("shop", "CREATE TABLE items(x);")
    place.create("secret-tenant", group="shop")
    place.meta.start("ed25519:0000")
    try:
        place.meta.publish()
    finally:
        place.meta.stop()
    stored = sorted((tmp_path / "bucket" / "fleet").rglob("*.zst"))
    assert {p.relative_to(tmp_path / "bucket").as_posix() for p in stored} == {
        "fleet/aaaa0001/server.json.zst",
        "fleet/aaaa0001/groups/shop.tar.zst",
        "fleet/aaaa0001/tenants/log-000000000001.json.zst",
    }
    for path in stored:
        data = path.read_bytes()
        assert data.startswith(MAGIC) and b"secret-tenant" not in data and b"items" not in data
    stranger = SealedReplica(place.replica, Keyring([("other", b"\x02" * 32)]))
    with pytest.raises(BackupKeyMissing, match="k1"):
        fleet_doc.read_namespace(stranger, "aaaa0001")


def test_groups_come_back_newest_first_and_present_ones_stay(
    tmp_path: Path, replica: FlakyReplica, place: Place
) -> None:
    place.groups.create("shop", "CREATE TABLE items(x);")
    place.groups.create("blog", "CREATE TABLE posts(x);")
    place.meta.publish()
    place.groups.add_migration("shop", "more", "CREATE TABLE more(x);")
    place.meta.publish()  # shop again, with its migration

    fresh = Place(tmp_path, replica, "bbbb0002")
    try:
        fresh.groups.create("blog", "CREATE TABLE other(x);")  # made here before the restore
        done = fresh.meta.restore_groups()
        assert (done.restored, done.present, done.failed) == (["shop"], ["blog"], {})
        assert [m.name for m in fresh.groups.get("shop").state().migrations] == ["0001_more"]
        assert "other" in fresh.groups.get("blog").schema_sql()  # left alone
        assert fresh.meta.restore_groups().restored == []  # idempotent
        assert fresh.meta.ensure_group("shop") and not fresh.meta.ensure_group("nowhere")
    finally:
        fresh.catalog.close()


def test_the_newest_record_wins_and_a_changed_key_is_named(
    tmp_path: Path, replica: FlakyReplica, place: Place
) -> None:
    place.create("a", "b", "c")
    place.meta.start("ed25519:old")
    place.meta.stop()  # its last round publishes

    fresh = Place(tmp_path, replica, "bbbb0002")
    try:
        fresh.meta.token_key = "ed25519:old"
        a = fresh.meta.record("a")
        assert a is not None and a.token_key == "ed25519:old"
        row = place.catalog.get("a")
        assert row is not None and a.record.incarnation == row.incarnation
        check = fresh.meta.check_tokens(["a", "b", "c"])
        assert check.survive and check.warning() is None

        fresh.create("a")  # a newer "a" here: its record wins
        local = fresh.catalog.get("a")
        assert local is not None
        found = fresh.meta.record("a")
        assert found is not None and found.record.incarnation == local.incarnation

        fresh.meta.token_key = "ed25519:new"
        check = fresh.meta.check_tokens(["b", "c", "nobody"])
        assert (check.changed_key, check.unknown, check.survive) == (2, 1, False)
        warning = check.warning()
        assert warning is not None
        assert "tokens of 2 tenants will not work" in warning and "ed25519:old" in warning
        assert "ed25519:new" in warning and "1 tenants have no metadata" in warning
    finally:
        fresh.catalog.close()


def test_our_namespace_unreadable_is_published_anew_not_for_ever_failing(place: Place) -> None:
    place.create("a", "b")
    place.meta.publish()
    place.delete("b")
    place.meta.publish()
    place.puts()
    # the key that sealed it is gone (removed before a rekey): start over from the catalog
    place.sealed = SealedReplica(place.replica, Keyring([("k2", b"\x02" * 32)]))
    place.meta = place.new_meta("aaaa0001")
    place.meta.publish()
    assert place.puts() == [
        "fleet/aaaa0001/server.json.zst",
        "fleet/aaaa0001/tenants/base-000000000003.json.zst",
    ]
    keys = [info.key for info in place.sealed.list("fleet/")]
    assert keys == ["fleet/aaaa0001/server.json.zst", "fleet/aaaa0001/tenants/base-000000000003.json.zst"]
    assert sorted(place.published("aaaa0001").records) == ["a"]  # b's deletion record is lost
