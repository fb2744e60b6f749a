"""The admin API of schema groups, through the real app in-process."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import apsw

from tests.support.app import ADMIN, InProcess, in_process

ITEMS = (
    "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL); INSERT INTO items VALUES (1, 'seed');"
)


def post(app: InProcess, path: str, body: dict[str, Any], status: int) -> dict[str, Any]:
    r = app.client.post(path, json=body, headers=ADMIN)
    assert r.status_code == status, r.text
    result: dict[str, Any] = r.json()
    return result


def get(app: InProcess, path: str, status: int = 200) -> dict[str, Any]:
    r = app.client.get(path, headers=ADMIN)
    assert r.status_code == status, r.text
    result: dict[str, Any] = r.json()
    return result


def finished(app: InProcess, group: str, rollout: str) -> dict[str, Any]:
    for _ in range(1000):
        snap = get(app, f"/v1/admin/groups/{group}/rollouts/{rollout}")
        if snap["state"] != "running":
            return snap
        time.sleep(0.01)
    raise AssertionError("rollout did not finish")


def test_groups_are_created_from_sql_or_a_template_file(app: InProcess, tmp_path: Path) -> None:
    assert post(app, "/v1/admin/groups", {"name": "shop", "schema": ITEMS}, 201) == {
        "name": "shop",
        "migrations": [],
        "released": 0,
        "pending": 0,
    }
    template = tmp_path / "t.db"
    conn = apsw.Connection(str(template))
    conn.execute("CREATE TABLE notes(body TEXT); INSERT INTO notes VALUES ('hello')")
    conn.close()
    encoded = base64.b64encode(template.read_bytes()).decode()
    post(app, "/v1/admin/groups", {"name": "notes", "template": encoded}, 201)
    assert [g["name"] for g in get(app, "/v1/admin/groups")["groups"]] == ["notes", "shop"]
    app.create("acme", "notes")
    assert app.query("acme", "SELECT * FROM notes").json()["rows"] == [["hello"]]
    assert get(app, "/v1/admin/tenants/acme")["group"] == "notes"

    errors: list[tuple[dict[str, Any], int, str]] = [
        ({"name": "shop", "schema": ITEMS}, 409, "group_exists"),
        ({"name": "Bad Name"}, 400, "bad_request"),
        ({"name": "x", "schema": "CREATE TABLE oops(", "template": encoded}, 400, "bad_request"),
        ({"name": "x", "schema": "CREATE TABLE oops("}, 400, "migration_failed"),
        ({"name": "x", "template": base64.b64encode(b"not a database").decode()}, 400, "bad_request"),
        ({"name": "x", "surprise": 1}, 400, "bad_request"),
    ]
    for body, status, code in errors:
        assert post(app, "/v1/admin/groups", body, status)["error"]["code"] == code, body
    assert get(app, "/v1/admin/groups/x", 404)["error"]["code"] == "not_found"
    r = app.client.post("/v1/admin/tenants", json={"id": "lost", "group": "x"}, headers=ADMIN)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")


def test_migrations_are_tried_before_they_are_registered(app: InProcess) -> None:
    post(app, "/v1/admin/groups", {"name": "shop", "schema": ITEMS}, 201)
    bad = post(
        app, "/v1/admin/groups/shop/migrations", {"name": "oops", "sql": "ALTER TABLE nope ADD x;"}, 400
    )
    assert bad["error"]["code"] == "migration_failed" and "no such table: nope" in bad["error"]["message"]
    added = post(
        app, "/v1/admin/groups/shop/migrations", {"name": "price", "sql": "ALTER TABLE items ADD price;"}, 201
    )
    assert (added["name"], added["kind"]) == ("0001_price", "sql")
    stale = post(app, "/v1/admin/groups/shop/migrations", {"name": "0001_again", "sql": "SELECT 1;"}, 400)
    assert stale["error"]["code"] == "invalid_migration"
    info = get(app, "/v1/admin/groups/shop")
    assert (info["released"], info["pending"]) == (0, 1)
    assert "price" in get(app, "/v1/admin/groups/shop/schema")["sql"]
    assert "price" not in get(app, "/v1/admin/groups/shop/schema?released=1")["sql"]


def test_plan_sync_and_rollout_through_the_api(app: InProcess) -> None:
    post(app, "/v1/admin/groups", {"name": "shop", "schema": ITEMS}, 201)
    for tenant in ("a", "b", "c"):
        app.create(tenant, "shop")
    target = "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL CHECK (name != ''), tag TEXT);"
    planned = post(app, "/v1/admin/groups/shop/plan", {"schema": target}, 200)
    assert 'ALTER TABLE "_sqlfleet_new_items" RENAME TO "items"' in planned["sql"]
    assert planned["blocked"] == []
    for_tenant = post(app, "/v1/admin/groups/shop/plan", {"schema": target, "tenant": "a"}, 200)
    assert for_tenant["sql"] == planned["sql"]
    blocked = post(app, "/v1/admin/groups/shop/plan", {"schema": "CREATE TABLE other(x);"}, 200)
    assert blocked["kept"] == ["table items"]

    added = post(
        app, "/v1/admin/groups/shop/migrations", {"name": "tags", "sql": target, "kind": "sync"}, 201
    )
    assert added["kind"] == "sync"
    started = post(app, "/v1/admin/groups/shop/rollouts", {"concurrency": 2}, 202)
    snap = finished(app, "shop", started["id"])
    assert (snap["state"], snap["migrated"], snap["failed"]) == ("completed", 3, 0)
    assert app.query("a", "SELECT id, name, tag FROM items").json()["rows"] == [[1, "seed", None]]
    status = get(app, "/v1/admin/groups/shop/tenants/a")
    assert ([a["name"] for a in status["applied"]], status["pending"]) == (["0001_tags"], [])
    history = get(app, "/v1/admin/groups/shop/rollouts")["rollouts"]
    assert [r["id"] for r in history] == [started["id"]]
    conflict = post(app, "/v1/admin/groups/shop/rollouts", {"canary": 0}, 400)
    assert conflict["error"]["code"] == "bad_request"


def test_rollout_state_survives_a_restart(tmp_path: Path) -> None:
    with in_process(tmp_path / "data") as app:
        post(app, "/v1/admin/groups", {"name": "shop", "schema": ITEMS}, 201)
        app.create("a", "shop")
        post(
            app,
            "/v1/admin/groups/shop/migrations",
            {"name": "n", "sql": "CREATE INDEX n ON items(name);"},
            201,
        )
        rollout = post(app, "/v1/admin/groups/shop/rollouts", {}, 202)["id"]
        before = finished(app, "shop", rollout)
    with in_process(tmp_path / "data") as app:
        after = get(app, f"/v1/admin/groups/shop/rollouts/{rollout}")
        assert after == before
        assert get(app, "/v1/admin/groups/shop/rollouts/nope", 404)["error"]["code"] == "not_found"
