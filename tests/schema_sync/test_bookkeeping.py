"""Server bookkeeping in a tenant file (`_sqlfleet_migrations`) against a hostile tenant: tenant SQL
cannot change, replace or shadow it through any protocol, and what the server reads there it
checks first and reads within a deadline — a broken record costs that tenant a clear error, fast,
and nobody else anything."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from schema_sync.errors import InternalTimeout, RecordBroken
from schema_sync.migrations import RECORD_TABLE, applied, create_record, has_record
from tenants.sandbox import SandboxRefused
from tests.support.app import ADMIN, InProcess, bearer, in_process
from tests.support.schema import OpenTenant

ITEMS = "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT); INSERT INTO items VALUES (1, 'seed');"
# Endless for any practical purpose (about 15 s here): the server must never evaluate it.
SLOW = "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 100000000)"
SLOW_ROWS = f"{SLOW} SELECT 'n', 'c', 'a' FROM c WHERE i < 0"
SLOW_VIEW = f"CREATE VIEW {RECORD_TABLE}(name, checksum, applied_at) AS {SLOW_ROWS}"
# Bounds generous for a busy machine, far below what evaluating SLOW takes.
FAST = 5.0


def admin(app: InProcess, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    r = app.client.request(method, path, json=body, headers=ADMIN)
    assert r.status_code == status, r.text
    return r.json()


def roll_out(app: InProcess, name: str, sql: str) -> dict[str, Any]:
    admin(app, "POST", "/v1/admin/groups/shop/migrations", {"name": name, "sql": sql}, 201)
    rollout = admin(app, "POST", "/v1/admin/groups/shop/rollouts", {}, 202)["id"]
    for _ in range(2000):
        snap: dict[str, Any] = admin(app, "GET", f"/v1/admin/groups/shop/rollouts/{rollout}")
        if snap["state"] != "running":
            return snap
        time.sleep(0.01)
    raise AssertionError("the rollout did not finish")


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[InProcess]:
    """A server with group shop, tenants acme and other in it, one migration rolled out."""
    with in_process(tmp_path / "data", backups=False) as app:
        admin(app, "POST", "/v1/admin/groups", {"name": "shop", "schema": ITEMS}, 201)
        app.create("acme", "shop")
        app.create("other", "shop")
        assert roll_out(app, "price", "ALTER TABLE items ADD COLUMN price REAL;")["migrated"] == 2
        yield app


def record(app: InProcess, tenant: str = "acme") -> list[Any]:
    r = app.query(tenant, f"SELECT name, checksum FROM {RECORD_TABLE}")
    assert r.status_code == 200, r.text
    rows: list[Any] = r.json()["rows"]
    return rows


# What a rw token tried (finding 4 and its kind): each refused, whatever the protocol.
ATTEMPTS = [
    f"DELETE FROM {RECORD_TABLE}",
    f"UPDATE {RECORD_TABLE} SET checksum = 'forged'",
    f"INSERT INTO {RECORD_TABLE} VALUES ('0002_forged', 'x', 'y')",
    f"DROP TABLE {RECORD_TABLE}",
    f"ALTER TABLE {RECORD_TABLE} RENAME TO kept",
    "ALTER TABLE items RENAME TO _sqlfleet_items",
    f"CREATE TEMP VIEW {RECORD_TABLE}(name, checksum, applied_at) AS SELECT 'n', 'c', 'a'",
    f"CREATE TEMP TABLE {RECORD_TABLE}(name, checksum, applied_at)",
    f"CREATE INDEX by_sum ON {RECORD_TABLE}(checksum)",
    f"CREATE TRIGGER on_record AFTER INSERT ON {RECORD_TABLE} BEGIN SELECT 1; END",
]


@pytest.mark.parametrize("sql", ATTEMPTS)
def test_rest_refuses_every_write_replacement_and_shadow(shop: InProcess, sql: str) -> None:
    token = shop.token("acme")
    before = record(shop)
    r = shop.client.post("/v1/tenants/acme/query", json={"sql": sql}, headers=bearer(token))
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error["code"] == "sql_not_allowed" and "_sqlfleet_" in error["message"], error
    batch = [{"sql": "INSERT INTO items(name) VALUES ('x')"}, {"sql": sql}]
    r = shop.client.post("/v1/tenants/acme/batch", json={"statements": batch}, headers=bearer(token))
    assert r.status_code == 403 and r.json()["error"]["index"] == 1, r.text
    assert record(shop) == before
    assert shop.query("acme", "SELECT count(*) FROM items").json()["rows"] == [[1]]


@pytest.mark.parametrize("sql", ATTEMPTS)
def test_hrana_refuses_every_write_replacement_and_shadow(shop: InProcess, sql: str) -> None:
    token = shop.token("acme")
    before = record(shop)
    requests = [
        {"type": "execute", "stmt": {"sql": sql}},
        {"type": "batch", "batch": {"steps": [{"stmt": {"sql": sql}}]}},
        {"type": "sequence", "sql": f"SELECT 1; {sql}"},
        {"type": "close"},
    ]
    r = shop.client.post("/v2/pipeline", json={"baton": None, "requests": requests}, headers=bearer(token))
    assert r.status_code == 200, r.text
    execute, batch, sequence, _ = r.json()["results"]
    errors = [execute["error"], batch["response"]["result"]["step_errors"][0], sequence["error"]]
    for error in errors:
        assert error["code"] == "SQLITE_AUTH" and "_sqlfleet_" in error["message"], error
    steps = {"steps": [{"stmt": {"sql": sql}}]}
    r = shop.client.post("/v3/cursor", json={"baton": None, "batch": steps}, headers=bearer(token))
    entries = [json.loads(line) for line in r.text.splitlines()[1:]]
    assert entries[-1]["type"] == "step_error" and entries[-1]["error"]["code"] == "SQLITE_AUTH", entries
    assert record(shop) == before


def test_a_deleted_record_no_longer_breaks_the_next_rollout(shop: InProcess) -> None:
    # the quoted instance: DELETE FROM the record, then the next rollout failed for that tenant
    # with "duplicate column name"; the DELETE is refused now, so the rollout goes through
    token = shop.token("acme")
    r = shop.client.post(
        "/v1/tenants/acme/query", json={"sql": f"DELETE FROM {RECORD_TABLE}"}, headers=bearer(token)
    )
    assert r.status_code == 403, r.text
    snap = roll_out(shop, "tag", "ALTER TABLE items ADD COLUMN tag TEXT;")
    assert (snap["migrated"], snap["failed"]) == (2, 0), snap
    assert [name for name, _ in record(shop)] == ["0001_price", "0002_tag"]


def break_record(app: InProcess, tenant: str, sql: str) -> None:
    """What a tenant could do to its file before the sandbox guarded bookkeeping (the server
    opens such files still): done here through the server's own trusted path."""
    with app.server.fleet.lease(tenant) as handle:
        assert handle.conn is not None and handle.sandbox is not None
        handle.sandbox.trusted = True
        try:
            handle.conn.execute(sql)
        finally:
            handle.sandbox.trusted = False


def test_a_record_replaced_by_a_slow_view_is_refused_at_once(
    shop: InProcess, caplog: pytest.LogCaptureFixture
) -> None:
    # the quoted instance: drop table; create view <slow recursive CTE>. Admin tenant-status took
    # 27.8 s, lazy catch-up 12.3 s, rollouts read it the same way, none with a time limit.
    break_record(shop, "acme", f"DROP TABLE {RECORD_TABLE}; {SLOW_VIEW}")
    started = time.monotonic()
    status = admin(shop, "GET", "/v1/admin/groups/shop/tenants/acme", status=409)
    assert time.monotonic() - started < FAST
    assert status["error"]["code"] == "migration_record_broken"
    assert "is a view, not the table the server made" in status["error"]["message"]
    assert admin(shop, "GET", "/v1/admin/groups/shop/tenants/other")["error"] is None  # others unaffected

    started = time.monotonic()
    snap = roll_out(shop, "tag", "ALTER TABLE items ADD COLUMN tag TEXT;")
    assert time.monotonic() - started < 2 * FAST
    assert (snap["migrated"], snap["failed"]) == (1, 1), snap
    assert snap["failures"][0]["tenant"] == "acme"
    assert snap["failures"][0]["code"] == "migration_record_broken"

    # lazy catch-up on reopen: the tenant is served as it is, quickly, the failure logged
    admin(
        shop,
        "POST",
        "/v1/admin/groups/shop/migrations",
        {"name": "note", "sql": "ALTER TABLE items ADD note;"},
        201,
    )
    shop.server.context.groups.release("shop")
    shop.server.fleet.pool.discard("acme")
    shop.server.fleet.pool.discard("other")
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="schema_sync.catch_up"):
        assert shop.query("acme", "SELECT name FROM items").json()["rows"] == [["seed"]]
    assert time.monotonic() - started < FAST
    assert "catch-up of tenant acme to group shop failed" in caplog.text
    assert shop.query("other", "SELECT note FROM items").json()["rows"] == [[None]]  # caught up


@pytest.mark.parametrize(
    "sql",
    [
        f"CREATE TRIGGER slow AFTER INSERT ON {RECORD_TABLE} BEGIN SELECT 1; END",
        f"CREATE INDEX by_sum ON {RECORD_TABLE}(checksum)",
        f"DROP TABLE {RECORD_TABLE}; CREATE TABLE {RECORD_TABLE}(name, checksum, applied_at)",
        f"DROP TABLE {RECORD_TABLE}; CREATE TABLE {RECORD_TABLE}(name TEXT PRIMARY KEY, checksum TEXT)",
    ],
)
def test_other_broken_records_are_refused_too(shop: InProcess, sql: str) -> None:
    break_record(shop, "acme", sql)
    status = admin(shop, "GET", "/v1/admin/groups/shop/tenants/acme", status=409)
    assert status["error"]["code"] == "migration_record_broken", status


def test_bookkeeping_is_read_as_main_not_through_a_temp_shadow(open_tenant: OpenTenant) -> None:
    tenant = open_tenant()
    create_record(tenant)
    # a shadow made before the rule (TEMP objects live as long as the pooled connection)
    tenant.internal(f"CREATE TEMP VIEW {RECORD_TABLE}(name, checksum, applied_at) AS {SLOW_ROWS}")
    started = time.monotonic()
    assert applied(tenant) == []
    assert time.monotonic() - started < FAST


def test_schema_reads_do_not_go_through_tables_named_like_pragmas(open_tenant: OpenTenant) -> None:
    from schema_sync.schema import read_schema

    tenant = open_tenant(
        "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT);"
        " CREATE TABLE pragma_table_list(schema, name, type, ncol, wr, strict);"
        " INSERT INTO pragma_table_list VALUES ('main', 'items', 'shadow', 0, 0, 0);"
        ' CREATE TEMP TABLE pragma_table_xinfo(name, type, "notnull", dflt_value, pk, hidden);'
    )
    schema = read_schema(tenant.query)
    assert [c.name for c in schema.objects["items"].columns] == ["id", "name"]


def test_internal_statements_have_a_deadline(open_tenant: OpenTenant) -> None:
    tenant = open_tenant()
    tenant.timeout = 0.5
    started = time.monotonic()
    with pytest.raises(InternalTimeout, match=r"took longer than 0\.5 s") as info:
        tenant.internal(f"{SLOW} SELECT count(*) FROM c")
    assert time.monotonic() - started < FAST
    assert info.value.status == 504
    assert tenant.internal("SELECT 1") == [(1,)]  # the next statement has its own deadline


def test_a_broken_record_is_reported_not_read(open_tenant: OpenTenant) -> None:
    tenant = open_tenant()
    tenant.internal(SLOW_VIEW)
    with pytest.raises(RecordBroken, match="is a view"):
        applied(tenant)


def test_a_tenant_may_drop_its_own_trigger_or_index_from_the_record(shop: InProcess) -> None:
    # left by a server from before the rule: removing them only repairs the record
    break_record(shop, "acme", f"CREATE TRIGGER slow AFTER INSERT ON {RECORD_TABLE} BEGIN SELECT 1; END")
    break_record(shop, "acme", f"CREATE INDEX by_sum ON {RECORD_TABLE}(checksum)")
    admin(shop, "GET", "/v1/admin/groups/shop/tenants/acme", status=409)
    token = shop.token("acme")
    for sql in ("DROP TRIGGER slow", "DROP INDEX by_sum"):
        r = shop.client.post("/v1/tenants/acme/query", json={"sql": sql}, headers=bearer(token))
        assert r.status_code == 200, r.text
    assert admin(shop, "GET", "/v1/admin/groups/shop/tenants/acme")["error"] is None


def test_a_record_written_as_an_older_server_wrote_it_is_trusted(open_tenant: OpenTenant) -> None:
    # same table, other text: not the one-statement check's exact match, so the full check runs
    tenant = open_tenant()
    tenant.internal(
        f"CREATE TABLE {RECORD_TABLE}(name TEXT PRIMARY KEY,checksum TEXT NOT NULL,"
        " applied_at TEXT NOT NULL) WITHOUT ROWID"
    )
    tenant.internal(f"INSERT INTO {RECORD_TABLE} VALUES ('0001_x', 'c', 'a')")
    assert has_record(tenant) and [a.name for a in applied(tenant)] == ["0001_x"]
    plain = open_tenant(name="plain")
    create_record(plain)
    assert has_record(plain) and applied(plain) == []
    assert not has_record(open_tenant(name="none"))


def test_tenant_sql_is_sandboxed_again_after_internal_statements(open_tenant: OpenTenant) -> None:
    tenant = open_tenant(ITEMS)
    create_record(tenant)
    write = f"INSERT INTO {RECORD_TABLE} VALUES ('0001_x', 'c', 'a')"
    with pytest.raises(SandboxRefused):
        tenant.conn.execute(write).fetchall()  # refused, then cached: refused on each run
    read = tenant.conn.execute("SELECT count(*) FROM items").fetchall  # cached, prepared under it
    assert applied(tenant) == [] and read() == [(1,)]
    with pytest.raises(apsw.SQLError):
        tenant.internal("SELECT * FROM nowhere")  # a failing one restores it too
    for _ in range(2):
        with pytest.raises(SandboxRefused):
            tenant.conn.execute(write).fetchall()
        with pytest.raises(SandboxRefused):
            tenant.conn.execute("ATTACH ':memory:' AS x").fetchall()
    assert tenant.conn.execute("SELECT count(*) FROM items").fetchall() == [(1,)]
