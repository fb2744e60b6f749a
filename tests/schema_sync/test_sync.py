"""Template-ATTACH sync: the diff/plan/apply matrix of issue 4, on real tenant connections.

Every case starts from a tenant schema with rows, syncs it to a template, and checks the rows
survived, `foreign_key_check` and `integrity_check` are clean, foreign keys are enforced again,
and a second diff finds nothing left to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import apsw
import pytest

from schema_sync.errors import MigrationFailed, PlanBlocked
from schema_sync.sync import plan_against, sync_to_template
from tests.support.schema import MakeTemplate, OpenTenant, assert_clean, rows

PARENT = "CREATE TABLE p(id INTEGER PRIMARY KEY, name TEXT);"
CHILD = "CREATE TABLE c(id INTEGER PRIMARY KEY, p_id INTEGER REFERENCES p(id) ON DELETE CASCADE, note TEXT);"
FAMILY_ROWS = "INSERT INTO p VALUES (1, 'one'), (2, 'two'); INSERT INTO c VALUES (10, 1, 'a'), (11, 2, 'b');"


@dataclass
class Case:
    tenant: str
    template: str
    checks: dict[str, list[tuple[Any, ...]]]
    expect: str  # a piece of SQL the plan must hold
    allow_drop: bool = False
    refuse: list[str] = field(default_factory=list)  # statements that must fail afterwards


CASES = {
    "add_table": Case(
        PARENT + "INSERT INTO p VALUES (1, 'one');",
        PARENT + CHILD,
        {"SELECT * FROM p": [(1, "one")], "SELECT count(*) FROM c": [(0,)]},
        "CREATE TABLE c",
    ),
    "add_column_with_default": Case(
        PARENT + "INSERT INTO p VALUES (1, 'one');",
        "CREATE TABLE p(id INTEGER PRIMARY KEY, name TEXT, score REAL DEFAULT 1.5);",
        {"SELECT id, name, score FROM p": [(1, "one", 1.5)]},
        "ADD COLUMN score REAL DEFAULT 1.5",
    ),
    "add_not_null_column_with_default": Case(
        PARENT + "INSERT INTO p VALUES (1, 'one');",
        "CREATE TABLE p(id INTEGER PRIMARY KEY, name TEXT, kind TEXT NOT NULL DEFAULT 'basic');",
        {"SELECT * FROM p": [(1, "one", "basic")]},
        "ADD COLUMN kind TEXT NOT NULL DEFAULT 'basic'",
        refuse=["INSERT INTO p(id, kind) VALUES (5, NULL)"],
    ),
    "change_column_type": Case(
        "CREATE TABLE p(id INTEGER PRIMARY KEY, qty TEXT); INSERT INTO p VALUES (1, '42');",
        "CREATE TABLE p(id INTEGER PRIMARY KEY, qty INTEGER);",
        {"SELECT qty, typeof(qty) FROM p": [(42, "integer")]},
        "RENAME TO",
    ),
    "add_constraint": Case(
        PARENT + "INSERT INTO p VALUES (1, 'one');",
        "CREATE TABLE p(id INTEGER PRIMARY KEY, name TEXT NOT NULL CHECK (length(name) > 0));",
        {"SELECT * FROM p": [(1, "one")]},
        "INSERT INTO",
        refuse=["INSERT INTO p VALUES (2, '')", "INSERT INTO p VALUES (3, NULL)"],
    ),
    "add_unique_column": Case(
        PARENT + "INSERT INTO p VALUES (1, 'one');",
        "CREATE TABLE p(id INTEGER PRIMARY KEY, name TEXT, code TEXT UNIQUE);",
        {"SELECT * FROM p": [(1, "one", None)]},
        "RENAME TO",
    ),
    "drop_column": Case(
        "CREATE TABLE p(id INTEGER PRIMARY KEY, name TEXT, legacy BLOB);"
        "INSERT INTO p VALUES (1, 'one', x'00');",
        PARENT,
        {"SELECT * FROM p": [(1, "one")]},
        "RENAME TO",
        allow_drop=True,
    ),
    "add_index": Case(
        PARENT + "INSERT INTO p VALUES (1, 'one');",
        PARENT + "CREATE UNIQUE INDEX p_name ON p(name);",
        {"SELECT name FROM sqlite_schema WHERE type = 'index'": [("p_name",)]},
        "CREATE UNIQUE INDEX p_name",
        refuse=["INSERT INTO p VALUES (2, 'one')"],
    ),
    "drop_index": Case(
        PARENT + "CREATE INDEX p_name ON p(name); INSERT INTO p VALUES (1, 'one');",
        PARENT,
        {"SELECT count(*) FROM sqlite_schema WHERE type = 'index'": [(0,)], "SELECT * FROM p": [(1, "one")]},
        "DROP INDEX",
        allow_drop=True,
    ),
    "change_index": Case(
        PARENT + "CREATE INDEX p_name ON p(name); INSERT INTO p VALUES (1, 'one');",
        PARENT + "CREATE INDEX p_name ON p(name, id);",
        {"SELECT sql FROM sqlite_schema WHERE name = 'p_name'": [("CREATE INDEX p_name ON p(name, id)",)]},
        "DROP INDEX",
    ),
    "add_view": Case(
        PARENT + "INSERT INTO p VALUES (1, 'one');",
        PARENT + "CREATE VIEW names AS SELECT name FROM p;",
        {"SELECT * FROM names": [("one",)]},
        "CREATE VIEW names",
    ),
    "drop_view": Case(
        PARENT + "CREATE VIEW names AS SELECT name FROM p; INSERT INTO p VALUES (1, 'one');",
        PARENT,
        {"SELECT count(*) FROM sqlite_schema WHERE type = 'view'": [(0,)]},
        "DROP VIEW",
        allow_drop=True,
    ),
    "add_trigger": Case(
        PARENT + CHILD + FAMILY_ROWS,
        PARENT + CHILD + "CREATE TRIGGER c_note AFTER INSERT ON c BEGIN UPDATE c SET note = 'new' "
        "WHERE id = NEW.id AND NEW.note IS NULL; END;",
        {"SELECT count(*) FROM c": [(2,)]},
        "CREATE TRIGGER c_note",
    ),
    "drop_trigger": Case(
        PARENT + "CREATE TRIGGER p_upper AFTER INSERT ON p BEGIN UPDATE p SET name = upper(name) "
        "WHERE id = NEW.id; END; INSERT INTO p VALUES (1, 'one');",
        PARENT,
        {
            "SELECT * FROM p": [(1, "ONE")],
            "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'": [(0,)],
        },
        "DROP TRIGGER",
        allow_drop=True,
    ),
    "rebuild_referenced_table": Case(
        PARENT + CHILD + FAMILY_ROWS + "CREATE INDEX c_p ON c(p_id); CREATE VIEW pc AS SELECT p.name, c.note "
        "FROM p JOIN c ON c.p_id = p.id;",
        "CREATE TABLE p(id INTEGER PRIMARY KEY, name TEXT NOT NULL, born INTEGER);"
        + CHILD
        + "CREATE INDEX c_p ON c(p_id);"
        + "CREATE VIEW pc AS SELECT p.name, c.note FROM p JOIN c ON c.p_id = p.id;",
        # the DROP TABLE of the parent must not cascade into the children
        {"SELECT count(*) FROM c": [(2,)], "SELECT * FROM pc ORDER BY note": [("one", "a"), ("two", "b")]},
        'DROP TABLE "p"',
        refuse=["INSERT INTO c VALUES (12, 99, 'orphan')"],
    ),
    "rebuild_child_table": Case(
        PARENT + CHILD + FAMILY_ROWS,
        PARENT + "CREATE TABLE c(id INTEGER PRIMARY KEY, p_id INTEGER NOT NULL REFERENCES p(id), note TEXT);",
        {"SELECT id, p_id, note FROM c ORDER BY id": [(10, 1, "a"), (11, 2, "b")]},
        "RENAME TO",
        refuse=["INSERT INTO c VALUES (12, 99, 'orphan')"],
    ),
    "without_rowid": Case(
        "CREATE TABLE kv(k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID;"
        "INSERT INTO kv VALUES ('a', '1'), ('b', '2');",
        "CREATE TABLE kv(k TEXT PRIMARY KEY, v INTEGER, seen INTEGER UNIQUE) WITHOUT ROWID;",
        {"SELECT k, v FROM kv ORDER BY k": [("a", 1), ("b", 2)]},
        "RENAME TO",
    ),
    "to_without_rowid": Case(
        "CREATE TABLE kv(k TEXT PRIMARY KEY, v TEXT); INSERT INTO kv VALUES ('a', '1');",
        "CREATE TABLE kv(k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID;",
        {"SELECT * FROM kv": [("a", "1")]},
        "RENAME TO",
    ),
    "strict_add_column": Case(
        "CREATE TABLE s(id INTEGER PRIMARY KEY, v TEXT) STRICT; INSERT INTO s VALUES (1, 'x');",
        "CREATE TABLE s(id INTEGER PRIMARY KEY, v TEXT, n INTEGER NOT NULL DEFAULT 0) STRICT;",
        {"SELECT * FROM s": [(1, "x", 0)]},
        "ADD COLUMN n INTEGER NOT NULL DEFAULT 0",
        refuse=["INSERT INTO s VALUES (2, 'y', 'not a number')"],
    ),
    "to_strict": Case(
        "CREATE TABLE s(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO s VALUES (1, 'x');",
        "CREATE TABLE s(id INTEGER PRIMARY KEY, v TEXT) STRICT;",
        {"SELECT * FROM s": [(1, "x")]},
        "RENAME TO",
        refuse=["INSERT INTO s VALUES (2, x'00')"],
    ),
    "autoincrement_high_water_mark": Case(
        "CREATE TABLE a(id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT);"
        "INSERT INTO a VALUES (1, 'x'), (7, 'y'); DELETE FROM a WHERE id = 7;",
        "CREATE TABLE a(id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT NOT NULL);",
        {"SELECT seq FROM sqlite_sequence WHERE name = 'a'": [(7,)], "SELECT * FROM a": [(1, "x")]},
        "UPDATE sqlite_sequence",
    ),
    "rowid_kept": Case(
        "CREATE TABLE r(v TEXT); INSERT INTO r(rowid, v) VALUES (5, 'five'), (9, 'nine');",
        "CREATE TABLE r(v TEXT NOT NULL);",
        {"SELECT rowid, v FROM r ORDER BY rowid": [(5, "five"), (9, "nine")]},
        "INSERT INTO",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_sync_matrix(name: str, open_tenant: OpenTenant, make_template: MakeTemplate) -> None:
    case = CASES[name]
    tenant = open_tenant(case.tenant)
    template = make_template(case.template)
    plan = sync_to_template(tenant, template, allow_drop=case.allow_drop)
    assert case.expect in plan.render(), plan.render()
    for sql, expected in case.checks.items():
        assert rows(tenant, sql) == expected, sql
    assert_clean(tenant)
    for sql in case.refuse:
        with pytest.raises(apsw.ConstraintError):
            rows(tenant, sql)
    again = sync_to_template(tenant, template, allow_drop=case.allow_drop)
    assert again.steps == [], again.render()


def test_plan_prints_without_applying(open_tenant: OpenTenant, make_template: MakeTemplate) -> None:
    tenant = open_tenant(PARENT + "INSERT INTO p VALUES (1, 'one');")
    template = make_template("CREATE TABLE p(id INTEGER PRIMARY KEY, name TEXT UNIQUE);")
    with tenant.attached(template, "t") as alias:
        text = plan_against(tenant, alias).render()
    assert text.startswith("PRAGMA foreign_keys=OFF;\nBEGIN;\n")
    assert 'ALTER TABLE "_sqlfleet_new_p" RENAME TO "p";' in text
    assert text.rstrip().endswith("COMMIT;\nPRAGMA foreign_keys=ON;")
    assert rows(tenant, "SELECT sql FROM sqlite_schema") == [
        ("CREATE TABLE p(id INTEGER PRIMARY KEY, name TEXT)",)
    ]
    assert {name for _, name, _ in rows(tenant, "PRAGMA database_list")} <= {"main", "temp"}  # detached


def test_dry_run_changes_nothing(open_tenant: OpenTenant, make_template: MakeTemplate) -> None:
    tenant = open_tenant(PARENT + "INSERT INTO p VALUES (1, 'one');")
    template = make_template(PARENT + CHILD)
    plan = sync_to_template(tenant, template, dry_run=True)
    assert "CREATE TABLE c" in plan.render()
    assert rows(tenant, "SELECT name FROM sqlite_schema") == [("p",)]


def test_dropping_data_needs_permission(open_tenant: OpenTenant, make_template: MakeTemplate) -> None:
    tenant = open_tenant(PARENT + "CREATE TABLE mine(x); INSERT INTO p VALUES (1, 'one');")
    with pytest.raises(PlanBlocked, match="columns name would be dropped"):
        sync_to_template(tenant, make_template("CREATE TABLE p(id INTEGER PRIMARY KEY);"))
    plan = sync_to_template(tenant, make_template(PARENT))
    assert plan.kept == ["table mine"]
    assert rows(tenant, "SELECT name FROM sqlite_schema ORDER BY name") == [("mine",), ("p",)]
    sync_to_template(tenant, make_template(PARENT), allow_drop=True)
    assert rows(tenant, "SELECT name FROM sqlite_schema") == [("p",)]


def test_failed_rebuild_rolls_back(open_tenant: OpenTenant, make_template: MakeTemplate) -> None:
    tenant = open_tenant(
        PARENT + CHILD + "INSERT INTO p VALUES (1, NULL); INSERT INTO c VALUES (1, 1, NULL);"
    )
    template = make_template("CREATE TABLE p(id INTEGER PRIMARY KEY, name TEXT NOT NULL);" + CHILD)
    before = rows(tenant, "SELECT sql FROM sqlite_schema ORDER BY name")
    with pytest.raises(MigrationFailed, match="NOT NULL constraint failed"):
        sync_to_template(tenant, template)
    assert rows(tenant, "SELECT sql FROM sqlite_schema ORDER BY name") == before
    assert rows(tenant, "SELECT * FROM c") == [(1, 1, None)]
    assert_clean(tenant)


def test_change_that_breaks_a_foreign_key_fails(open_tenant: OpenTenant, make_template: MakeTemplate) -> None:
    tenant = open_tenant(PARENT + CHILD + FAMILY_ROWS)
    # every existing child would point at parent 99, which does not exist
    template = make_template(
        PARENT + CHILD.replace("note TEXT", "note TEXT, owner INTEGER DEFAULT 99 REFERENCES p(id)")
    )
    with pytest.raises(MigrationFailed, match="foreign key violation"):
        sync_to_template(tenant, template)
    assert rows(tenant, "SELECT * FROM c ORDER BY id") == [(10, 1, "a"), (11, 2, "b")]
    assert_clean(tenant)
