"""Lazy catch-up: a tenant opened behind its group's released head is migrated before its first
request; new tenants of a group start as a copy of the template."""

from __future__ import annotations

import logging

import pytest

from schema_sync.errors import GroupNotFound
from schema_sync.migrations import RECORD_TABLE
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


def test_failed_catch_up_serves_the_tenant_unchanged(
    schema_fleet: SchemaFleet, caplog: pytest.LogCaptureFixture
) -> None:
    sf = schema_fleet
    sf.groups.create("shop", ITEMS)
    sf.fleet.create("acme", "shop")
    sf.fleet.create("dup", "shop")
    sf.query("dup", "INSERT INTO items VALUES (2, 'seed')")  # breaks the unique index below
    sf.fleet.pool.discard("dup")
    sf.groups.add_migration("shop", "unique_names", "CREATE UNIQUE INDEX items_name ON items(name);")
    sf.groups.release("shop")
    with caplog.at_level(logging.ERROR, logger="schema_sync.catch_up"):
        assert sf.query("dup", "SELECT count(*) FROM items") == [(2,)]
    assert "catch-up of tenant dup to group shop failed" in caplog.text
    assert "UNIQUE constraint failed" in caplog.text
    assert sf.query("dup", "SELECT count(*) FROM sqlite_schema WHERE type = 'index'") == [(0,)]
    assert sf.query("acme", "SELECT name FROM sqlite_schema WHERE type = 'index'") == [("items_name",)]
