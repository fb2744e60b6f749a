"""The clients' migrators and batches against a real server (issue 12, items 3 and 4):
@libsql/client's `migrate()` (it turns foreign keys off around the migration), drizzle-orm's
libsql migrator (which calls it), and `batch()` of exactly `max_batch_statements` statements
(which the client wraps in BEGIN/COMMIT/ROLLBACK steps). node/migrations.mjs drives the client
and asserts the results; these tests check what it observed."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.hrana import Served
from tests.support.server import run_server

MAX_STATEMENTS = 40  # small, so a batch at the limit is quick; the logic is the same at 1000

# A drizzle-kit style migration folder: the journal, then SQL files split at breakpoints.
DRIZZLE = {
    "0000_init.sql": (
        "CREATE TABLE d_users (id INTEGER PRIMARY KEY, email TEXT NOT NULL);\n"
        "--> statement-breakpoint\n"
        "CREATE TABLE d_posts (id INTEGER PRIMARY KEY, author INTEGER REFERENCES d_users(id), body TEXT);\n"
        "--> statement-breakpoint\n"
        "INSERT INTO d_users VALUES (1, 'a@example.com');\n"
        "--> statement-breakpoint\n"
        "INSERT INTO d_posts VALUES (1, 1, 'hello');\n"
    ),
    # drizzle-kit's table rebuild, as it writes one for SQLite (PRAGMA foreign_keys off around it)
    "0001_rebuild.sql": (
        "PRAGMA foreign_keys=OFF;--> statement-breakpoint\n"
        "CREATE TABLE __new_d_users (id INTEGER PRIMARY KEY, email TEXT NOT NULL, name TEXT DEFAULT '');\n"
        "--> statement-breakpoint\n"
        "INSERT INTO __new_d_users (id, email) SELECT id, email FROM d_users;--> statement-breakpoint\n"
        "DROP TABLE d_users;--> statement-breakpoint\n"
        "ALTER TABLE __new_d_users RENAME TO d_users;--> statement-breakpoint\n"
        "PRAGMA foreign_keys=ON;"
    ),
}
JOURNAL = {
    "version": "7",
    "dialect": "sqlite",
    "entries": [
        {"idx": 0, "version": "6", "when": 1700000000000, "tag": "0000_init", "breakpoints": True},
        {"idx": 1, "version": "6", "when": 1700000001000, "tag": "0001_rebuild", "breakpoints": True},
    ],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data = tmp_path_factory.mktemp("hrana-migrations") / "data"
    with run_server(data, env={"SQLFLEET_MAX_BATCH_STATEMENTS": str(MAX_STATEMENTS)}) as running:
        yield Served(running)
    assert running.proc.returncode == 0, running.log()


def _run(node_client: Path, scenario: str, served: Served, *extra: str) -> dict[str, Any]:
    tenant = served.tenant(f"mig-{scenario}")
    url = f"{served.server.url}/v1/tenants/{tenant.id}/"
    proc = subprocess.run(
        ["node", "migrations.mjs", scenario, url, tenant.rw, str(MAX_STATEMENTS), *extra],
        cwd=node_client,
        capture_output=True,
        timeout=90,
        check=False,
    )
    lines = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.startswith("{")]
    assert lines, proc.stderr.decode()
    observed: dict[str, Any] = lines[-1]
    assert observed["ok"], observed.get("error")
    return observed


def test_migrate_turns_foreign_keys_off_for_the_migration_only(server: Served, node_client: Path) -> None:
    observed = _run(node_client, "migrate", server)
    assert observed["refused"] == "SQLITE_CONSTRAINT"  # outside migrate(), foreign keys hold
    assert observed["failed"] == "SQLITE_ERROR"
    assert observed["foreign_keys_after"] == 1


def test_drizzle_migrator_applies_its_migrations_once(
    server: Served, node_client: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "drizzle"
    (folder / "meta").mkdir(parents=True)
    (folder / "meta" / "_journal.json").write_text(json.dumps(JOURNAL))
    for name, sql in DRIZZLE.items():
        (folder / name).write_text(sql)
    observed = _run(node_client, "drizzle", server, str(folder))
    assert observed["tables"] == ["d_posts", "d_users"]
    assert observed["users"] == [["a@example.com", 1]]
    assert observed["applied"] == 2
    assert observed["foreign_keys_after"] == 1


def test_a_batch_of_max_statements_passes_and_one_more_is_refused(server: Served, node_client: Path) -> None:
    observed = _run(node_client, "batch", server)
    assert observed["modes"] == {"write": MAX_STATEMENTS, "deferred": MAX_STATEMENTS, "read": MAX_STATEMENTS}
    assert observed["over"]["code"] == "PROTOCOL_ERROR"
    assert f"at most {MAX_STATEMENTS} statements per batch" in observed["over"]["message"]
    assert observed["rows"] == 2 * MAX_STATEMENTS  # the refused batch wrote nothing
