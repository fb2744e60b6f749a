"""Lazy catch-up: a tenant opened behind its group's released head is migrated before its first
request; new tenants of a group start as a copy of the template."""

from __future__ import annotations

import logging

import pytest

from schema_sync import catch_up, migrations
from schema_sync.errors import GroupNotFound
from schema_sync.migrations import RECORD_TABLE, Applied
from schema_sync.rollout import RolloutOptions
from schema_sync.session import SchemaSession
from tenants.errors import NotAuthorizedSql
from tenants.execute import Statement
from tests.support.schema import SchemaFleet

ITEMS = "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT); INSERT INTO items VALUES (1, 'seed');"


def test_new_tenant_is_a_copy_of_the_template(schema_fleet: SchemaFleet) -> None:
    schema_fleet.groups.create("shop", ITEMS)
    schema_fleet.fleet.create("acme", "shop")
    assert schema_fleet.query("acme", "SELECT * FROM items") == [(1, "seed")]
    assert schema_fleet.query("acme", "PRAGMA journal_mode") == [("wal",)]
    with pytest.raises(GroupNotFound):
        schema_fleet.fleet.create("lost", "no-such-group")
    assert schema_fleet.fleet.catalog.get("lost") is None


def test_tenant_behind_is_caught_up_before_its_first_request(schema_fleet: SchemaFleet) -> None:
    sf = schema_fleet
    sf.groups.create("shop", ITEMS)
    sf.fleet.create("acme", "shop")
    sf.fleet.create("plain")  # no group: never touched
    sf.groups.add_migration("shop", "price", "ALTER TABLE items ADD COLUMN price REAL DEFAULT 9.5;")
    # registered, not released: opening the tenant changes nothing yet
    assert sf.query("acme", "SELECT count(*) FROM pragma_table_info('items')") == [(2,)]
    sf.fleet.pool.discard("acme")  # closed: the next request opens it afresh
    assert sf.groups.release("shop") == ["0001_price"]
    # the first request already sees the released schema
    assert sf.query("acme", "SELECT id, name, price FROM items") == [(1, "seed", 9.5)]
    assert sf.query("acme", f"SELECT name FROM {RECORD_TABLE}") == [("0001_price",)]
    assert sf.query("plain", "SELECT count(*) FROM sqlite_schema") == [(0,)]


def test_catch_up_can_be_turned_off(schema_fleet: SchemaFleet) -> None:
    sf = schema_fleet
    sf.hooks.lazy_catch_up = False
    sf.groups.create("shop", ITEMS)
    sf.fleet.create("acme", "shop")
    sf.groups.add_migration("shop", "price", "ALTER TABLE items ADD COLUMN price REAL;")
    sf.groups.release("shop")
    assert sf.query("acme", "SELECT * FROM items") == [(1, "seed")]


def _release_an_index_dup_breaks(sf: SchemaFleet, *others: str, open_in_pool: bool) -> None:
    """Group shop with tenants `others` and dup, whose second 'seed' row breaks the unique index
    the group's release then adds; dup stays open in the pool or not, as told."""
    sf.groups.create("shop", ITEMS)
    for tenant in (*others, "dup"):
        sf.fleet.create(tenant, "shop")
    sf.query("dup", "INSERT INTO items VALUES (2, 'seed')")
    if not open_in_pool:
        sf.fleet.pool.discard("dup")
    sf.groups.add_migration("shop", "unique_names", "CREATE UNIQUE INDEX items_name ON items(name);")
    sf.groups.release("shop")


def test_failed_catch_up_serves_the_tenant_unchanged(
    schema_fleet: SchemaFleet, caplog: pytest.LogCaptureFixture
) -> None:
    sf = schema_fleet
    _release_an_index_dup_breaks(sf, "acme", open_in_pool=False)
    with caplog.at_level(logging.ERROR, logger="schema_sync.catch_up"):
        assert sf.query("dup", "SELECT count(*) FROM items") == [(2,)]
    assert "catch-up of tenant dup to group shop failed" in caplog.text
    assert "UNIQUE constraint failed" in caplog.text
    assert sf.query("dup", "SELECT count(*) FROM sqlite_schema WHERE type = 'index'") == [(0,)]
    assert sf.query("acme", "SELECT name FROM sqlite_schema WHERE type = 'index'") == [("items_name",)]


def test_an_open_tenant_catches_up_on_its_next_request(schema_fleet: SchemaFleet) -> None:
    sf = schema_fleet
    sf.groups.create("shop", ITEMS)
    sf.fleet.create("acme", "shop")
    sf.fleet.create("reader", "shop")
    assert sf.query("acme", "SELECT count(*) FROM items") == [(1,)]  # open in the pool
    assert sf.query("reader", "SELECT count(*) FROM items") == [(1,)]
    sf.groups.add_migration("shop", "price", "ALTER TABLE items ADD COLUMN price REAL DEFAULT 9.5;")
    assert sf.groups.release("shop") == ["0001_price"]
    assert sf.fleet.pool.is_open("acme") and sf.fleet.pool.is_open("reader")
    # an inline read (event loop) never migrates: it declines, and the worker's lease catches up
    assert sf.fleet.try_inline("reader", Statement("SELECT * FROM items")) is None
    assert sf.fleet.execute("reader", Statement("SELECT price FROM items"), readonly=True).rows == [(9.5,)]
    with pytest.raises(NotAuthorizedSql):
        sf.fleet.execute("reader", Statement("DELETE FROM items"), readonly=True)  # still read-only
    assert sf.query("acme", "SELECT id, name, price FROM items") == [(1, "seed", 9.5)]
    assert sf.query("acme", f"SELECT name FROM {RECORD_TABLE}") == [("0001_price",)]
    for _ in range(2):  # the second run judges it inline-safe (tenants.inline)
        assert sf.query("acme", "SELECT price FROM items WHERE id = 1") == [(9.5,)]
    result = sf.fleet.try_inline("acme", Statement("SELECT price FROM items WHERE id = 1"))
    assert result is not None and result.rows == [(9.5,)]  # nothing due any more: inline again


def test_a_failing_catch_up_is_not_retried_on_every_request(
    schema_fleet: SchemaFleet, caplog: pytest.LogCaptureFixture
) -> None:
    sf = schema_fleet
    _release_an_index_dup_breaks(sf, open_in_pool=True)
    with caplog.at_level(logging.ERROR, logger="schema_sync.catch_up"):
        for _ in range(5):
            assert sf.query("dup", "SELECT count(*) FROM items") == [(2,)]
    assert caplog.text.count("catch-up of tenant dup to group shop failed") == 1


def test_a_tenant_opened_without_catch_up_catches_up_on_its_first_request(schema_fleet: SchemaFleet) -> None:
    sf = schema_fleet
    sf.groups.create("shop", ITEMS)
    sf.fleet.create("acme", "shop")
    sf.groups.add_migration("shop", "price", "ALTER TABLE items ADD COLUMN price REAL DEFAULT 9.5;")
    sf.groups.release("shop")  # acme is closed and behind
    sf.groups.add_migration("shop", "note", "ALTER TABLE items ADD COLUMN note TEXT;")
    snap = sf.rollouts.start("shop", RolloutOptions(dry_run=True))
    assert snap.wait(30) and snap.snapshot()["migrated"] == 1
    assert not sf.fleet.pool.is_open("acme")  # the dry run opened it in passing, changed nothing
    with catch_up.suppressed(), sf.fleet.lease("acme"):
        pass  # opened as a status read opens it: no catch-up then
    assert sf.fleet.pool.is_open("acme")
    assert sf.query("acme", "SELECT price FROM items") == [(9.5,)]
    assert sf.query("acme", f"SELECT name FROM {RECORD_TABLE}") == [("0001_price",)]


def test_a_tenant_closed_at_the_head_reopens_without_reading_its_record(
    schema_fleet: SchemaFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    sf = schema_fleet
    sf.groups.create("shop", ITEMS)
    sf.groups.add_migration("shop", "price", "ALTER TABLE items ADD COLUMN price REAL DEFAULT 9.5;")
    sf.groups.release("shop")
    sf.fleet.create("acme", "shop")
    sf.fleet.create("late", "shop")
    assert sf.query("acme", "SELECT price FROM items") == [(9.5,)]
    sf.fleet.pool.discard("acme")
    read: list[str] = []

    def reading(session: SchemaSession) -> list[Applied]:
        read.append("record")
        return migrations.applied(session)

    monkeypatch.setattr(catch_up, "applied", reading)

    assert sf.query("acme", "SELECT price FROM items") == [(9.5,)]
    assert read == [], "no head moved since it closed: it is at the head"

    # a head that moved while it was closed: read and caught up, as ever
    sf.fleet.pool.discard("acme")
    sf.groups.add_migration("shop", "note", "ALTER TABLE items ADD COLUMN note TEXT DEFAULT 'n';")
    sf.groups.release("shop")
    assert sf.query("acme", "SELECT price, note FROM items") == [(9.5, "n")]
    assert read == ["record"]
    # replaced while closed (a restore, an import): forgotten, read again
    sf.fleet.pool.discard("acme")
    sf.fleet.replace("acme", sf.fleet.layout.tenant_path("late"), "import")
    assert sf.query("acme", "SELECT price FROM items") == [(9.5,)]
    assert read == ["record", "record"]
