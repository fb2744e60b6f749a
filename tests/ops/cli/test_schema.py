"""`sqlfleet group ...` and `sqlfleet migrate` against a real server process on loopback."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.cli import as_json, cli, fails, ok
from tests.support.server import ServerProcess, run_server

ALEMBIC_REVISION = '''
    """add a note column"""
    import sqlalchemy as sa
    from alembic import op

    revision = "n1"
    down_revision = None


    def upgrade() -> None:
        op.add_column("items", sa.Column("note", sa.Text, nullable=True))
        op.execute("UPDATE items SET note = 'from alembic'")
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with run_server(tmp_path_factory.mktemp("schema-cli") / "data") as running:
        yield running


def group(server: ServerProcess, tmp_path: Path, name: str, schema_sql: str, *tenants: str) -> None:
    """A group made with the CLI from `schema_sql`, and `tenants` created in it."""
    schema = tmp_path / "schema.sql"
    schema.write_text(schema_sql)
    ok(cli(server, "group", "create", name, "--schema", str(schema)))
    for tenant in tenants:
        ok(cli(server, "tenant", "create", tenant, "--group", name))


def test_group_lifecycle_and_migrate(server: ServerProcess, tmp_path: Path) -> None:
    schema = tmp_path / "schema.sql"
    schema.write_text(
        "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT); INSERT INTO items VALUES (1, 'a');"
    )
    assert (
        as_json(cli(server, "group", "create", "shop", "--schema", str(schema), "--json"))["name"] == "shop"
    )
    for tenant in ("t1", "t2", "t3"):
        ok(cli(server, "tenant", "create", tenant, "--group", "shop"))

    first = tmp_path / "0001_price.sql"
    first.write_text("ALTER TABLE items ADD COLUMN price REAL NOT NULL DEFAULT 1;")
    added = as_json(cli(server, "group", "add-migration", "shop", str(first), "--json"))["added"]
    assert [m["name"] for m in added] == ["0001_price"]
    versions = tmp_path / "alembic" / "versions"
    versions.mkdir(parents=True)
    (versions / "n1_note.py").write_text(textwrap.dedent(ALEMBIC_REVISION))
    added = as_json(cli(server, "group", "add-alembic", "shop", str(tmp_path / "alembic"), "--json"))["added"]
    assert [(m["name"], m["kind"], m["alembic_revision"]) for m in added] == [
        ("0002_add_a_note_column", "alembic", "n1")
    ]
    again = as_json(cli(server, "group", "add-alembic", "shop", str(tmp_path / "alembic"), "--json"))
    assert again == {"added": []}  # nothing new: the revision is known by its source checksum

    target = tmp_path / "target.sql"
    target.write_text(ok(cli(server, "group", "schema", "shop")).replace("name TEXT", "name TEXT NOT NULL"))
    plan = ok(cli(server, "group", "plan", "shop", str(target)))
    assert 'ALTER TABLE "_sqlfleet_new_items" RENAME TO "items";' in plan
    ok(cli(server, "group", "sync", "shop", str(target), "--slug", "names_required"))

    dry = as_json(cli(server, "migrate", "shop", "--dry-run", "--json"))
    assert (dry["state"], dry["migrated"], dry["failed"]) == ("completed", 3, 0)
    assert as_json(cli(server, "group", "status", "shop", "t1", "--json"))["applied"] == []
    canary = as_json(cli(server, "migrate", "shop", "--canary", "1", "--json"))
    assert (canary["state"], canary["migrated"]) == ("stopped", 1)
    migrated = cli(server, "migrate", "shop")
    out = ok(migrated)
    assert "completed" in out
    assert "migrate shop" not in out and "migrate shop" in migrated.stderr  # the bar: on stderr
    status = as_json(cli(server, "group", "status", "shop", "t3", "--json"))
    names = ["0001_price", "0002_add_a_note_column", "0003_names_required"]
    assert [a["name"] for a in status["applied"]] == names and status["pending"] == []
    shown = as_json(cli(server, "group", "show", "shop", "--json"))
    assert [m["released"] for m in shown["migrations"]] == [True, True, True]
    history = as_json(cli(server, "group", "rollouts", "shop", "--json"))["rollouts"]
    assert [r["state"] for r in history] == ["completed", "stopped", "completed"]
    assert "shop" in ok(cli(server, "group", "list"))


def test_migrate_fails_with_the_failed_tenants(server: ServerProcess, tmp_path: Path) -> None:
    group(server, tmp_path, "kv", "CREATE TABLE kv(k TEXT, v TEXT);", "k1", "k2")
    with server.client() as http:
        token = http.post("/v1/admin/tenants/k2/tokens", json={}).json()["token"]
        body = {"statements": [{"sql": "INSERT INTO kv VALUES ('x', '1')"}] * 2}
        r = http.post("/v1/tenants/k2/batch", json=body, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
    unique = tmp_path / "unique.sql"
    unique.write_text("CREATE UNIQUE INDEX kv_k ON kv(k);")
    ok(cli(server, "group", "add-migration", "kv", str(unique)))
    result = cli(server, "migrate", "kv")
    assert result.exit_code == 1
    assert "failed k2: tenant k2: 0001_unique: UNIQUE constraint failed: kv.k" in result.stdout
    assert "rollout" in result.stderr and "1 failed" in result.stderr


def test_create_shows_the_group_and_what_to_do_next(server: ServerProcess, tmp_path: Path) -> None:
    schema = tmp_path / "schema.sql"
    schema.write_text("CREATE TABLE users(id INTEGER PRIMARY KEY); CREATE TABLE notes(body TEXT);")
    out = " ".join(ok(cli(server, "group", "create", "fresh", "--schema", str(schema))).split())
    assert "group fresh" in out
    assert "template tables: notes, users" in out
    assert "released head: none (0 of 0 migrations)" in out
    assert "sqlfleet group add-migration fresh FILE.sql" in out and "sqlfleet migrate fresh" in out
    assert "template tables: none" in ok(cli(server, "group", "create", "empty"))
    ok(cli(server, "tenant", "create", "e1", "--group", "empty"))
    assert "tenant e1 has no migrations to apply: group empty has none yet" in ok(
        cli(server, "group", "status", "empty", "e1")
    )
    assert "group empty has no rollouts" in ok(cli(server, "group", "rollouts", "empty"))


def test_dry_runs_say_what_would_happen(server: ServerProcess, tmp_path: Path) -> None:
    group(server, tmp_path, "dry", "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT);", "d1", "d2")
    index = tmp_path / "index.sql"
    index.write_text("CREATE INDEX items_name ON items(name);")
    ok(cli(server, "group", "add-migration", "dry", str(index)))
    out = ok(cli(server, "migrate", "dry", "--dry-run"))
    assert "dry run: 2 would migrate, 0 already current, 0 would fail; nothing was changed" in out
    assert "┃ would migrate ┃" in out and "┃ migrated ┃" not in out  # the table says so too
    listing = ok(cli(server, "group", "rollouts", "dry"))
    assert "dry run" in listing and "2 (would)" in listing
    shown = " ".join(ok(cli(server, "group", "show", "dry")).split())
    assert (
        "0001_index │ sql │ no" in shown and "1 pending: roll them out with `sqlfleet migrate dry`" in shown
    )


def test_a_stopped_rollout_is_paused_until_resumed_or_aborted(server: ServerProcess, tmp_path: Path) -> None:
    group(server, tmp_path, "g", "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT);", "ga", "gb", "gc")
    with server.client() as http:
        token = http.post("/v1/admin/tenants/gb/tokens", json={}).json()["token"]

        def query(sql: str) -> httpx.Response:
            return http.post(
                "/v1/tenants/gb/query", json={"sql": sql}, headers={"Authorization": f"Bearer {token}"}
            )

        assert query("ALTER TABLE items ADD COLUMN price REAL").status_code == 200
        price = tmp_path / "price.sql"
        price.write_text("ALTER TABLE items ADD COLUMN price REAL;")
        ok(cli(server, "group", "add-migration", "g", str(price)))
        result = cli(server, "migrate", "g", "--max-failures", "1", "--concurrency", "1")
        fails(result, "rollout", "stopped", "1 failed", "max_failures 1", alone=False)
        assert "nothing released: `sqlfleet migrate g --resume` goes on" in " ".join(result.stdout.split())
        shown = " ".join(ok(cli(server, "group", "show", "g")).split())
        assert "0001_price │ sql │ no" in shown and "released head: none" in shown
        assert "stopped (stopped after 1 failures (max_failures 1))" in shown and "--abort" in shown

        assert query("ALTER TABLE items DROP COLUMN price").status_code == 200  # the operator's fix
        out = " ".join(ok(cli(server, "migrate", "g", "--resume")).split())
        assert "completed" in out and "released up to 0001_price" in out
        assert query("SELECT price FROM items").status_code == 200
        assert "released head: 0001_price" in " ".join(ok(cli(server, "group", "show", "g")).split())
        fails(cli(server, "migrate", "g", "--abort"), "is completed: nothing to resume or abort")
        fails(cli(server, "migrate", "g", "--resume", "--abort"), "not both")

        second = tmp_path / "second.sql"
        second.write_text("CREATE TABLE extra(x);")
        ok(cli(server, "group", "add-migration", "g", str(second)))
        ok(cli(server, "migrate", "g", "--canary", "1", "--concurrency", "1"))
        aborted = " ".join(ok(cli(server, "migrate", "g", "--abort")).split())
        assert "aborted: nothing released; the 1 tenant(s) it migrated keep the migration" in aborted
        assert "migrated (kept, ahead of the released head): ga" in aborted
        kinds = ok(cli(server, "group", "rollouts", "g"))
        assert "canary 1" in kinds and "aborted" in kinds
