"""`sqlfleet tenant export` and `sqlfleet tenant import` against a real server."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import as_json, at, cli, fails, ok, usage_error
from tests.support.server import ServerProcess, run_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with run_server(tmp_path_factory.mktemp("transfer") / "data") as running:
        yield running


def test_export_then_import_round_trip(server: ServerProcess, tmp_path: Path) -> None:
    ok(cli(server, "tenant", "create", "cli-src"))
    with server.client() as client:
        for sql in ("CREATE TABLE t(x)", "INSERT INTO t VALUES ('a'), (2), (x'00')"):
            assert client.post("/v1/tenants/cli-src/query", json={"sql": sql}).status_code == 200
    file = tmp_path / "out.db"
    assert "wrote" in ok(cli(server, "tenant", "export", "cli-src", str(file)))
    with sqlite3.connect(file) as db:
        assert db.execute("SELECT x FROM t ORDER BY rowid").fetchall() == [("a",), (2,), (b"\x00",)]
    db.close()
    result = as_json(cli(server, "tenant", "import", "cli-copy", str(file), "--json"))
    assert result["id"] == "cli-copy" and result["imported"]["bytes"] == file.stat().st_size
    fails(cli(server, "tenant", "import", "cli-copy", str(file)), "exists", "replace")
    assert "replaced" in ok(cli(server, "tenant", "import", "cli-copy", str(file), "--replace"))
    dumped = tmp_path / "out.sql"
    ok(cli(server, "tenant", "export", "cli-copy", str(dumped), "--sql"))
    assert 'INSERT INTO "t"' in dumped.read_text() and dumped.read_text().endswith("COMMIT;\n")


def test_failures_leave_no_file(server: ServerProcess, tmp_path: Path) -> None:
    file = tmp_path / "none.db"
    fails(cli(server, "tenant", "export", "no-such", str(file)), "does not exist")
    assert list(tmp_path.iterdir()) == []
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a database at all" * 10)
    fails(cli(server, "tenant", "import", "cli-bad", str(bad)), "not an SQLite database")


def test_import_into_a_group(server: ServerProcess, tmp_path: Path) -> None:
    with server.client() as client:
        r = client.post(
            "/v1/admin/groups", json={"name": "cli-g", "schema": "CREATE TABLE notes(id INTEGER PRIMARY KEY)"}
        )
        assert r.status_code == 201, r.text
    file = tmp_path / "notes.db"
    with sqlite3.connect(file) as db:
        db.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY)")
    db.close()
    result = as_json(cli(server, "tenant", "import", "cli-member", str(file), "--group", "cli-g", "--json"))
    assert result["group"] == "cli-g"


@pytest.mark.parametrize("target", ["/nonexistent/dir/x.db", "/proc/version", "/dev/null", "/proc"])
def test_export_to_a_path_it_cannot_write_fails_cleanly_before_asking_the_server(
    target: str, tmp_path: Path
) -> None:
    # nothing listens at this address: a file error that came after contacting it would say so
    nowhere = at("http://127.0.0.1:9", "key")
    for extra in ([], ["--sql"]):
        result = cli(None, "tenant", "export", "acme", target, *extra, env=nowhere)
        if target == "/proc":
            usage_error(result, "is a directory")
        else:
            fails(result, "cannot write", target)


def test_import_of_a_file_it_cannot_read_fails_cleanly_before_asking_the_server(tmp_path: Path) -> None:
    nowhere = at("http://127.0.0.1:9", "key")
    fails(
        cli(None, "tenant", "import", "acme", "/dev/zero", env=nowhere), "cannot read", "not a regular file"
    )
    usage_error(
        cli(None, "tenant", "import", "acme", str(tmp_path / "missing.db"), env=nowhere), "does not exist"
    )


def test_every_command_reading_a_local_file_fails_cleanly_before_asking_the_server(tmp_path: Path) -> None:
    # the same kind in the schema commands: a file that is not UTF-8 SQL, or not a file at all
    nowhere = at("http://127.0.0.1:9", "key")
    binary = tmp_path / "binary.sql"
    binary.write_bytes(b"\xff\xfe\x00 not text")
    good = tmp_path / "0001_good.sql"
    good.write_text("CREATE TABLE t(x);")
    for args in (
        ["group", "create", "g", "--schema", str(binary)],
        ["group", "add-migration", "g", str(good), str(binary)],  # read them all, then send
        ["group", "sync", "g", str(binary)],
        ["group", "plan", "g", str(binary)],
    ):
        fails(cli(None, *args, env=nowhere), "cannot read", "binary.sql", "not UTF-8")
    fails(cli(None, "group", "create", "g", "--template", "/dev/zero", env=nowhere), "not a regular file")


def test_transfers_write_nothing_stray_when_not_on_a_terminal(server: ServerProcess, tmp_path: Path) -> None:
    # the progress bars are drawn on a terminal only: a pipe or a log gets the result alone
    ok(cli(server, "tenant", "create", "cli-quiet"))
    file = tmp_path / "quiet.db"
    for args in (
        ["tenant", "export", "cli-quiet", str(file)],
        ["tenant", "export", "cli-quiet", str(tmp_path / "quiet.sql"), "--sql"],
        ["tenant", "import", "cli-quiet", str(file), "--replace"],
    ):
        for json_flag in ([], ["--json"]):
            result = cli(server, *args, *json_flag)
            out = ok(result)
            assert result.stderr == "", (args, result.stderr)
            if json_flag:
                as_json(result)
            else:
                assert out.count("\n") == 1, out
