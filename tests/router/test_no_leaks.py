"""No response carries a server path or host detail: rows, errors or headers, over REST and
Hrana (issue 10, finding 11). A corpus of statements (introspection pragmas, their table-valued
forms, refused file-touching SQL, errors) is sent every way a tenant can send SQL, and every
answer is scanned for the data dir and the host name."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.support.app import ADMIN, InProcess, bearer, in_process

CORPUS = [
    "PRAGMA database_list",
    "PRAGMA main.database_list",
    "PRAGMA temp.database_list",
    "SELECT * FROM pragma_database_list",
    "SELECT file FROM pragma_database_list()",
    "SELECT group_concat(file) FROM pragma_database_list",
    "PRAGMA compile_options",
    "PRAGMA table_list",
    "SELECT * FROM pragma_table_list",
    "PRAGMA function_list",
    "PRAGMA module_list",
    "PRAGMA pragma_list",
    "PRAGMA integrity_check",
    "PRAGMA quick_check",
    "PRAGMA journal_mode",
    "PRAGMA locking_mode",
    "PRAGMA page_count",
    "PRAGMA temp_store_directory",
    "PRAGMA data_store_directory",
    "PRAGMA wal_checkpoint(TRUNCATE)",
    "PRAGMA journal_mode=DELETE",
    "PRAGMA mmap_size=1000000",
    "ATTACH 'other.db' AS other",
    "DETACH main",
    "VACUUM",
    "VACUUM INTO 'copy.db'",
    "SELECT load_extension('nothing')",
    "SELECT sqlite_compileoption_get(0), sqlite_version(), sqlite_source_id()",
    "SELECT * FROM dbstat",
    "SELECT * FROM sqlite_dbpage",
    "SELECT * FROM no_such_table",
    "CREATE TEMP TABLE tt(x)",
    "INSERT INTO t VALUES (zeroblob(100000000))",
    "SELECT * FROM t WHERE",
]


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    with in_process(tmp_path_factory.mktemp("leaks") / "data") as app:
        app.create("acme")
        app.query("acme", "create table t(x)")
        yield app


def _needles(app: InProcess) -> list[str]:
    data = app.server.settings.data_dir
    found = {str(data), str(data.resolve()), str(data.resolve().parent)}
    host = socket.gethostname()
    if len(host) >= 4 and host != "localhost":
        found |= {host, socket.getfqdn()}
    return sorted(found)


def _scan(app: InProcess, r: httpx2.Response, where: str, allowed: str = "") -> None:
    """`allowed`: the one place a path may appear (the admin API's `path` of a tenant)."""
    text = r.text.replace(allowed, "") if allowed else r.text
    text += "\n" + "\n".join(f"{k}: {v}" for k, v in r.headers.items())
    for needle in _needles(app):
        assert needle not in text, f"{where}: {needle!r} in {text[:600]}"
    assert "server" not in {k.lower() for k in r.headers}, where
    assert r.status_code < 500, (where, r.text)


@pytest.mark.parametrize("sql", CORPUS)
def test_no_answer_names_a_server_path_or_the_host(acme: InProcess, sql: str) -> None:
    token = bearer(acme.token("acme"))
    stmt = {"sql": sql}
    answers = {
        "query": acme.client.post("/v1/tenants/acme/query", json=stmt, headers=token),
        "batch": acme.client.post("/v1/tenants/acme/batch", json={"statements": [stmt]}, headers=token),
        "v2": acme.client.post(
            "/v2/pipeline",
            json={
                "requests": [
                    {"type": "execute", "stmt": stmt},
                    {"type": "describe", "sql": sql},
                    {"type": "sequence", "sql": sql},
                    {"type": "close"},
                ]
            },
            headers=token,
        ),
        "cursor": acme.client.post(
            "/v1/tenants/acme/v3/cursor", json={"batch": {"steps": [{"stmt": stmt}]}}, headers=token
        ),
        "v1": acme.client.post("/v1/tenants/acme/v1/execute", json={"stmt": stmt}, headers=token),
    }
    for way, r in answers.items():
        _scan(acme, r, f"{way} {sql}")


def test_database_list_lists_nothing_rather_than_the_file(acme: InProcess) -> None:
    assert acme.query("acme", "PRAGMA database_list").json()["rows"] == []
    rows = acme.query("acme", "SELECT count(*) FROM pragma_database_list").json()["rows"]
    assert rows == [[0]]


def test_admin_and_system_answers_name_no_server_path(acme: InProcess) -> None:
    for method, path in [
        ("GET", "/readyz"),
        ("GET", "/healthz"),
        ("GET", "/v1/admin/tenants/acme/backups"),
        ("POST", "/v1/admin/tenants/acme/backups/verify"),
        ("GET", "/v1/tenants/acme/nothing-here"),
    ]:
        _scan(acme, acme.client.request(method, path, headers=ADMIN), f"{method} {path}")


def test_only_the_admin_info_names_the_tenants_file_and_only_in_path(acme: InProcess) -> None:
    for path in ("/v1/admin/tenants/acme", "/v1/admin/tenants"):
        r = acme.client.get(path, headers=ADMIN)
        body = r.json()
        where = body["path"] if "path" in body else body["tenants"][0].get("path", "")
        if path.endswith("acme"):
            assert where.endswith("acme.db") and Path(where).is_file()
        _scan(acme, r, f"GET {path}", allowed=f'"path":"{where}"' if where else "")


def test_an_unopenable_tenant_says_so_without_its_path(tmp_path: Path) -> None:
    with in_process(tmp_path / "data") as app:
        app.create("gone")
        app.create("mangled")
        app.server.fleet.pool.discard("gone")
        app.server.fleet.pool.discard("mangled")
        app.server.fleet.layout.tenant_path("gone").unlink()
        app.server.fleet.layout.tenant_path("mangled").write_bytes(b"not a database at all" * 300)
        for tenant in ("gone", "mangled"):
            r = app.query(tenant, "select 1")
            assert r.status_code == 503, r.text
            assert "Traceback" not in r.text
            for needle in _needles(app):
                assert needle not in r.text, (tenant, r.text)
