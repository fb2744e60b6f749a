"""Disaster recovery of a whole fleet, with real server processes shipping (encrypted) to S3
(moto): a fleet with two schema groups, migrations, a finished rollout, tenants in groups and
tokens minted loses its data dir; a new server on an empty one, with the same signing key and
bucket, and `sqlfleet restore --all` bring back the groups, each tenant's creation time, group,
schema version and tokens, and a follow-up rollout runs across the restored tenants. With
another signing key, restore --all warns that old tokens will not work."""

from __future__ import annotations

import base64
import json
import shutil
import time
from pathlib import Path
from typing import Any

import httpx

from ops import keys
from tests.support.cli import cli, ok
from tests.support.s3 import MotoServer, unique_prefix
from tests.support.server import ServerProcess, run_server
from tests.support.waiting import wait_until

SHOP = "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL);"
BLOG = "CREATE TABLE posts(id INTEGER PRIMARY KEY, title TEXT);"
TENANTS = {"s1": "shop", "s2": "shop", "b1": "blog", "p1": None}


def env_for(s3: MotoServer, tmp_path: Path, prefix: str, signing_key: Path | None) -> dict[str, str]:
    keyfile = tmp_path / "backup-keys"
    if not keyfile.exists():
        keyfile.write_text("k1:" + base64.b64encode(b"\x07" * 32).decode() + "\n")
    env = {
        **s3.server_env(prefix),
        "SQLFLEET_BACKUP_FLUSH_INTERVAL": "0.1",
        "SQLFLEET_BACKUP_ENCRYPTION_KEY_FILE": str(keyfile),
    }
    if signing_key is not None:
        env["SQLFLEET_SIGNING_KEY_FILE"] = str(signing_key)
    return env


def signing_key_file(folder: Path) -> Path:
    """A signing key kept outside the data dir, as the chart keeps it in a Secret."""
    keys.signing_key(None, folder)
    return folder / "signing-key.pem"


def call(http: httpx.Client, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
    r = http.request(method, path, **kwargs)
    assert r.status_code == status, (method, path, r.text)
    return r.json() if r.content else None


def query(server: ServerProcess, token: str, tenant: str, sql: str, status: int = 200) -> Any:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as http:
        return call(http, "POST", f"/v1/tenants/{tenant}/query", status, json={"sql": sql})


def rollout(http: httpx.Client, group: str) -> dict[str, Any]:
    started = call(http, "POST", f"/v1/admin/groups/{group}/rollouts", 202, json={})
    path = f"/v1/admin/groups/{group}/rollouts/{started['id']}"
    done: dict[str, Any] = wait_until(
        lambda: (s := call(http, "GET", path))["state"] != "running" and s, timeout=60
    )
    return done


def build_fleet(server: ServerProcess) -> dict[str, Any]:
    """Groups shop (a migration, rolled out) and blog, four tenants with rows, a token each
    (s2's first one revoked); returns what must survive."""
    with server.client() as http:
        call(http, "POST", "/v1/admin/groups", 201, json={"name": "shop", "schema": SHOP})
        call(http, "POST", "/v1/admin/groups", 201, json={"name": "blog", "schema": BLOG})
        for tenant, group in TENANTS.items():
            call(http, "POST", "/v1/admin/tenants", 201, json={"id": tenant, "group": group})
        migration = {"name": "price", "sql": "ALTER TABLE items ADD COLUMN price REAL DEFAULT 0;"}
        call(http, "POST", "/v1/admin/groups/shop/migrations", 201, json=migration)
        assert rollout(http, "shop")["state"] == "completed"
        tokens = {
            t: call(http, "POST", f"/v1/admin/tenants/{t}/tokens", json={"expires_in": 3600})["token"]
            for t in TENANTS
        }
        revoked = tokens["s2"]
        call(http, "POST", "/v1/admin/tenants/s2/tokens/revoke")
        tokens["s2"] = call(http, "POST", "/v1/admin/tenants/s2/tokens", json={})["token"]
        info = {t: call(http, "GET", f"/v1/admin/tenants/{t}") for t in TENANTS}
        status = {t: call(http, "GET", f"/v1/admin/groups/shop/tenants/{t}") for t in ("s1", "s2")}
        history = call(http, "GET", "/v1/admin/groups/shop/rollouts")["rollouts"]
    for tenant, group in TENANTS.items():
        table = "posts(id, title)" if group == "blog" else "items(id, name)" if group else "notes(id, name)"
        if group is None:
            query(server, tokens[tenant], tenant, "CREATE TABLE notes(id INTEGER PRIMARY KEY, name TEXT)")
        query(server, tokens[tenant], tenant, f"INSERT INTO {table} VALUES (1, '{tenant}')")
    with server.client() as http:
        call(http, "GET", "/v1/admin/backups/tenants")  # flushes: segments and fleet metadata
    return {"tokens": tokens, "revoked": revoked, "info": info, "status": status, "history": history}


def lose(server: ServerProcess) -> None:
    """The disaster: the process dies and its data dir is gone."""
    server.kill9()
    shutil.rmtree(server.data_dir)


def test_the_whole_fleet_comes_back_with_its_groups_and_tokens(tmp_path: Path, s3: MotoServer) -> None:
    env = env_for(s3, tmp_path, unique_prefix("dr"), signing_key_file(tmp_path / "secret"))
    with run_server(tmp_path / "old" / "data", env=env) as old:
        before = build_fleet(old)
        lose(old)

    with run_server(tmp_path / "new" / "data", env=env) as new:
        tokens = before["tokens"]
        # asked for before restore --all: restored on first use, as itself
        assert query(new, tokens["p1"], "p1", "SELECT name FROM notes")["rows"] == [["p1"]]

        body = json.loads(ok(cli(new, "restore", "--all", "--json")))
        assert sorted(r["tenant"] for r in body["restored"]) == ["b1", "s1", "s2"] and body["failed"] == []
        assert body["groups"] == {"restored": [], "present": ["blog", "shop"], "failed": {}}  # at start
        assert body["warning"] is None and body["tokens"]["survive"] is True

        for tenant, group in TENANTS.items():  # old tokens work; the revoked one stays revoked
            table = "posts" if group == "blog" else "items" if group else "notes"
            column = "title" if group == "blog" else "name"
            assert query(new, tokens[tenant], tenant, f"SELECT {column} FROM {table}")["rows"] == [[tenant]]
        query(new, before["revoked"], "s2", "SELECT 1", status=401)

        with new.client() as http:
            shop = call(http, "GET", "/v1/admin/groups/shop")
            assert shop["released"] == 1 and [m["name"] for m in shop["migrations"]] == ["0001_price"]
            assert call(http, "GET", "/v1/admin/groups/blog")["released"] == 0
            assert call(http, "GET", "/v1/admin/groups/shop/rollouts")["rollouts"] == before["history"]
            for tenant in TENANTS:  # created, group kept
                info = call(http, "GET", f"/v1/admin/tenants/{tenant}")
                kept = ("created_at", "group")
                assert {k: info[k] for k in kept} == {k: before["info"][tenant][k] for k in kept}
            for tenant in ("s1", "s2"):  # schema version kept
                status = call(http, "GET", f"/v1/admin/groups/shop/tenants/{tenant}")
                assert status["applied"] == before["status"][tenant]["applied"] and status["pending"] == []

            # a follow-up rollout across the restored tenants
            tags = {"name": "tags", "sql": "ALTER TABLE items ADD COLUMN tags TEXT;"}
            call(http, "POST", "/v1/admin/groups/shop/migrations", 201, json=tags)
            done = rollout(http, "shop")
            assert (done["state"], done["migrated"], done["failed"]) == ("completed", 2, 0)
        assert query(new, tokens["s1"], "s1", "SELECT name, price, tags FROM items")["rows"] == [
            ["s1", 0, None]
        ]


def test_restore_all_warns_when_old_tokens_will_not_work(tmp_path: Path, s3: MotoServer) -> None:
    prefix = unique_prefix("dr-key")
    old_env = env_for(s3, tmp_path, prefix, signing_key_file(tmp_path / "secret"))
    with run_server(tmp_path / "old" / "data", env=old_env) as old:
        with old.client() as http:
            call(http, "POST", "/v1/admin/groups", 201, json={"name": "shop", "schema": SHOP})
            call(http, "POST", "/v1/admin/tenants", 201, json={"id": "s1", "group": "shop"})
            token = call(http, "POST", "/v1/admin/tenants/s1/tokens", json={})["token"]
            call(http, "GET", "/v1/admin/backups/tenants")
        lose(old)

    # the signing key was not kept: the new server generates another one
    with run_server(tmp_path / "new" / "data", env=env_for(s3, tmp_path, prefix, None)) as new:
        result = cli(new, "restore", "--all")
        out = ok(result)
        assert "restored 1 of 1 missing tenants" in out
        warning = " ".join(result.stderr.split())  # rich wraps long lines
        assert "Warning: the tokens of 1 tenants will not work after this restore" in warning
        assert "signing_key_file" in warning
        with new.client() as http:
            assert call(http, "GET", "/v1/admin/tenants/s1")["group"] == "shop"
            again = call(http, "POST", "/v1/admin/backups/fleet/restore")
            assert again["tenants_to_restore"] == 0 and again["warning"] is None  # nothing left to restore
        query(new, token, "s1", "SELECT 1", status=401)


def test_a_tenant_deleted_and_created_again_comes_back_as_the_newer_one(
    tmp_path: Path, s3: MotoServer
) -> None:
    """Deleted, then created again under the same id: restore --all brings back the newer one
    with its own tokens; the token of the deleted one stays refused."""
    env = env_for(s3, tmp_path, unique_prefix("dr-again"), signing_key_file(tmp_path / "secret"))
    with run_server(tmp_path / "old" / "data", env=env) as old:
        with old.client() as http:
            call(http, "POST", "/v1/admin/tenants", 201, json={"id": "t1"})
            first = call(http, "POST", "/v1/admin/tenants/t1/tokens", json={})["token"]
            call(http, "DELETE", "/v1/admin/tenants/t1", 204)
            time.sleep(0.05)
            call(http, "POST", "/v1/admin/tenants", 201, json={"id": "t1"})
            second = call(http, "POST", "/v1/admin/tenants/t1/tokens", json={})["token"]
            call(http, "GET", "/v1/admin/backups/tenants")
        lose(old)
    with run_server(tmp_path / "new" / "data", env=env) as new:
        body = json.loads(ok(cli(new, "restore", "--all", "--json")))
        assert [r["tenant"] for r in body["restored"]] == ["t1"] and body["warning"] is None
        query(new, second, "t1", "SELECT 1")
        query(new, first, "t1", "SELECT 1", status=401)
