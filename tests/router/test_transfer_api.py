"""Export, dump and import (router/transfer_api.py) through the real app in-process, checked
with the real sqlite3 CLI too."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tenants.rfc3339 import format_time
from tenants.sqllex import TRANSACTION_CONTROL, leading_keyword, split_statements
from tests.support.app import ADMIN, InProcess, bearer, in_process
from tests.support.http_contract import checking

SQLITE3 = shutil.which("sqlite3")
needs_cli = pytest.mark.skipif(SQLITE3 is None, reason="the sqlite3 CLI is not installed")

SCHEMA = [
    "CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, i INTEGER, r REAL, s TEXT, b BLOB)",
    "CREATE TABLE plain(a, b)",  # rowids without an INTEGER PRIMARY KEY
    "CREATE TABLE kv(k TEXT PRIMARY KEY, v) WITHOUT ROWID",
    "CREATE TABLE g(x INTEGER, y INTEGER GENERATED ALWAYS AS (x * 2) VIRTUAL, z AS (x + 1) STORED)",
    "CREATE INDEX t_s ON t(s)",
    "CREATE VIEW v AS SELECT id, s FROM t WHERE i > 0",
    "CREATE VIEW vv AS SELECT count(*) AS n FROM v",
    "CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN UPDATE t SET i = i WHERE id = new.id; END",
]
ROWS: list[dict[str, Any]] = [
    {"sql": "INSERT INTO t(i, r, s, b) VALUES (?, ?, ?, ?)", "params": p}
    for p in [
        [1, 0.1, "it's", {"base64": "AAEC/w=="}],
        [-(2**63), 1e308, "line\nbreak", None],
        [2**63 - 1, -0.0, "nul\x00inside", {"base64": ""}],
        [None, 1 / 3, "ünïcødé ☃", None],
    ]
] + [
    {"sql": "INSERT INTO plain(rowid, a, b) VALUES (10, 'x', 2.5), (20, NULL, X'00')"},
    {"sql": "INSERT INTO kv VALUES ('b', 2), ('a', 1)"},
    {"sql": "INSERT INTO g(x) VALUES (1), (2)"},
    {"sql": "DELETE FROM t WHERE i IS NULL"},  # a gap in the AUTOINCREMENT sequence
    {"sql": "ANALYZE"},  # sqlite_stat1: the dump keeps it, as sqlite3 .dump does
]


def _fill(app: InProcess, tenant: str) -> None:
    app.create(tenant)
    statements = [{"sql": s} for s in SCHEMA] + ROWS
    r = app.client.post(f"/v1/tenants/{tenant}/batch", json={"statements": statements}, headers=ADMIN)
    assert r.status_code == 200, r.text


def _content(path: Path) -> dict[str, Any]:
    """Schema and every row (rowids included) of the database at `path`, without bookkeeping and
    sqlite_stat4 (ANALYZE's samples: a dump leaves them out, tenants.dump says why)."""
    with sqlite3.connect(path) as db:
        schema = db.execute(
            "SELECT type, name, sql FROM sqlite_schema WHERE name NOT LIKE '\\_sqlfleet%' ESCAPE '\\' "
            "AND name != 'sqlite_stat4' ORDER BY name"
        ).fetchall()
        out: dict[str, Any] = {"schema": schema}
        tables = (
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name != 'sqlite_stat4' ORDER BY name"
        )
        for (name,) in db.execute(tables):
            wr = name == "kv"
            select = "*" if wr else "rowid, *"
            rows = db.execute(f'SELECT {select} FROM "{name}" ORDER BY 1').fetchall()
            out[name] = [[(type(v).__name__, v) for v in row] for row in rows]
    db.close()
    return out


def _live_content(app: InProcess, tenant: str, tmp: Path) -> dict[str, Any]:
    path = tmp / f"{tenant}-check.db"
    path.write_bytes(_export(app, tenant))
    return _content(path)


def _export(app: InProcess, tenant: str, headers: dict[str, str] = ADMIN) -> bytes:
    r = app.client.get(f"/v1/tenants/{tenant}/export", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/vnd.sqlite3"
    assert int(r.headers["content-length"]) == len(r.content)
    assert r.headers["x-sqlfleet-consistent-at"].endswith("Z")
    return r.content


def _import(app: InProcess, tenant: str, data: bytes, replace: bool = False) -> Any:
    query = "?replace=true" if replace else ""
    return app.client.put(f"/v1/admin/tenants/{tenant}/import{query}", content=data, headers=ADMIN)


def _no_transfer_files(app: InProcess) -> None:
    folder = app.server.fleet.layout.system_dir / "transfers"
    assert not folder.exists() or not any(folder.iterdir())
    assert app.server.context.transfers == 0


@needs_cli
def test_export_is_a_plain_sqlite_file_the_cli_opens(app: InProcess, tmp_path: Path) -> None:
    _fill(app, "src")
    path = tmp_path / "src.db"
    path.write_bytes(_export(app, "src", bearer(app.token("src", "ro"))))
    assert SQLITE3 is not None
    out = subprocess.run(
        [SQLITE3, str(path), "PRAGMA journal_mode; PRAGMA integrity_check; SELECT count(*) FROM t;"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["delete", "ok", "3"]
    assert not Path(f"{path}-wal").exists()
    _no_transfer_files(app)


@needs_cli
def test_export_then_import_as_a_new_tenant_is_identical(app: InProcess, tmp_path: Path) -> None:
    _fill(app, "src")
    data = _export(app, "src")
    r = _import(app, "copy", data)
    assert r.status_code == 201, r.text
    assert r.json()["imported"] == {
        "bytes": len(data),
        "page_size": 4096,
        "replaced": False,
        "schema_steps": 0,
    }
    original, copied = tmp_path / "a.db", tmp_path / "b.db"
    original.write_bytes(data)
    copied.write_bytes(_export(app, "copy"))
    assert _content(original) == _content(copied)
    assert SQLITE3 is not None
    dumps = [
        subprocess.run([SQLITE3, str(p), ".dump"], capture_output=True, text=True, check=True).stdout
        for p in (original, copied)
    ]
    assert dumps[0] == dumps[1]
    # the imported tenant works as any other
    assert app.query("copy", "INSERT INTO t(i) VALUES (5)").status_code == 200
    assert app.query("copy", "SELECT max(id) FROM t").json()["rows"] == [[5]]
    _no_transfer_files(app)


@needs_cli
def test_dump_recreates_the_tenant_with_sqlite3_and_through_batch(app: InProcess, tmp_path: Path) -> None:
    _fill(app, "src")
    r = app.client.get("/v1/tenants/src/dump", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/sql")
    text = r.text
    assert "_sqlfleet" not in text
    assert "ANALYZE sqlite_schema;\n" in text and 'INSERT INTO "sqlite_stat1"' in text
    want = _live_content(app, "src", tmp_path)
    # into sqlite3
    assert SQLITE3 is not None
    path = tmp_path / "from-dump.db"
    subprocess.run([SQLITE3, str(path)], input=text, text=True, check=True, capture_output=True)
    assert _content(path) == want
    # into another tenant's /batch: split like sqlite3_complete, leave out transaction control
    # and the PRAGMA (a batch is a transaction), send in batches
    app.create("dst")
    statements = [
        s for s in split_statements(text) if leading_keyword(s) not in TRANSACTION_CONTROL | {"PRAGMA"}
    ]
    for start in range(0, len(statements), 100):
        chunk = [{"sql": s} for s in statements[start : start + 100]]
        r = app.client.post("/v1/tenants/dst/batch", json={"statements": chunk}, headers=ADMIN)
        assert r.status_code == 200, r.text
    assert _live_content(app, "dst", tmp_path) == want
    _no_transfer_files(app)


def test_export_needs_a_token_for_that_tenant(app: InProcess) -> None:
    app.create("a")
    app.create("b")
    r = app.client.get("/v1/tenants/a/export", headers=bearer(app.token("b")))
    assert r.status_code == 403
    assert app.client.get("/v1/tenants/a/export").status_code == 401
    assert app.client.get("/v1/tenants/nope/export", headers=ADMIN).status_code == 404
    assert app.client.get("/v1/tenants/nope/dump", headers=ADMIN).status_code == 404
    _no_transfer_files(app)


def _db_file(path: Path, *sql: str, page_size: int = 4096) -> bytes:
    """A rollback-journal database made by the stdlib's sqlite3 (not this server)."""
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA page_size={page_size}")
    for statement in sql:
        db.execute(statement)
    db.commit()
    db.close()
    return path.read_bytes()


def _with(data: bytes, offset: int, patch: bytes) -> bytes:
    return data[:offset] + patch + data[offset + len(patch) :]


def _state(app: InProcess) -> Any:
    tenants = app.client.get("/v1/admin/tenants", headers=ADMIN).json()["tenants"]
    return [(t["id"], t["state"]) for t in tenants]


def _refused(
    app: InProcess, data: bytes, status: int, words: str, tenant: str = "new", replace: bool = False
) -> None:
    before = _state(app)
    r = _import(app, tenant, data, replace)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] in ("bad_import", "import_too_large"), error
    assert words in error["message"], error["message"]
    assert _state(app) == before
    _no_transfer_files(app)


def test_bad_imports_are_refused_naming_why_and_change_nothing(app: InProcess, tmp_path: Path) -> None:
    _fill(app, "keep")
    rows = [f"INSERT INTO big VALUES ({i}, '{'x' * 200}')" for i in range(200)]
    good = _db_file(tmp_path / "good.db", "CREATE TABLE big(i INTEGER PRIMARY KEY, s)", *rows)
    assert len(good) > 4 * 4096
    _refused(app, b"PK\x03\x04 this is a zip file, honest" * 100, 400, "not an SQLite database")
    _refused(app, good[: len(good) - 4096], 400, "truncated")
    _refused(app, good[:5000], 400, "truncated")
    # one page more than the header says is not "truncated": say what is wrong
    _refused(app, good + b"\x00" * 4096, 400, "longer than its header says")
    _refused(app, good + b"junk", 400, "not a whole number")
    _refused(app, _with(good, 16, (3000).to_bytes(2, "big")), 400, "page size 3000")
    # a b-tree page of the table overwritten in the middle: integrity_check finds it
    _refused(app, _with(good, 3 * 4096 + 1000, b"\xff" * 900), 400, "corrupt")
    utf16 = _db_file(tmp_path / "utf16.db", "PRAGMA encoding='UTF-16le'", "CREATE TABLE t(x)")
    _refused(app, utf16, 400, "UTF-16le")
    wal = _db_file(tmp_path / "wal.db", "PRAGMA journal_mode=WAL", "CREATE TABLE t(x)")
    _refused(app, wal, 400, "WAL mode")
    # a CHECK constraint calling a refused function: tenant SQL cannot CREATE it (checked in
    # test_import_accepts_exactly_what_tenant_sql_can_create)
    check = _db_file(tmp_path / "check.db", "CREATE TABLE t(x CHECK (load_extension('/tmp/x.so') IS NULL))")
    _refused(app, check, 400, "load_extension")
    bookkeeping = _db_file(tmp_path / "bk.db", "CREATE TABLE _sqlfleet_owned(x)")
    _refused(app, bookkeeping, 400, "_sqlfleet_owned")
    # replacing a tenant with a bad file leaves its data as it was
    before = _live_content(app, "keep", tmp_path)
    _refused(app, good[:5000], 400, "truncated", tenant="keep", replace=True)
    assert _live_content(app, "keep", tmp_path) == before
    r = _import(app, "keep", good)  # exists, and replace was not asked for
    assert r.status_code == 409 and r.json()["error"]["code"] == "tenant_exists"
    assert _import(app, "nope", good, replace=True).status_code == 404


def test_oversized_imports_are_refused(tmp_path: Path) -> None:
    good = _db_file(tmp_path / "good.db", "CREATE TABLE t(x)", "INSERT INTO t VALUES (randomblob(50000))")
    with in_process(tmp_path / "data", max_import_bytes=len(good) - 1) as app:
        checking(app.client)
        _refused(app, good, 413, "max_import_bytes")
    with in_process(tmp_path / "data2", max_db_bytes=len(good) - 4096) as app:
        checking(app.client)
        _refused(app, good, 413, "at most")


def test_import_replacing_keeps_tokens_and_the_old_data_stays_restorable(
    app: InProcess, tmp_path: Path
) -> None:
    app.create("acme")
    app.query("acme", "CREATE TABLE t(x)")
    app.query("acme", "INSERT INTO t VALUES ('old')")
    token = app.token("acme")
    before = time.time()
    time.sleep(0.01)
    data = _db_file(tmp_path / "new.db", "CREATE TABLE t(x)", "INSERT INTO t VALUES ('new')")
    r = _import(app, "acme", data, replace=True)
    assert r.status_code == 200, r.text
    assert r.json()["imported"]["replaced"] is True
    assert app.query("acme", "SELECT x FROM t", token=token).json()["rows"] == [["new"]]
    r = app.client.post(
        "/v1/admin/tenants/acme/restore", json={"timestamp": format_time(before), "as": "undo"}, headers=ADMIN
    )
    assert r.status_code == 200, r.text
    assert app.query("undo", "SELECT x FROM t").json()["rows"] == [["old"]]
    _no_transfer_files(app)


def test_an_import_in_place_answers_the_size_the_tenant_has_after_it(app: InProcess, tmp_path: Path) -> None:
    app.create("acme")
    app.query("acme", "CREATE TABLE t(x)")
    app.query("acme", "INSERT INTO t VALUES (randomblob(300000))")
    old = app.client.get("/v1/admin/tenants/acme", headers=ADMIN).json()["size"]
    data = _db_file(tmp_path / "small.db", "CREATE TABLE t(x)", "INSERT INTO t VALUES ('new')")
    r = _import(app, "acme", data, replace=True)
    assert r.status_code == 200, r.text
    after = app.client.get("/v1/admin/tenants/acme", headers=ADMIN).json()["size"]
    assert r.json()["size"] == after < old, (r.json()["size"], after, old)


def test_temporary_folders_a_crash_left_go_with_the_next_transfer(app: InProcess) -> None:
    app.create("a")
    root = app.server.fleet.layout.system_dir / "transfers"
    root.mkdir(exist_ok=True)
    stale, fresh = root / "transfer-crashed", root / "transfer-running"
    for folder in (stale, fresh):
        folder.mkdir()
        (folder / "export.db").write_bytes(b"x" * 100)
    old = time.time() - app.server.context.config.transfer_timeout - 120
    os.utime(stale, (old, old))
    _export(app, "a")
    assert not stale.exists() and fresh.exists()


def test_import_into_a_group_syncs_the_schema_or_names_what_blocks_it(app: InProcess, tmp_path: Path) -> None:
    schema = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT NOT NULL DEFAULT '')"
    r = app.client.post("/v1/admin/groups", json={"name": "g", "schema": schema}, headers=ADMIN)
    assert r.status_code == 201, r.text
    same = _db_file(tmp_path / "same.db", schema, "INSERT INTO notes VALUES (1, 'a')")
    r = app.client.put("/v1/admin/tenants/same/import?group=g", content=same, headers=ADMIN)
    assert r.status_code == 201, r.text
    assert r.json()["group"] == "g" and r.json()["imported"]["schema_steps"] == 0
    assert app.query("same", "SELECT count(*) FROM _sqlfleet_migrations").json()["rows"] == [[0]]
    # a column the group has and the file lacks is added; the file's own table is kept
    older = _db_file(
        tmp_path / "older.db", "CREATE TABLE notes(id INTEGER PRIMARY KEY)", "CREATE TABLE mine(x)"
    )
    r = app.client.put("/v1/admin/tenants/older/import?group=g", content=older, headers=ADMIN)
    assert r.status_code == 201, r.text
    assert r.json()["imported"]["schema_steps"] > 0
    assert app.query("older", "INSERT INTO notes(id) VALUES (5)").status_code == 200
    assert app.query("older", "SELECT body FROM notes").json()["rows"] == [[""]]
    # what cannot be synced without losing data refuses the import, naming it
    clash = _db_file(
        tmp_path / "clash.db", "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT, extra INTEGER)"
    )
    before = _state(app)
    r = app.client.put("/v1/admin/tenants/clash/import?group=g", content=clash, headers=ADMIN)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "plan_blocked" and "extra" in r.json()["error"]["message"]
    assert _state(app) == before
    _no_transfer_files(app)
    r = app.client.put("/v1/admin/tenants/x/import?group=nope", content=same, headers=ADMIN)
    assert r.status_code == 404
    r = app.client.put("/v1/admin/tenants/same/import?replace=true&group=other", content=same, headers=ADMIN)
    assert r.status_code == 400


def test_import_accepts_exactly_what_tenant_sql_can_create(app: InProcess, tmp_path: Path) -> None:
    # Each of these a tenant can CREATE through the API (some fail when used, as they would in
    # the tenant): its export imports back, and so does the same file made elsewhere.
    made = {
        "dangling": [
            "CREATE TABLE x(a)",
            "CREATE VIEW v AS SELECT a FROM x",
            "DROP TABLE x",
            "CREATE TABLE y(b)",
        ],
        "vload": ["CREATE TABLE x(a)", "CREATE VIEW v AS SELECT load_extension('x') FROM x"],
        "vtok": ["CREATE VIEW v AS SELECT fts3_tokenizer('simple')"],
        "vunknown": ["CREATE TABLE x(a)", "CREATE VIEW v AS SELECT no_such_function(a) FROM x"],
        "vpragma": ["CREATE VIEW v AS SELECT * FROM pragma_database_list"],
        "trig": [
            "CREATE TABLE x(a)",
            "CREATE TRIGGER tr AFTER INSERT ON x BEGIN SELECT load_extension('x'); END",
        ],
    }
    for name, sql in made.items():
        app.create(name)
        batch = {"statements": [{"sql": s} for s in sql]}
        r = app.client.post(f"/v1/tenants/{name}/batch", json=batch, headers=ADMIN)
        assert r.status_code == 200, r.text
        r = _import(app, f"{name}-copy", _export(app, name))
        assert r.status_code == 201, (name, r.text)
        r = _import(app, f"{name}-file", _db_file(tmp_path / f"{name}.db", *sql))
        assert r.status_code == 201, (name, r.text)
    # the imported trigger fails when it fires, as it did in the tenant
    r = app.query("trig-copy", "INSERT INTO x VALUES (1)")
    assert r.status_code == 403 and "load_extension" in r.text, r.text
    # what tenant SQL cannot CREATE is refused, naming the object: the same words the API says
    refused = {
        "check": "CREATE TABLE x(a CHECK (load_extension('x') IS NULL))",
        "checkfn": "CREATE TABLE x(a CHECK (a_function_elsewhere(a) IS NULL))",
        "default": "CREATE TABLE x(a DEFAULT (fts3_tokenizer('simple')))",
    }
    for name, create in refused.items():
        app.create(f"{name}-live")
        live = app.query(f"{name}-live", create)
        assert live.status_code in (400, 403), live.text
        made_by = sqlite3.connect(tmp_path / f"{name}.db")  # an app with a function of its own
        made_by.create_function("a_function_elsewhere", 1, lambda a: None)
        made_by.execute(create)
        made_by.commit()
        made_by.close()
        data = (tmp_path / f"{name}.db").read_bytes()
        before = _state(app)
        r = _import(app, name, data)
        assert r.status_code == 400, (name, r.text)
        error = r.json()["error"]
        assert error["code"] == "bad_import" and "table x" in error["message"], error
        assert live.json()["error"]["message"].split(": ")[-1] in error["message"], (live.text, error)
        assert _state(app) == before
    _no_transfer_files(app)


def test_import_into_a_group_refuses_data_that_cannot_be_synced_naming_it(
    app: InProcess, tmp_path: Path
) -> None:
    schema = "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT)"
    r = app.client.post("/v1/admin/groups", json={"name": "g", "schema": schema}, headers=ADMIN)
    assert r.status_code == 201, r.text
    data = _db_file(
        tmp_path / "text-keys.db",
        "CREATE TABLE items(id TEXT PRIMARY KEY, name TEXT)",
        "INSERT INTO items VALUES ('a', 'b')",
    )
    before = _state(app)
    r = app.client.put("/v1/admin/tenants/m/import?group=g", content=data, headers=ADMIN)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "plan_blocked", error
    assert "items" in error["message"] and "datatype mismatch" in error["message"], error
    assert _state(app) == before
    _no_transfer_files(app)


def _open_transaction(app: InProcess, tenant: str) -> tuple[str, str]:
    """(token, baton) of a Hrana stream holding a write transaction open on `tenant`."""
    token = app.token(tenant)
    requests = [
        {"type": "execute", "stmt": {"sql": "BEGIN IMMEDIATE"}},
        {"type": "execute", "stmt": {"sql": "INSERT INTO t VALUES ('uncommitted')"}},
    ]
    r = app.client.post("/v2/pipeline", json={"baton": None, "requests": requests}, headers=bearer(token))
    assert [x["type"] for x in r.json()["results"]] == ["ok", "ok"], r.text
    return token, r.json()["baton"]


def test_import_replacing_ends_an_open_transaction_saying_import(tmp_path: Path) -> None:
    with in_process(tmp_path / "data", stream_idle_timeout=60, preempt_wait=0.3) as app:
        checking(app.client)
        app.create("acme")
        app.query("acme", "CREATE TABLE t(x)")
        token, baton = _open_transaction(app, "acme")
        data = _db_file(tmp_path / "new.db", "CREATE TABLE t(x)", "INSERT INTO t VALUES ('new')")
        r = _import(app, "acme", data, replace=True)
        assert r.status_code == 200, r.text
        requests = [{"type": "execute", "stmt": {"sql": "SELECT 1"}}]
        r = app.client.post(
            "/v2/pipeline", json={"baton": baton, "requests": requests}, headers=bearer(token)
        )
        assert (r.status_code, r.json()["code"]) == (400, "STREAM_EXPIRED"), r.text
        assert "import" in r.json()["message"] and "restore" not in r.json()["message"], r.text


def test_an_export_behind_an_open_transaction_answers_503_at_busy_timeout(tmp_path: Path) -> None:
    with in_process(tmp_path / "data", stream_idle_timeout=60, busy_timeout=0.3) as app:
        checking(app.client)
        app.create("acme")
        app.query("acme", "CREATE TABLE t(x)")
        _open_transaction(app, "acme")
        for route in ("export", "dump"):
            started = time.monotonic()
            r = app.client.get(f"/v1/tenants/acme/{route}", headers=ADMIN)
            took = time.monotonic() - started
            assert r.status_code == 503 and r.json()["error"]["code"] == "tenant_busy", r.text
            assert took < 5, took  # not the stream's idle expiry, nor transfer_timeout
        _no_transfer_files(app)
