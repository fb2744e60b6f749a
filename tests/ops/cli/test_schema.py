"""`sqlfleet group ...` and `sqlfleet migrate` against a real server process on loopback."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import as_json, cli, ok
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
    out = ok(cli(server, "migrate", "shop"))
    assert "completed" in out
    status = as_json(cli(server, "group", "status", "shop", "t3", "--json"))
    names = ["0001_price", "0002_add_a_note_column", "0003_names_required"]
    assert [a["name"] for a in status["applied"]] == names and status["pending"] == []
    shown = as_json(cli(server, "group", "show", "shop", "--json"))
    assert [m["released"] for m in shown["migrations"]] == [True, True, True]
    history = as_json(cli(server, "group", "rollouts", "shop", "--json"))["rollouts"]
    assert [r["state"] for r in history] == ["completed", "stopped", "completed"]
    assert "shop" in ok(cli(server, "group", "list"))


def test_migrate_fails_with_the_failed_tenants(server: ServerProcess, tmp_path: Path) -> None:
    schema = tmp_path / "schema.sql"
    schema.write_text("CREATE TABLE kv(k TEXT, v TEXT);")
    ok(cli(server, "group", "create", "kv", "--schema", str(schema)))
    for tenant in ("k1", "k2"):
        ok(cli(server, "tenant", "create", tenant, "--group", "kv"))
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
