"""`sqlfleet restore` and `sqlfleet backups`, driven against real server processes on loopback
that ship to the default local-directory replica (or a shared one, for disaster recovery)."""

from __future__ import annotations

import contextlib
import importlib
import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from openapi_schema_validator import OAS30Validator

from router.openapi import openapi_document
from tenants.rfc3339 import format_time, parse_time
from tests.support.cli import at, cli, fails, ok, usage_error
from tests.support.loopback import Quiet, loopback_http
from tests.support.server import ServerProcess, run_server, sql

FAST = ("--backup-flush-interval", "0.2")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with run_server(tmp_path_factory.mktemp("backups-cli") / "data", *FAST) as running:
        yield running


def make(server: ServerProcess, tenant: str, *values: int) -> None:
    with server.client() as http:
        assert http.post("/v1/admin/tenants", json={"id": tenant}).status_code == 201
    sql(server, tenant, "CREATE TABLE t (x INTEGER)")
    for v in values:
        sql(server, tenant, f"INSERT INTO t VALUES ({v})")


def values(server: ServerProcess, tenant: str) -> list[int]:
    return [row[0] for row in sql(server, tenant, "SELECT x FROM t ORDER BY x")]


def shipped(server: ServerProcess, tenant: str) -> dict[str, Any]:
    """The tenant's restore points once every commit is in the replica (bounded wait)."""
    with server.client() as http:
        for _ in range(100):
            body: dict[str, Any] = http.get(f"/v1/admin/tenants/{tenant}/backups").json()
            if body["backlog_bytes"] == 0 and body == http.get(f"/v1/admin/tenants/{tenant}/backups").json():
                return body
            time.sleep(0.05)
    raise AssertionError(f"{tenant}: backups did not settle: {body}")


def now() -> str:
    """This moment in RFC 3339. Server and test share the clock: a commit acknowledged before
    this call has an earlier commit time, one sent after it a later one."""
    return format_time(time.time())


def table_rows(out: str) -> list[list[str]]:
    return [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines() if line.startswith("│")]


# -- restore -----------------------------------------------------------------------------------


def test_restore_as_a_new_tenant_has_exactly_the_commits_up_to_the_moment(server: ServerProcess) -> None:
    make(server, "orders", 1, 2)
    moment = now()
    sql(server, "orders", "INSERT INTO t VALUES (3)")
    rows = table_rows(ok(cli(server, "restore", "orders", "--to", moment, "--as", "orders-fork")))
    assert len(rows) == 1 and rows[0][0] == "orders-fork"
    assert rows[0][1] <= moment and rows[0][3] == "3"  # create table + two inserts
    assert values(server, "orders-fork") == [1, 2]
    assert values(server, "orders") == [1, 2, 3]


def test_restore_in_place_can_itself_be_undone(server: ServerProcess) -> None:
    make(server, "undo", 1)
    before_mistake = now()
    sql(server, "undo", "DELETE FROM t")
    sql(server, "undo", "INSERT INTO t VALUES (99)")
    ok(cli(server, "restore", "undo", "--to", before_mistake))
    assert values(server, "undo") == [1]
    before_restore = now()  # the restore's own moment: undo it by going back to just before
    sql(server, "undo", "INSERT INTO t VALUES (2)")
    time.sleep(0.01)
    ok(cli(server, "restore", "undo", "--to", before_restore))
    assert values(server, "undo") == [1]
    ok(cli(server, "restore", "undo", "--to", "latest"))
    assert values(server, "undo") == [1]


def test_restore_json_is_the_servers_answer(server: ServerProcess) -> None:
    make(server, "jsoned", 5)
    body = json.loads(ok(cli(server, "restore", "jsoned", "--to", "latest", "--as", "jsoned-2", "--json")))
    assert set(body) == {"tenant", "restored_to", "generation", "commits_applied"}
    assert body["tenant"] == "jsoned-2" and body["commits_applied"] == 2
    assert values(server, "jsoned-2") == [5]


def test_restore_refuses_bad_arguments_before_calling(server: ServerProcess) -> None:
    usage_error(cli(server, "restore"), "name a TENANT")
    usage_error(cli(server, "restore", "orders"), "--to TIME is required")
    usage_error(cli(server, "restore", "orders", "--all"), "no TENANT")
    usage_error(cli(server, "restore", "--all", "--as", "x"), "no TENANT, no --as")
    usage_error(cli(server, "restore", "orders", "--to", "latest", "--rebuild"), "goes with --all")
    usage_error(cli(server, "restore", "orders", "--to", "yesterday"), "not RFC 3339")
    usage_error(cli(server, "restore", "orders", "--to", "2026-01-01T00:00:00"), "needs a time zone")
    usage_error(cli(server, "restore", "orders", "--to", "latest", "--as", "Bad!"), "invalid tenant id")


def test_restore_errors_are_one_line_with_the_servers_code(server: ServerProcess) -> None:
    fails(
        cli(server, "restore", "never-was", "--to", "latest"),
        "does not exist here",
        "HTTP 404 tenant_not_found",
    )
    make(server, "young")
    fails(cli(server, "restore", "young", "--to", "2001-01-01T00:00:00Z"), "HTTP 404")
    fails(cli(server, "restore", "young", "--to", "latest", "--as", "young"), "HTTP 409")


# -- backups ls / verify / rebuild / tenants ---------------------------------------------------------


def test_ls_shows_restore_points_generations_and_snapshots(server: ServerProcess) -> None:
    make(server, "listed", 1)
    served = shipped(server, "listed")
    assert json.loads(ok(cli(server, "backups", "ls", "listed", "--json"))) == served
    out = ok(cli(server, "backups", "ls", "listed"))
    fields = {row[0]: row[1] for row in table_rows(out) if len(row) == 2 and row[0] in ("tenant", "earliest")}
    assert fields == {"tenant": "listed", "earliest": served["earliest"]}
    generation = served["generations"][0]["id"]
    assert [generation, served["generations"][0]["started"]] in table_rows(out)
    assert any(row[:2] == [generation, "0"] for row in table_rows(out))  # the creation snapshot


def test_ls_of_a_tenant_without_backups_fails_404(server: ServerProcess) -> None:
    fails(cli(server, "backups", "ls", "nobody"), "HTTP 404")


def test_verify_of_a_sound_backup_exits_0(server: ServerProcess) -> None:
    make(server, "checked", 1, 2, 3)
    assert "backup of checked matches the live database" in ok(cli(server, "backups", "verify", "checked"))
    body = json.loads(ok(cli(server, "backups", "verify", "checked", "--json")))
    assert body["ok"] is True and body["differing_pages"] == [] and body["pages"] >= 2


def test_rebuild_reports_the_segments_it_read(server: ServerProcess) -> None:
    make(server, "rebuilt", 1)
    segments = json.loads(ok(cli(server, "backups", "rebuild", "--json")))["segments"]
    assert segments >= 1
    assert ok(cli(server, "backups", "rebuild")).strip().startswith("rebuilt the backup catalog from")
    ok(cli(server, "restore", "rebuilt", "--to", "latest", "--as", "rebuilt-2"))
    assert values(server, "rebuilt-2") == [1]


def test_tenants_lists_what_the_bucket_can_restore(server: ServerProcess) -> None:
    make(server, "in-bucket")
    listing = json.loads(ok(cli(server, "backups", "tenants", "--json")))["tenants"]
    assert {"id": "in-bucket", "exists": True, "deleted": None} in listing
    assert ["in-bucket", "yes", "-"] in table_rows(ok(cli(server, "backups", "tenants")))


def test_tenants_lists_deleted_tenants_as_deleted_and_restore_undeletes_them(server: ServerProcess) -> None:
    make(server, "binned", 1)
    with server.client() as http:
        assert http.delete("/v1/admin/tenants/binned").status_code == 204
    listing = json.loads(ok(cli(server, "backups", "tenants", "--json")))["tenants"]
    deleted = next(t for t in listing if t["id"] == "binned")
    assert deleted["exists"] is False and parse_time(deleted["deleted"]) <= time.time()
    row = next(r for r in table_rows(ok(cli(server, "backups", "tenants"))) if r[0] == "binned")
    assert row == ["binned", "no (restore TENANT --to latest)", deleted["deleted"]]
    ok(cli(server, "restore", "binned", "--to", "latest"))
    assert values(server, "binned") == [1]


def test_restore_refuses_a_future_moment_naming_the_latest(server: ServerProcess) -> None:
    make(server, "timely", 1)
    latest = json.loads(ok(cli(server, "backups", "ls", "timely", "--json")))["latest"]
    result = cli(server, "restore", "timely", "--to", "2999-01-01T00:00:00Z", "--as", "timely-2")
    fails(result, "is in the future", f"as of {latest}", "HTTP 400 restore_time_in_future")


def _documented(method: str, template: str, status: int) -> dict[str, Any]:
    """The JSON schema router/openapi/ gives this operation's `status` answer."""
    doc = openapi_document()
    response = doc["paths"][template][method.lower()]["responses"][str(status)]
    if "$ref" in response:
        response = doc["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    schema: dict[str, Any] = response["content"]["application/json"]["schema"]
    return schema


def test_the_backup_routes_answer_as_documented(server: ServerProcess) -> None:
    make(server, "documented", 1)
    calls = [
        ("POST", "/v1/admin/tenants/{tenant}/restore", "documented", {"as": "documented-2"}, 200),
        ("GET", "/v1/admin/tenants/{tenant}/backups", "documented", None, 200),
        ("POST", "/v1/admin/tenants/{tenant}/backups/verify", "documented", None, 200),
        ("POST", "/v1/admin/backups/rebuild", "", None, 200),
        ("GET", "/v1/admin/backups/tenants", "", None, 200),
        ("POST", "/v1/admin/tenants/{tenant}/restore", "documented", {"timestamp": "soon"}, 400),
        ("POST", "/v1/admin/tenants/{tenant}/restore", "documented", {"as": "documented"}, 409),
        ("GET", "/v1/admin/tenants/{tenant}/backups", "absent", None, 404),
        ("POST", "/v1/admin/tenants/{tenant}/backups/verify", "absent", None, 404),
    ]
    root = {"components": openapi_document()["components"]}
    with server.client() as http:
        for method, template, tenant, body, status in calls:
            r = http.request(method, template.replace("{tenant}", tenant), json=body)
            assert r.status_code == status, (method, template, r.text)
            OAS30Validator({**root, **_documented(method, template, status)}).validate(r.json())


# -- disaster recovery -------------------------------------------------------------------------


def test_restore_all_brings_back_every_tenant_on_a_fresh_server(tmp_path: Path) -> None:
    replica = ("--replica-url", str(tmp_path / "bucket"))
    with run_server(tmp_path / "lost" / "data", *FAST, *replica) as old:
        for i in range(3):
            make(old, f"dr-{i}", i, 10 + i)
        make(old, "dr-deleted", 7)
        with old.client() as http:
            assert http.delete("/v1/admin/tenants/dr-deleted").status_code == 204
    with run_server(tmp_path / "fresh" / "data", *FAST, *replica) as new:
        make(new, "dr-1", 42)  # already present here: left alone
        result = cli(new, "restore", "--all")  # the server rebuilt its empty catalog at start
        out = ok(result)
        assert sorted(row[0] for row in table_rows(out)) == ["dr-0", "dr-2"]
        assert "restored 2 of 2 missing tenants (1 already present)" in out
        assert "2/2" in result.stderr  # the progress bar's last state
        assert values(new, "dr-0") == [0, 10] and values(new, "dr-2") == [2, 12]
        assert values(new, "dr-1") == [42]
        with new.client() as http:
            assert http.get("/v1/admin/tenants/dr-deleted").status_code == 404
        again = cli(new, "restore", "--all", "--rebuild", "--json")
        body = json.loads(ok(again))
        assert {k: body[k] for k in ("restored", "failed", "already_present")} == {
            "restored": [],
            "failed": [],
            "already_present": 3,
        }
        assert body["groups"] == {"restored": [], "present": [], "failed": {}} and body["warning"] is None
        assert "rebuilt the backup catalog from" in again.stderr


# -- against a stand-in server: answers a real one gives only in rare states ----------------------


@contextlib.contextmanager
def stand_in(answers: Mapping[tuple[str, str], tuple[int, Any] | list[tuple[int, Any]]]) -> Iterator[str]:
    """An HTTP server answering (method, path) with (status, JSON body), or with each of a list
    of them in turn (the last one from then on); 404 otherwise."""

    class Handler(Quiet):
        def reply(self) -> None:
            self.body()
            answer = answers.get(
                (self.command, self.path), (404, {"error": {"code": "not_found", "message": "no route"}})
            )
            if isinstance(answer, list):
                answer = answer.pop(0) if len(answer) > 1 else answer[0]
            status, body = answer
            self.answer(status, json.dumps(body).encode(), "application/json")

        do_GET = do_POST = reply

    with loopback_http(Handler) as url:
        yield url


def test_verify_of_a_differing_backup_exits_1() -> None:
    verdict = {"tenant": "acme", "ok": False, "pages": 9, "differing_pages": [3, 7], "restored_to": "x"}
    with stand_in({("POST", "/v1/admin/tenants/acme/backups/verify"): (200, verdict)}) as url:
        there = at(url, "key")
        fails(cli(None, "backups", "verify", "acme", env=there), "differs from the live database", "3, 7")
        result = cli(None, "backups", "verify", "acme", "--json", env=there)
        fails(result, alone=False)  # the verdict is on stdout
        assert json.loads(result.stdout) == verdict


NOTHING_TO_RESTORE = {
    "groups": {"restored": [], "present": [], "failed": {}},
    "tenants_to_restore": 2,
    "tokens": {
        "signing_key": "k",
        "minted_with": ["k"],
        "unknown": 0,
        "changed_key": 0,
        "survive": True,
        "warning": None,
    },
    "warning": None,
}


def test_restore_all_goes_on_past_failures_and_exits_1() -> None:
    ok_body = {"tenant": "a", "restored_to": "2026-01-01T00:00:00Z", "generation": "g", "commits_applied": 1}
    broken = {"error": {"code": "backup_broken", "message": "backup has a gap at LSN 7"}}
    exists = {"a": False, "b": False, "c": True}
    listing = {"tenants": [{"id": tenant, "exists": there} for tenant, there in exists.items()]}
    answers = {
        ("POST", "/v1/admin/backups/rebuild"): (200, {"segments": 4}),
        ("POST", "/v1/admin/backups/fleet/restore"): (200, NOTHING_TO_RESTORE),
        ("GET", "/v1/admin/backups/tenants"): (200, listing),
        ("POST", "/v1/admin/tenants/b/restore"): (503, broken),
        ("POST", "/v1/admin/tenants/a/restore"): (200, ok_body),
    }
    with stand_in(answers) as url:
        there = at(url, "key")
        result = cli(None, "restore", "--all", "--rebuild", env=there)
        fails(result, "1 of 2 restores failed: b", alone=False)  # after its progress and the table
        assert "rebuilt the backup catalog from 4 segments" in result.stderr
        assert "restore of b failed: backup has a gap at LSN 7 (backup_broken)" in result.stderr
        rows = table_rows(result.stdout)
        assert rows[0][:2] == ["a", "2026-01-01T00:00:00Z"] and rows[1][0] == "b" and "FAILED" in rows[1][1]
        body = json.loads(cli(None, "restore", "--all", "--json", env=there).stdout)
        assert body["failed"] == [{"tenant": "b", "error": "backup has a gap at LSN 7 (backup_broken)"}]
        assert body["restored"] == [ok_body] and body["already_present"] == 1


def test_restore_all_counts_tenants_found_on_their_way_to_another_node_as_present(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # session 6: run while a node drained, every tenant in transit (listed by no node as
    # present) failed, 43 of 43, with a warning about old tokens though nothing was restored
    monkeypatch.setattr(importlib.import_module("ops.cli.backups"), "RESTORE_RETRY", 0.01)
    ok_body = {"tenant": "b", "restored_to": "2026-01-01T00:00:00Z", "generation": "g", "commits_applied": 1}
    moving = {"error": {"code": "slot_unowned", "message": "slot 3 has no serving owner", "retry_after": 1}}
    exists = {"error": {"code": "tenant_exists", "message": "tenant 'a' already exists"}}
    warned = {**NOTHING_TO_RESTORE, "warning": "old tokens of 2 tenants will not work"}

    def restore_all(*tenants: str, **restores: tuple[int, Any] | list[tuple[int, Any]]) -> Result:
        listing = {"tenants": [{"id": tenant, "exists": False} for tenant in tenants]}
        answers: dict[tuple[str, str], tuple[int, Any] | list[tuple[int, Any]]] = {
            ("POST", "/v1/admin/backups/fleet/restore"): (200, warned),
            ("GET", "/v1/admin/backups/tenants"): (200, listing),
        }
        answers.update({("POST", f"/v1/admin/tenants/{t}/restore"): a for t, a in restores.items()})
        with stand_in(answers) as url:
            return cli(None, "restore", "--all", "--json", env=at(url, "key"))

    # a was handed over meanwhile (it exists: present); c's slot never got an owner (it fails
    # after its tries); nothing restored, so no warning
    result = restore_all("a", "c", a=(409, exists), c=(503, moving))
    fails(result, alone=False)
    body = json.loads(result.stdout)
    assert (body["restored"], body["already_present"], body["warning"]) == ([], 1, None), body
    assert [f["tenant"] for f in body["failed"]] == ["c"]
    # b's slot gets its owner after two tries: restored, and the warning is given
    body = json.loads(ok(restore_all("b", b=[(503, moving), (503, moving), (200, ok_body)])))
    assert (body["restored"], body["failed"], body["warning"]) == ([ok_body], [], warned["warning"]), body
