"""`sqlfleet backups rekey` against real server processes: a fleet backed up unencrypted, the
server restarted with a key file, rekey in small batches with progress on stderr, then restores
that need the old backups work again."""

from __future__ import annotations

import time
from pathlib import Path

from backups.keyring import Keyring
from tests.support.cli import as_json, cli, fails, ok
from tests.support.server import ServerProcess, run_server, sql

FAST = ("--backup-flush-interval", "0.2")


def shipped(server: ServerProcess, tenant: str) -> None:
    with server.client() as http:
        for _ in range(200):
            if http.get(f"/v1/admin/tenants/{tenant}/backups").json()["backlog_bytes"] == 0:
                return
            time.sleep(0.05)
    raise AssertionError(f"{tenant}: not shipped")


def test_rekey_encrypts_a_fleet_backed_up_before_encryption(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with run_server(data, *FAST) as server:
        for tenant in ("orders", "users"):
            with server.client() as http:
                assert http.post("/v1/admin/tenants", json={"id": tenant}).status_code == 201
            sql(server, tenant, "CREATE TABLE t (x)")
            sql(server, tenant, "INSERT INTO t VALUES (1), (2)")
            shipped(server, tenant)
        fails(cli(server, "backups", "rekey"), "not encrypted", "backup_encryption_off")
    keys = tmp_path / "keys"
    keys.write_text(Keyring.generate("k1") + "\n")
    with run_server(data, *FAST, "--backup-encryption-key-file", str(keys)) as server:
        refused = cli(server, "restore", "orders", "--to", "latest", "--as", "copy")
        fails(refused, "sqlfleet backups rekey", "backup_not_encrypted")

        result = cli(server, "backups", "rekey", "--batch", "1")
        out = ok(result)
        assert "sealed with key k1" in out and "re-encrypted now" in out
        assert "re-encrypting" in result.stderr  # the progress bar, on stderr
        again = as_json(cli(server, "backups", "rekey", "--json"))
        assert again["key_id"] == "k1" and again["rewritten"] == 0 and again["segments"] >= 2
        assert again["missing"] == 0

        ok(cli(server, "restore", "orders", "--to", "latest", "--as", "copy"))
        assert sql(server, "copy", "SELECT x FROM t ORDER BY x") == [[1], [2]]
