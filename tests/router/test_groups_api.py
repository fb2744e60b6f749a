"""The admin API of schema groups, through the real app in-process."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import apsw

from tests.support.app import ADMIN, InProcess, bearer, in_process

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
        "head": None,
        "pending": 0,
        "tables": ["items"],
        "rollout": None,
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
    for sql in ("", " \n-- to do\n"):
        empty = post(app, "/v1/admin/groups/shop/migrations", {"name": "later", "sql": sql}, 400)
        assert (
            empty["error"]["code"] == "invalid_migration" and "no SQL statement" in empty["error"]["message"]
        )
    again = post(app, "/v1/admin/groups/shop/migrations", {"name": "price", "sql": "SELECT 1;"}, 400)
    assert again["error"]["code"] == "invalid_migration" and "already has a migration named 'price'" in str(
        again
    )
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


def test_a_stopped_rollout_is_resumed_or_aborted_through_the_api(app: InProcess) -> None:
    post(
        app,
        "/v1/admin/groups",
        {"name": "g", "schema": "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT);"},
        201,
    )
    for tenant in ("a", "b", "c"):
        app.create(tenant, "g")
    assert app.query("b", "ALTER TABLE items ADD COLUMN price REAL").status_code == 200
    post(
        app,
        "/v1/admin/groups/g/migrations",
        {"name": "price", "sql": "ALTER TABLE items ADD COLUMN price REAL"},
        201,
    )
    started = post(app, "/v1/admin/groups/g/rollouts", {"max_failures": 1, "concurrency": 1}, 202)
    assert started["dry_run"] is False
    stopped = finished(app, "g", started["id"])
    assert (stopped["state"], stopped["migrated_tenants"], stopped["failed"]) == ("stopped", ["a"], 1)
    info = get(app, "/v1/admin/groups/g")
    assert (info["released"], info["head"], info["migrations"][0]["released"]) == (0, None, False)
    assert (info["rollout"]["id"], info["rollout"]["state"]) == (started["id"], "stopped")
    assert "failures" not in info["rollout"]
    rows = app.query("c", "SELECT price FROM items")
    assert rows.status_code == 400 and "no such column: price" in rows.json()["error"]["message"]

    path = f"/v1/admin/groups/g/rollouts/{started['id']}"
    assert post(app, path + "/resume", {"concurrency": 0}, 400)["error"]["code"] == "bad_request"
    assert post(app, path + "/resume", {"surprise": 1}, 400)["error"]["code"] == "bad_request"
    again = finished(app, "g", post(app, path + "/resume", {"max_failures": 1}, 202)["id"])
    assert (again["state"], again["resumed"], again["options"]["max_failures"]) == ("stopped", 1, 1)
    aborted = post(app, path + "/abort", {}, 200)
    assert (aborted["state"], aborted["migrated_tenants"]) == ("aborted", ["a"])  # b failed first again
    assert post(app, path + "/abort", {}, 409)["error"]["code"] == "rollout_finished"
    assert post(app, path + "/resume", {}, 409)["error"]["code"] == "rollout_finished"
    assert get(app, "/v1/admin/groups/g")["released"] == 0
    assert post(app, "/v1/admin/groups/g/rollouts/nope/abort", {}, 404)["error"]["code"] == "not_found"


def test_a_dry_run_says_it_is_one(app: InProcess) -> None:
    post(app, "/v1/admin/groups", {"name": "shop", "schema": ITEMS}, 201)
    app.create("a", "shop")
    post(app, "/v1/admin/groups/shop/migrations", {"name": "n", "sql": "CREATE INDEX n ON items(name);"}, 201)
    started = post(app, "/v1/admin/groups/shop/rollouts", {"dry_run": True}, 202)
    snap = finished(app, "shop", started["id"])
    assert (snap["dry_run"], snap["state"], snap["migrated"], snap["migrated_tenants"]) == (
        True,
        "completed",
        1,
        [],
    )
    (listed,) = get(app, "/v1/admin/groups/shop/rollouts")["rollouts"]
    assert listed["dry_run"] is True
    assert get(app, "/v1/admin/groups/shop")["migrations"][0]["released"] is False


def test_an_open_tenant_catches_up_on_its_next_hrana_request(app: InProcess) -> None:
    post(app, "/v1/admin/groups", {"name": "shop", "schema": ITEMS}, 201)
    app.create("a", "shop")
    token = app.token("a")

    def execute(sql: str) -> dict[str, Any]:
        body = {"requests": [{"type": "execute", "stmt": {"sql": sql}}, {"type": "close"}]}
        r = app.client.post("/v2/pipeline", json=body, headers=bearer(token))
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()["results"][0]
        return result

    assert execute("SELECT count(*) FROM items")["type"] == "ok"  # open in the pool
    post(
        app, "/v1/admin/groups/shop/migrations", {"name": "price", "sql": "ALTER TABLE items ADD price;"}, 201
    )
    # released without the rollout touching the tenant (as a group put back by disaster recovery)
    assert app.server.context.groups.release("shop") == ["0001_price"]
    assert app.server.fleet.pool.is_open("a")
    answer = execute("SELECT price FROM items")
    assert answer["type"] == "ok", answer
    assert answer["response"]["result"]["cols"][0]["name"] == "price"


def test_stop_resume_and_abort_take_the_same_bodies_and_answer_alike(app: InProcess) -> None:
    """Each takes an empty body or a JSON object (resume: with its options); an ended rollout is
    409 rollout_finished for all three, an unknown one 404."""

    def control(path: str, body: bytes, status: int) -> dict[str, Any]:
        r = app.client.post(path, content=body, headers=ADMIN)
        assert r.status_code == status, r.text
        answer: dict[str, Any] = r.json()
        return answer

    post(app, "/v1/admin/groups", {"name": "g", "schema": "CREATE TABLE items(id INTEGER PRIMARY KEY)"}, 201)
    for tenant in ("a", "b"):
        app.create(tenant, "g")
    assert app.query("b", "ALTER TABLE items ADD COLUMN price REAL").status_code == 200
    post(
        app,
        "/v1/admin/groups/g/migrations",
        {"name": "price", "sql": "ALTER TABLE items ADD COLUMN price REAL"},
        201,
    )
    rollout = post(app, "/v1/admin/groups/g/rollouts", {"max_failures": 1, "concurrency": 1}, 202)["id"]
    assert finished(app, "g", rollout)["state"] == "stopped"
    path = f"/v1/admin/groups/g/rollouts/{rollout}"
    for action in ("stop", "resume", "abort"):
        for body in (b"", b"{}"):
            assert (
                control(f"/v1/admin/groups/g/rollouts/nope/{action}", body, 404)["error"]["code"]
                == "not_found"
            )
        assert control(f"{path}/{action}", b'{"surprise": 1}', 400)["error"]["code"] == "bad_request"
        assert control(f"{path}/{action}", b"[", 400)["error"]["code"] == "bad_request"
    assert control(path + "/stop", b"", 200)["state"] == "stopped"  # already: answered as it is
    assert control(path + "/stop", b"{}", 200)["state"] == "stopped"
    assert control(path + "/resume", b"", 202)["resumed"] == 1
    assert finished(app, "g", rollout)["state"] == "stopped"
    assert control(path + "/resume", b" \n", 202)["resumed"] == 2
    assert finished(app, "g", rollout)["state"] == "stopped"
    assert control(path + "/abort", b"", 200)["state"] == "aborted"
    for action in ("stop", "resume", "abort"):
        for body in (b"", b"{}"):
            assert control(f"{path}/{action}", body, 409)["error"]["code"] == "rollout_finished"
    # a completed one, too
    assert app.query("b", "ALTER TABLE items DROP COLUMN price").status_code == 200
    done = post(app, "/v1/admin/groups/g/rollouts", {}, 202)["id"]
    assert finished(app, "g", done)["state"] == "completed"
    for action in ("stop", "resume", "abort"):
        for body in (b"", b"{}"):
            error = control(f"/v1/admin/groups/g/rollouts/{done}/{action}", body, 409)["error"]
            assert error["code"] == "rollout_finished" and "is completed" in error["message"], action
