"""Recorded migrations: SQL files and alembic revisions applied through APSW, recorded in the
database, resumed, and refused when the record and the list disagree."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from schema_sync import alembic_render
from schema_sync.errors import HistoryMismatch, InvalidMigration, MigrationFailed
from schema_sync.migrations import ALEMBIC, alembic_source, applied, apply, from_text, load_dir
from tenants.rfc3339 import format_time, parse_time
from tests.support.schema import OpenTenant, assert_clean, rows

USERS = "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT NOT NULL);\n"


def write(folder: Path, files: dict[str, str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in files.items():
        path = folder / name
        path.write_text(textwrap.dedent(text))
        paths.append(path)
    return paths


def test_sql_files_apply_in_order_with_records(tmp_path: Path, open_tenant: OpenTenant) -> None:
    folder = tmp_path / "migrations"
    write(
        folder,
        {
            "0002_seed.sql": "INSERT INTO users(name) VALUES ('ada'), ('grace');",
            "0001_users.sql": USERS,
            "0003_email.sql": """
            ALTER TABLE users ADD COLUMN email TEXT;
            -- a data migration: a backfill, in the same transaction as the schema change
            UPDATE users SET email = name || '@example.com';
            SELECT count(*) FROM users;  -- statements after a SELECT still run
            CREATE UNIQUE INDEX users_email ON users(email);
        """,
        },
    )
    migrations = load_dir(folder)
    assert [m.name for m in migrations] == ["0001_users", "0002_seed", "0003_email"]
    tenant = open_tenant()
    outcome = apply(tenant, migrations, where="tenant t")
    assert outcome.applied == ["0001_users", "0002_seed", "0003_email"]
    assert rows(tenant, "SELECT name, email FROM users ORDER BY id") == [
        ("ada", "ada@example.com"),
        ("grace", "grace@example.com"),
    ]
    record = applied(tenant)
    assert [(r.name, r.checksum) for r in record] == [(m.name, m.checksum) for m in migrations]
    assert all(format_time(parse_time(r.applied_at)) == r.applied_at for r in record)  # one format
    assert apply(tenant, migrations).applied == []  # idempotent: nothing pending
    assert_clean(tenant)


def test_resume_applies_only_what_is_missing(tmp_path: Path, open_tenant: OpenTenant) -> None:
    write(
        tmp_path / "m",
        {"0001_users.sql": USERS, "0002_more.sql": "ALTER TABLE users ADD COLUMN age INTEGER;"},
    )
    migrations = load_dir(tmp_path / "m")
    tenant = open_tenant()
    apply(tenant, migrations[:1])
    assert apply(tenant, migrations).applied == ["0002_more"]
    assert apply(tenant, migrations, upto=1).applied == []  # ahead of `upto` is fine


def test_migration_failing_halfway_rolls_back(tmp_path: Path, open_tenant: OpenTenant) -> None:
    write(
        tmp_path / "m",
        {
            "0001_users.sql": USERS + "INSERT INTO users VALUES (1, 'ada');",
            "0002_half.sql": """
            ALTER TABLE users ADD COLUMN email TEXT;
            UPDATE users SET name = 'changed';
            CREATE TABLE audit(x);
            INSERT INTO users VALUES (1, 'duplicate', NULL);
            CREATE TABLE never(x);
        """,
        },
    )
    migrations = load_dir(tmp_path / "m")
    tenant = open_tenant()
    apply(tenant, migrations[:1])
    before = rows(tenant, "SELECT sql FROM sqlite_schema ORDER BY name")
    with pytest.raises(MigrationFailed, match="0002_half: UNIQUE constraint failed"):
        apply(tenant, migrations, where="tenant t")
    assert rows(tenant, "SELECT sql FROM sqlite_schema ORDER BY name") == before
    assert rows(tenant, "SELECT * FROM users") == [(1, "ada")]
    assert [r.name for r in applied(tenant)] == ["0001_users"]
    assert not tenant.in_transaction
    assert_clean(tenant)


def test_all_pending_migrations_are_one_transaction(tmp_path: Path, open_tenant: OpenTenant) -> None:
    write(tmp_path / "m", {"0001_users.sql": USERS, "0002_bad.sql": "INSERT INTO nowhere VALUES (1);"})
    tenant = open_tenant()
    with pytest.raises(MigrationFailed, match="no such table: nowhere"):
        apply(tenant, load_dir(tmp_path / "m"))
    assert applied(tenant) == []
    assert rows(tenant, "SELECT count(*) FROM sqlite_schema") == [(0,)]


def test_edited_migration_is_reported(tmp_path: Path, open_tenant: OpenTenant) -> None:
    (first,) = write(tmp_path / "m", {"0001_users.sql": USERS})
    tenant = open_tenant()
    apply(tenant, load_dir(tmp_path / "m"))
    first.write_text(USERS.replace("name TEXT", "name TEXT, extra TEXT"))
    write(tmp_path / "m", {"0002_next.sql": "CREATE TABLE t(x);"})
    with pytest.raises(HistoryMismatch, match="0001_users was edited after it was applied"):
        apply(tenant, load_dir(tmp_path / "m"), where="tenant t")
    assert rows(tenant, "SELECT count(*) FROM sqlite_schema WHERE name = 't'") == [(0,)]


def test_record_the_group_lacks_is_reported(tmp_path: Path, open_tenant: OpenTenant) -> None:
    write(tmp_path / "a", {"0001_users.sql": USERS, "0002_x.sql": "CREATE TABLE x(a);"})
    write(tmp_path / "b", {"0001_users.sql": USERS, "0002_y.sql": "CREATE TABLE y(a);"})
    tenant = open_tenant()
    apply(tenant, load_dir(tmp_path / "a"))
    with pytest.raises(HistoryMismatch, match="applied 0002_x where the group has 0002_y"):
        apply(tenant, load_dir(tmp_path / "b"))
    with pytest.raises(HistoryMismatch, match="which the group does not have"):
        apply(tenant, load_dir(tmp_path / "b")[:1])


def test_migrations_run_in_the_sandbox(tmp_path: Path, open_tenant: OpenTenant) -> None:
    tenant = open_tenant()
    for sql, error in [
        ("ATTACH '/tmp/x.db' AS x;", "not authorized|too many attached"),
        ("PRAGMA journal_mode=DELETE;", "not authorized"),
        ("BEGIN; CREATE TABLE t(x); COMMIT;", "transaction control is not allowed"),
    ]:
        with pytest.raises(MigrationFailed, match=error):
            apply(tenant, [from_text("0001_bad.sql", sql)])
    assert rows(tenant, "PRAGMA journal_mode") == [("wal",)]
    assert applied(tenant) == []


def test_bad_file_names_are_refused(tmp_path: Path) -> None:
    for name in ("1_short.sql", "0001-dash.sql", "0001_Upper.sql", "0001_x.txt"):
        with pytest.raises(InvalidMigration):
            from_text(name, "")
    write(tmp_path / "m", {"0001_a.sql": "", "0001_b.sql": ""})
    with pytest.raises(InvalidMigration, match="two migrations are numbered 0001"):
        load_dir(tmp_path / "m")


ALEMBIC_USERS = '''
    """create users"""
    import sqlalchemy as sa
    from alembic import op

    revision = "a1"
    down_revision = None


    def upgrade() -> None:
        op.create_table(
            "users", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.Text, nullable=False)
        )
        op.create_index("users_name", "users", ["name"])
'''
ALEMBIC_EMAIL = '''
    """email: add, backfill, then NOT NULL (a batch table move)"""
    import sqlalchemy as sa
    from alembic import op

    revision = "b2"
    down_revision = "a1"


    def upgrade() -> None:
        op.add_column("users", sa.Column("email", sa.Text, nullable=True))
        op.execute("UPDATE users SET email = lower(name) || '@example.com'")
        with op.batch_alter_table("users") as batch:
            batch.alter_column("email", existing_type=sa.Text, nullable=False)
        users = sa.table("users", sa.column("id"), sa.column("name"), sa.column("email"))
        op.bulk_insert(users, [{"id": 100, "name": "O'Neil", "email": "oneil@example.com"}])
'''


def test_alembic_revisions_render_and_apply(tmp_path: Path, open_tenant: OpenTenant) -> None:
    scripts = tmp_path / "alembic"
    write(scripts / "versions", {"a1_users.py": ALEMBIC_USERS})
    rendered = alembic_render.render(scripts, "")
    assert [r.revision for r in rendered] == ["a1"]
    migrations = [from_text(f"{i + 1:04d}_{r.slug}.sql", r.sql) for i, r in enumerate(rendered)]
    assert migrations[0].kind == ALEMBIC and migrations[0].name == "0001_create_users"
    tenant = open_tenant()
    apply(tenant, migrations)
    tenant.internal("INSERT INTO users(name) VALUES ('Ada')")

    # the next revision renders against the schema the group already has
    write(scripts / "versions", {"b2_email.py": ALEMBIC_EMAIL})
    schema = rows(
        tenant, "SELECT group_concat(sql, ';\n') FROM sqlite_schema WHERE name NOT LIKE '\\_%' ESCAPE '\\'"
    )
    known = {"a1": rendered[0].source_sha256}
    (email,) = alembic_render.render(scripts, str(schema[0][0]), known)
    assert "CREATE TABLE _alembic_tmp_users" in email.sql  # batch mode moved the table
    assert "VALUES (100, 'O''Neil', 'oneil@example.com')" in email.sql
    migrations.append(from_text(f"0002_{email.slug}.sql", email.sql))
    assert apply(tenant, migrations).applied == [migrations[1].name]
    assert rows(tenant, "SELECT name, email FROM users ORDER BY id") == [
        ("Ada", "ada@example.com"),
        ("O'Neil", "oneil@example.com"),
    ]
    assert rows(tenant, "SELECT \"notnull\" FROM pragma_table_info('users') WHERE name = 'email'") == [(1,)]
    assert rows(tenant, "SELECT name FROM sqlite_schema WHERE type = 'index'") == [("users_name",)]
    assert_clean(tenant)


def test_edited_alembic_revision_is_refused(tmp_path: Path) -> None:
    scripts = tmp_path / "alembic"
    (path,) = write(scripts / "versions", {"a1_users.py": ALEMBIC_USERS})
    (first,) = alembic_render.render(scripts, "")
    path.write_text(path.read_text().replace('"name"', '"full_name"'))
    with pytest.raises(InvalidMigration, match=r"a1 .* was edited after it was added"):
        alembic_render.render(scripts, "", {"a1": first.source_sha256})
    assert alembic_source(first.sql) == ("a1", first.source_sha256)


def test_foreign_keys_stay_enforced_unless_a_table_is_dropped(open_tenant: OpenTenant) -> None:
    tenant = open_tenant(
        "CREATE TABLE p(id INTEGER PRIMARY KEY);"
        "CREATE TABLE c(id INTEGER PRIMARY KEY, p_id INTEGER REFERENCES p(id) ON DELETE CASCADE);"
        "INSERT INTO p VALUES (1); INSERT INTO c VALUES (1, 1);"
    )
    orphan = from_text("0001_orphan.sql", "INSERT INTO c VALUES (2, 99);")
    assert not orphan.rebuilds
    with pytest.raises(MigrationFailed, match="FOREIGN KEY constraint failed"):
        apply(tenant, [orphan])
    # a table rebuild by hand: with foreign keys on, DROP TABLE p would cascade into c
    rebuild = from_text(
        "0001_rebuild.sql",
        "CREATE TABLE p2(id INTEGER PRIMARY KEY, name TEXT); INSERT INTO p2(id) SELECT id FROM p;"
        "DROP TABLE p; ALTER TABLE p2 RENAME TO p;",
    )
    assert rebuild.rebuilds
    apply(tenant, [rebuild])
    assert rows(tenant, "SELECT * FROM c") == [(1, 1)]
    assert_clean(tenant)
