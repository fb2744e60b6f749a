"""The admin commands of the `sqlfleet` CLI, driven against a real server process on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ops import client as admin_client
from router.admin_api import MAX_PAGE
from tests.support.app import bearer
from tests.support.cli import cli, fails, ok, usage_error
from tests.support.loopback import Quiet, loopback_http
from tests.support.server import ServerProcess, free_port, run_server

SCRIPT = Path(sys.executable).with_name("sqlfleet")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with run_server(tmp_path_factory.mktemp("cli") / "data") as running:
        yield running


def create(server: ServerProcess, *tenants: str) -> None:
    with server.client() as http:
        for tenant in tenants:
            assert http.post("/v1/admin/tenants", json={"id": tenant}).status_code == 201


def exists(server: ServerProcess, tenant: str) -> bool:
    with server.client() as http:
        return http.get(f"/v1/admin/tenants/{tenant}").status_code == 200


def table_ids(out: str) -> list[str]:
    """The first column of every body row of a rich table."""
    cells = [line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│")]
    return cells


def subprocess_env(server: ServerProcess, url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQLFLEET_")}
    return {**env, "SQLFLEET_URL": url or server.url, "SQLFLEET_ADMIN_KEY": server.admin_key}


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)


# -- tenant create -----------------------------------------------------------------------------


def test_create_prints_a_table_of_the_new_tenant(server: ServerProcess) -> None:
    out = ok(cli(server, "tenant", "create", "made-by-cli"))
    row = next(line for line in out.splitlines() if "made-by-cli" in line)
    assert "active" in row and "4.0 KiB" in row
    assert exists(server, "made-by-cli")


def test_create_json_is_the_servers_answer(server: ServerProcess) -> None:
    with server.client() as http:  # a tenant can only join a schema group that exists
        http.post("/v1/admin/groups", json={"name": "g1"})
    body = json.loads(ok(cli(server, "tenant", "create", "grouped", "--group", "g1", "--json")))
    assert body["group"] == "g1"
    with server.client() as http:
        assert body == http.get("/v1/admin/tenants/grouped").json()


def test_create_existing_tenant_fails_409(server: ServerProcess) -> None:
    create(server, "twice")
    fails(cli(server, "tenant", "create", "twice"), "tenant 'twice' already exists", "HTTP 409")


def test_create_invalid_id_fails_400(server: ServerProcess) -> None:
    fails(cli(server, "tenant", "create", "Bad!"), "invalid tenant id 'Bad!'", "HTTP 400 invalid_tenant_id")


def test_ids_that_would_change_the_url_are_refused(server: ServerProcess) -> None:
    """Refused before asking the server: a usage error, exit 2 (session 6: they exited 1, as if
    the server had refused them), for tenant ids and group names alike."""
    for bad in ("../x", "a/b", "x" * 64):
        usage_error(cli(server, "tenant", "info", bad), "invalid tenant id")
        usage_error(cli(server, "token", "mint", bad), "invalid tenant id")
        usage_error(cli(server, "group", "show", bad), "invalid group name")
        usage_error(cli(server, "group", "status", "shop", bad), "invalid tenant id")
        usage_error(cli(server, "group", "status", bad, "acme"), "invalid group name")


# -- tenant info -------------------------------------------------------------------------------


def test_info_shows_every_field(server: ServerProcess) -> None:
    create(server, "shown")
    out = ok(cli(server, "tenant", "info", "shown"))
    assert table_ids(out) == ["id", "created_at", "state", "group", "size", "error", "path"]
    assert "shown" in out and "active" in out and "4.0 KiB" in out
    body = json.loads(ok(cli(server, "tenant", "info", "shown", "--json")))
    assert (body["id"], body["state"], body["group"], body["size"]) == ("shown", "active", None, 4096)
    path = Path(body["path"])  # where the file lives, for operators
    assert path.is_absolute() and path.name.startswith("shown.") and path.is_file()
    assert path.is_relative_to(server.data_dir.absolute())


def test_list_shows_the_size_info_shows_right_after_writes(server: ServerProcess) -> None:
    create(server, "growing")
    statements = [{"sql": "create table t(x)"}, {"sql": "insert into t values (zeroblob(200000))"}]
    with server.client() as http:
        assert http.post("/v1/tenants/growing/batch", json={"statements": statements}).status_code == 200
    listed = json.loads(ok(cli(server, "tenant", "list", "--prefix", "growing", "--json")))["tenants"]
    info = json.loads(ok(cli(server, "tenant", "info", "growing", "--json")))
    assert info["size"] > 200_000
    assert [t["size"] for t in listed] == [info["size"]]
    assert "path" not in listed[0]  # a listing names no paths


def test_info_of_missing_tenant_fails_404(server: ServerProcess) -> None:
    fails(cli(server, "tenant", "info", "ghost"), "tenant 'ghost' does not exist", "HTTP 404")


# -- tenant list -------------------------------------------------------------------------------


def test_list_returns_one_page_and_its_cursor(server: ServerProcess) -> None:
    create(server, *(f"page-{i}" for i in range(7)))
    first = json.loads(ok(cli(server, "tenant", "list", "--prefix", "page-", "--limit", "3", "--json")))
    assert [t["id"] for t in first["tenants"]] == ["page-0", "page-1", "page-2"]
    assert first["next"] == "page-2"
    args = ("tenant", "list", "--prefix", "page-", "--limit", "3", "--after", "page-2", "--json")
    second = json.loads(ok(cli(server, *args)))
    assert [t["id"] for t in second["tenants"]] == ["page-3", "page-4", "page-5"]
    out = ok(cli(server, "tenant", "list", "--prefix", "page-", "--limit", "3"))
    assert table_ids(out) == ["page-0", "page-1", "page-2"]
    assert "more after page-2" in out


def test_list_all_follows_the_cursor_across_pages(server: ServerProcess) -> None:
    ids = [f"all-{i:02d}" for i in range(11)]
    create(server, *ids)
    args = ("tenant", "list", "--prefix", "all-", "--limit", "2", "--all")
    body = json.loads(ok(cli(server, *args, "--json")))
    assert [t["id"] for t in body["tenants"]] == ids  # six pages of at most two
    assert body["next"] is None
    out = ok(cli(server, *args))
    assert table_ids(out) == ids
    assert "more after" not in out


def test_list_with_no_match_says_so(server: ServerProcess) -> None:
    assert ok(cli(server, "tenant", "list", "--prefix", "nothing-here")).strip() == "no tenants"
    assert json.loads(ok(cli(server, "tenant", "list", "--prefix", "nothing-here", "--json"))) == {
        "tenants": [],
        "next": None,
    }


def test_list_bad_cursor_fails_400(server: ServerProcess) -> None:
    fails(cli(server, "tenant", "list", "--after", "Not/An/Id"), "invalid tenant id", "HTTP 400")


def test_client_page_size_matches_the_server() -> None:
    assert admin_client.MAX_PAGE == MAX_PAGE


# -- tenant delete -----------------------------------------------------------------------------


def test_delete_with_yes_removes_the_tenant(server: ServerProcess) -> None:
    create(server, "doomed")
    assert ok(cli(server, "tenant", "delete", "doomed", "--yes")).strip() == "deleted tenant doomed"
    assert not exists(server, "doomed")
    fails(cli(server, "tenant", "delete", "doomed", "--yes"), "tenant 'doomed' does not exist", "HTTP 404")


def test_delete_json_prints_a_json_document(server: ServerProcess) -> None:
    create(server, "quiet")
    assert json.loads(ok(cli(server, "tenant", "delete", "quiet", "-y", "--json"))) == {
        "id": "quiet",
        "deleted": True,
    }
    assert not exists(server, "quiet")


def test_delete_without_a_terminal_refuses(server: ServerProcess) -> None:
    create(server, "kept")
    fails(cli(server, "tenant", "delete", "kept"), "not deleting 'kept'", "pass --yes")
    assert exists(server, "kept")


def test_delete_asks_for_confirmation_on_a_terminal(server: ServerProcess) -> None:
    create(server, "asked")
    for answer, code, left in ((b"n\n", 1, True), (b"y\n", 0, False)):
        primary, secondary = os.openpty()
        try:
            os.write(primary, answer)  # waits in the terminal's line buffer until the prompt reads it
            done = subprocess.run(
                [sys.executable, "-m", "ops", "tenant", "delete", "asked"],
                stdin=secondary,
                capture_output=True,
                env=subprocess_env(server),
                timeout=60,
            )
        finally:
            os.close(primary)
            os.close(secondary)
        assert done.returncode == code, done.stderr
        assert b"Delete tenant 'asked' (4.0 KiB) and all its data? [y/N]" in done.stdout
        assert exists(server, "asked") is left
        assert b"Traceback" not in done.stderr


# -- token mint --------------------------------------------------------------------------------


def test_mint_prints_only_a_working_token(server: ServerProcess) -> None:
    create(server, "minted")
    out = ok(cli(server, "token", "mint", "minted"))
    token = out.strip()
    assert out == token + "\n" and token.count(".") == 2
    r = httpx.post(
        f"{server.url}/v1/tenants/minted/query", json={"sql": "select 6 * 7"}, headers=bearer(token)
    )
    assert r.json()["rows"] == [[42]]


def test_mint_read_only_with_expiry_as_json(server: ServerProcess) -> None:
    create(server, "readers")
    args = ("token", "mint", "readers", "--access", "ro", "--expires-in", "120", "--json")
    body = json.loads(ok(cli(server, *args)))
    assert (body["tenant"], body["access"]) == ("readers", "ro")
    assert abs(body["expires_at"] - (time.time() + 120)) < 30
    sql = {"sql": "create table t(x)"}
    r = httpx.post(f"{server.url}/v1/tenants/readers/query", json=sql, headers=bearer(body["token"]))
    assert r.status_code == 403


def test_mint_for_missing_tenant_fails_404(server: ServerProcess) -> None:
    fails(cli(server, "token", "mint", "nobody"), "tenant 'nobody' does not exist", "HTTP 404")


def test_mint_refuses_bad_options_before_calling(server: ServerProcess) -> None:
    for args in (("--access", "admin"), ("--expires-in", "0")):
        result = cli(server, "token", "mint", "minted", *args)
        assert result.exit_code == 2 and "Invalid value" in result.stderr


# -- token revoke ------------------------------------------------------------------------------


def test_revoke_stops_the_tokens_minted_before_and_not_those_after(server: ServerProcess) -> None:
    create(server, "revoked")
    old = ok(cli(server, "token", "mint", "revoked")).strip()
    sql = {"sql": "select 1"}
    url = f"{server.url}/v1/tenants/revoked/query"
    assert httpx.post(url, json=sql, headers=bearer(old)).status_code == 200
    out = ok(cli(server, "token", "revoke", "revoked"))
    assert out.startswith("revoked the tokens of tenant revoked minted before ")
    r = httpx.post(url, json=sql, headers=bearer(old))
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
    new = ok(cli(server, "token", "mint", "revoked")).strip()
    assert httpx.post(url, json=sql, headers=bearer(new)).status_code == 200
    body = json.loads(ok(cli(server, "token", "revoke", "revoked", "--json")))
    assert body["tenant"] == "revoked" and body["revoked_at"].endswith("Z")
    assert httpx.post(url, json=sql, headers=bearer(new)).status_code == 401


def test_revoke_for_missing_tenant_fails_404(server: ServerProcess) -> None:
    fails(cli(server, "token", "revoke", "nobody"), "tenant 'nobody' does not exist", "HTTP 404")


# -- reaching the server and authenticating ----------------------------------------------------


def test_unreachable_server_is_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    fails(cli(None, "tenant", "list", "--url", url, "--admin-key", "k"), f"cannot reach sqlfleet at {url}")


def test_silent_server_times_out() -> None:
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        result = cli(None, "tenant", "list", "--url", url, "--admin-key", "k", "--timeout", "0.3")
    fails(result, f"sqlfleet at {url} did not answer within 0.3s")


def test_url_without_scheme_is_refused() -> None:
    usage_error(
        cli(None, "tenant", "list", "--url", "127.0.0.1:8080", "--admin-key", "k"), "must start with http://"
    )


# every admin command, with what it needs to get as far as asking the server
ADMIN_COMMANDS = [
    ["tenant", "create", "x"],
    ["tenant", "list"],
    ["tenant", "info", "x"],
    ["tenant", "delete", "x", "--yes"],
    ["tenant", "export", "x", "/nonexistent-dir/x.db"],
    ["token", "mint", "x"],
    ["token", "revoke", "x"],
    ["restore", "x", "--to", "latest"],
    ["restore", "--all"],
    ["backups", "ls", "x"],
    ["backups", "rekey"],
    ["backups", "tenants"],
    ["group", "list"],
    ["group", "schema", "g"],
    ["migrate", "g"],
    ["status"],
    ["cluster", "status"],
    ["cluster", "drain", "node-1"],
]


@pytest.mark.parametrize("args", ADMIN_COMMANDS, ids=" ".join)
@pytest.mark.parametrize("url", ["not-a-url", "http://", "http://[::1"])
def test_a_url_that_is_not_one_is_a_usage_error_of_every_admin_command(args: list[str], url: str) -> None:
    # refused before anything else is looked at: no key is given and no key file exists
    result = cli(None, *args, "--url", url, "--data-dir", "/nonexistent-dir")
    usage_error(result, "invalid URL")
    assert result.stdout == ""


def test_something_that_is_not_sqlfleet_is_one_line() -> None:
    class Teapot(Quiet):
        def do_GET(self) -> None:
            status = 418 if "/v1/admin/tenants/" in self.path else 200
            self.answer(status, b"<html><h1>I am a teapot</h1></html>" if status == 418 else b"[1, 2]")

    with loopback_http(Teapot) as url:
        fails(
            cli(None, "tenant", "info", "acme", "--url", url, "--admin-key", "k"), "I am a teapot", "HTTP 418"
        )
        fails(cli(None, "tenant", "list", "--url", url, "--admin-key", "k"), "not a JSON object")


def test_wrong_admin_key_fails_401_saying_so_and_where_the_key_came_from(
    server: ServerProcess, tmp_path: Path
) -> None:
    said = "not the admin key, nor a well-formed token"
    result = cli(server, "tenant", "list", env={"SQLFLEET_ADMIN_KEY": "not-the-key"})
    line = fails(result, "the server rejected the admin key from SQLFLEET_ADMIN_KEY", said, "HTTP 401")
    assert "segments" not in line  # PyJWT's own words say nothing to an operator
    result = cli(server, "tenant", "list", "--admin-key", "sfa_wrong", env={"SQLFLEET_ADMIN_KEY": None})
    fails(result, "the server rejected the admin key from --admin-key", said)
    (tmp_path / "admin.key").write_text("sfa_stale\n")
    result = cli(server, "tenant", "list", "--data-dir", str(tmp_path), env={"SQLFLEET_ADMIN_KEY": None})
    fails(result, f"the server rejected the admin key from {tmp_path / 'admin.key'}", said)


def test_tenant_token_as_admin_key_fails_403(server: ServerProcess) -> None:
    create(server, "tokened")
    token = ok(cli(server, "token", "mint", "tokened")).strip()
    fails(cli(server, "tenant", "list", "--admin-key", token), "not the server's admin key", "HTTP 403")


def test_admin_key_falls_back_to_the_data_dirs_key_file(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    data_dir = xdg / "sqlfleet"  # the default data dir when XDG_DATA_HOME=xdg
    with run_server(data_dir, env={"SQLFLEET_ADMIN_KEY": ""}) as server:  # generates admin.key
        assert (data_dir / "admin.key").exists()
        url = {"SQLFLEET_URL": server.url, "XDG_DATA_HOME": str(tmp_path / "empty")}
        ok(cli(None, "tenant", "create", "from-file", env={**url, "SQLFLEET_DATA_DIR": str(data_dir)}))
        ok(cli(None, "tenant", "info", "from-file", "--data-dir", str(data_dir), env=url))
        default_dir = {"SQLFLEET_URL": server.url, "XDG_DATA_HOME": str(xdg)}
        assert "from-file" in ok(cli(None, "tenant", "list", env=default_dir))
        # an explicit key wins over the file
        bad = {**default_dir, "SQLFLEET_ADMIN_KEY": "wrong"}
        fails(cli(None, "tenant", "list", env=bad), "HTTP 401")
        missing = str(tmp_path / "empty" / "sqlfleet" / "admin.key")
        fails(cli(None, "tenant", "list", env=url), "no admin key", missing)
        (data_dir / "admin.key").write_text(" \n")
        fails(cli(None, "tenant", "list", "--data-dir", str(data_dir), env=url), "is empty")


# -- the real executable -----------------------------------------------------------------------


def test_console_script_in_a_subprocess(server: ServerProcess) -> None:
    assert SCRIPT.exists(), "the sqlfleet console script is not installed (pip install -e .)"
    env = subprocess_env(server)
    created = run([str(SCRIPT), "tenant", "create", "scripted", "--json"], env)
    assert created.returncode == 0 and json.loads(created.stdout)["id"] == "scripted", created.stderr
    token = run(["sh", "-c", f'TOKEN=$("{SCRIPT}" token mint scripted) && printf %s "$TOKEN"'], env).stdout
    r = httpx.post(f"{server.url}/v1/tenants/scripted/query", json={"sql": "select 1"}, headers=bearer(token))
    assert r.status_code == 200
    listed = run([sys.executable, "-m", "ops", "tenant", "list", "--prefix", "scripted"], env)
    assert listed.returncode == 0 and table_ids(listed.stdout) == ["scripted"]
    failed = run([str(SCRIPT), "tenant", "list"], subprocess_env(server, f"http://127.0.0.1:{free_port()}"))
    assert failed.returncode == 1 and failed.stdout == ""
    assert failed.stderr.startswith("Error: cannot reach sqlfleet at") and failed.stderr.count("\n") == 1


def test_help_lists_the_admin_commands() -> None:
    out = ok(cli(None, "--help"))
    assert "tenant" in out and "token" in out
    for command in ("create", "list", "info", "delete"):
        assert command in ok(cli(None, "tenant", "--help"))
    assert "--admin-key" in ok(cli(None, "token", "mint", "--help"))
    assert "revoke" in ok(cli(None, "token", "--help"))
