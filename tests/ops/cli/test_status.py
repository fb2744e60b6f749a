"""`sqlfleet status` against a real server: one screen, or --json, built from its endpoints."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from ops.cli.status import render
from tests.support.cli import cli
from tests.support.server import run_server


def test_status_shows_health_tenants_pool_and_shipping(tmp_path: Path) -> None:
    with run_server(tmp_path / "data", "--pool-capacity", "7") as server:
        with server.client() as client:
            for tenant in ("a", "b"):
                assert client.post("/v1/admin/tenants", json={"id": tenant}).status_code == 201
            assert client.post("/v1/tenants/a/query", json={"sql": "create table t(x)"}).status_code == 200
            assert client.post("/v1/admin/groups", json={"name": "shop"}).status_code == 201
        answer = cli(server, "status", "--json")
        assert answer.exit_code == 0, answer.output
        state = json.loads(answer.output)
        assert state["ready"] is True
        assert state["checks"] == {"data_dir_lock": True, "accepting": True, "replica": True}
        assert state["tenants"]["active"] == 2
        assert state["pool"]["capacity"] == 7 and state["pool"]["open"] >= 1
        assert state["bytes_on_disk"] >= 2 * 4096
        assert state["backups"]["backlog_bytes"] >= 0 and state["rollouts"] == []
        screen = cli(server, "status", env={"COLUMNS": "200"})
        assert screen.exit_code == 0, screen.output
        for text in ("READY", "2 total: 2 active", "/ 7 open", "lag", "none running"):
            assert text in screen.output, screen.output
        wrong = cli(server, "status", env={"SQLFLEET_ADMIN_KEY": "nope"})
        assert wrong.exit_code == 1 and "Traceback" not in wrong.output
    gone = cli(server, "status", "--timeout", "2")
    assert gone.exit_code == 1 and "cannot reach" in gone.output


def test_the_screen_lists_running_rollouts_and_failing_checks() -> None:
    pool = {"open": 1, "capacity": 10, "hits": 3, "misses": 1, "evictions": 0}
    backups = {"lag_max_seconds": 12.5, "backlog_bytes": 8192, "upload_errors": 4, "segments_uploaded": 9}
    rollout = {"group": "shop", "id": "r1", "done": 2, "failed": 0, "remaining": 1, "eta_s": 0.5}
    state = {
        "url": "http://x",
        "ready": False,
        "checks": {"data_dir_lock": True, "replica": False},
        "replica": {"failed_flushes_in_a_row": 4, "last_success": None},
        "tenants": {"active": 3},
        "bytes_on_disk": 3 << 20,
        "pool": pool,
        "backups": backups,
        "rollouts": [rollout],
        "cluster": None,
    }
    out = io.StringIO()
    Console(file=out, width=200).print(render(state))
    text = out.getvalue()
    pieces = ["NOT READY", "replica FAILING", "3.0 MiB", "75.0% hits", "lag 12.50 s", "8.0 KiB"]
    pieces += ["4 failed flushes", "shop/r1: 2 done, 0 failed, 1 left, eta 0.5 s"]
    for piece in pieces:
        assert piece in text, (piece, text)
