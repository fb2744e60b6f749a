"""Durable acks (ack=replica) and the unshipped-age bound, through the real app: a response goes
only once its commits (or the data it read) are in the replica; a replica that fails or hangs
answers 503 replica_unavailable within the deadline; past max_unshipped_age writes are refused
and rolled back while reads go on; ack=local is unchanged."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import apsw

from backups.shipper import Shipper
from tenants.execute import Statement
from tests.support.app import ADMIN, InProcess, in_process
from tests.support.backups import query, restore_ok, values
from tests.support.s3 import BUCKET, REGION, MotoServer, unique_prefix
from tests.support.waiting import wait_until
from tests.support.websocket import execute, hrana_socket, live_server

NEVER = 3600.0  # a flush interval no test outlives: only a waiting response makes a flush


def s3_settings(s3: MotoServer, **more: Any) -> dict[str, Any]:
    return {
        "replica_url": f"s3://{BUCKET}/{unique_prefix('ack')}",
        "s3_endpoint_url": s3.url,
        "s3_region": REGION,
        "s3_force_path_style": True,
        **more,
    }


def shipper(app: InProcess) -> Shipper:
    backups = app.server.backups
    assert backups is not None
    return backups.shipper


def unshipped(app: InProcess, tenant: str) -> bool:
    ledger = shipper(app).ledger
    return ledger.has_unshipped(tenant, ledger.clock())


def insert(app: InProcess, tenant: str, v: Any) -> Any:
    return app.client.post(
        f"/v1/tenants/{tenant}/query",
        json={"sql": "INSERT INTO t(v) VALUES (?)", "params": [v]},
        headers=ADMIN,
    )


def pipeline(app: InProcess, tenant: str, sql: str, path: str = "v2") -> Any:
    body = {"requests": [{"type": "execute", "stmt": {"sql": sql}}, {"type": "close"}]}
    return app.client.post(f"/v1/tenants/{tenant}/{path}/pipeline", json=body, headers=ADMIN)


def make(app: InProcess, tenant: str) -> None:
    app.create(tenant)
    query(app.client, tenant, "CREATE TABLE t(v)")


def test_ack_replica_answers_once_the_commit_is_in_the_replica(tmp_path: Path) -> None:
    settings = {"replica_url": str(tmp_path / "replica"), "backup_flush_interval": NEVER, "ack": "replica"}
    with in_process(tmp_path / "data", **settings) as app:
        make(app, "a")
        for i in range(3):
            assert insert(app, "a", i).status_code == 200
            assert not unshipped(app, "a")  # the answer came after the flush it asked for
        r = pipeline(app, "a", "INSERT INTO t(v) VALUES (10)")
        assert r.status_code == 200 and r.json()["results"][0]["type"] == "ok", r.text
        assert not unshipped(app, "a")
        r = app.client.post(
            "/v1/tenants/a/batch",
            json={"statements": [{"sql": "INSERT INTO t(v) VALUES (11)"}, {"sql": "SELECT 1"}]},
            headers=ADMIN,
        )
        assert r.status_code == 200 and not unshipped(app, "a")
        # a Hrana cursor streams its entries: each piece formed after a commit waits for it
        batch = {"steps": [{"stmt": {"sql": "INSERT INTO t(v) VALUES (13)"}}, {"stmt": {"sql": "SELECT 1"}}]}
        r = app.client.post("/v1/tenants/a/v3/cursor", json={"baton": None, "batch": batch}, headers=ADMIN)
        assert r.status_code == 200 and '"step_end"' in r.text, r.text
        assert not unshipped(app, "a")

        # the output gate: a commit made past the HTTP layer is unshipped; a read that sees it
        # answers only once it is in the replica
        app.server.fleet.batch("a", [Statement("INSERT INTO t(v) VALUES (12)")])
        assert unshipped(app, "a")
        assert values(app, "a") == [0, 1, 2, 10, 11, 13, 12]
        assert not unshipped(app, "a")
        assert restore_ok(app.client, "a", "latest", "a-copy")
        assert values(app, "a-copy") == [0, 1, 2, 10, 11, 13, 12]


def test_an_import_answers_once_in_the_replica(tmp_path: Path) -> None:
    source = tmp_path / "source.db"
    conn = apsw.Connection(str(source))
    conn.execute("CREATE TABLE t(v); INSERT INTO t(v) VALUES (7)")
    conn.close()
    settings = {"replica_url": str(tmp_path / "replica"), "backup_flush_interval": NEVER, "ack": "replica"}
    with in_process(tmp_path / "data", **settings) as app:
        r = app.client.put("/v1/admin/tenants/imp/import", content=source.read_bytes(), headers=ADMIN)
        assert r.status_code == 201, r.text
        assert not unshipped(app, "imp")
        restore_ok(app.client, "imp", "latest", "imp-copy")
        assert values(app, "imp-copy") == [7]


def test_ack_local_answers_before_the_flush(tmp_path: Path) -> None:
    settings = {"replica_url": str(tmp_path / "replica"), "backup_flush_interval": NEVER}
    with in_process(tmp_path / "data", **settings) as app:
        assert shipper(app).acks is None
        make(app, "a")
        assert insert(app, "a", 1).status_code == 200
        assert unshipped(app, "a")  # acknowledged from the local disk, shipped later
        assert values(app, "a") == [1]


def test_hrana_websocket_answers_once_shipped(tmp_path: Path) -> None:
    settings = {"replica_url": str(tmp_path / "replica"), "backup_flush_interval": NEVER, "ack": "replica"}
    with live_server(tmp_path / "data", **settings) as live:
        live.create("a")
        token = live.token("a")
        backups = live.server.backups
        assert backups is not None
        ledger = backups.shipper.ledger
        with hrana_socket(live.ws_url + "/v1/tenants/a") as ws:
            assert ws.hello(token)["type"] == "hello_ok"
            assert ws.call({"type": "open_stream", "stream_id": 1})["type"] == "response_ok"
            assert ws.call(execute(1, "CREATE TABLE t(v)"))["type"] == "response_ok"
            answer = ws.call(execute(1, "INSERT INTO t(v) VALUES (1)"))
            assert answer["type"] == "response_ok", answer
            assert not ledger.has_unshipped("a", ledger.clock())


def test_a_failing_replica_answers_503_within_the_deadline(
    tmp_path: Path, s3: MotoServer, aws_environment: dict[str, str]
) -> None:
    settings = s3_settings(s3, backup_flush_interval=NEVER, ack="replica", request_timeout=2.0)
    with in_process(tmp_path / "data", **settings) as app:
        make(app, "a")
        assert insert(app, "a", 1).status_code == 200
        s3.stop()
        began = time.monotonic()
        r = insert(app, "a", 2)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "replica_unavailable" and int(r.headers["Retry-After"]) >= 1
        r = pipeline(app, "a", "INSERT INTO t(v) VALUES (3)", "v3")
        assert r.status_code == 503 and r.json()["code"] == "REPLICA_UNAVAILABLE", r.text
        # the output gate: the unshipped rows are not shown either
        r = app.client.post("/v1/tenants/a/query", json={"sql": "SELECT v FROM t"}, headers=ADMIN)
        assert r.status_code == 503, r.text
        assert time.monotonic() - began < 3 * 3.5  # each within request_timeout + MIN_WAIT
        # hung, not refused: the waits still end at the deadline
        s3.freeze()
        began = time.monotonic()
        assert insert(app, "a", 4).status_code == 503
        assert time.monotonic() - began < 2.0 + 1.0 + 1.5
        s3.start()
        # back: the unknown writes did commit here, and ship
        wait_until(lambda: insert(app, "a", 5).status_code == 200, timeout=60)
        assert values(app, "a") == [1, 2, 3, 4, 5]


def test_past_max_unshipped_age_writes_are_refused_and_reads_go_on(
    tmp_path: Path, s3: MotoServer, aws_environment: dict[str, str]
) -> None:
    settings = s3_settings(s3, backup_flush_interval=0.1, max_unshipped_age=0.5)
    with in_process(tmp_path / "data", **settings) as app:
        make(app, "a")
        wait_until(lambda: not unshipped(app, "a"))
        s3.stop()
        assert insert(app, "a", 1).status_code == 200  # within the bound: acknowledged locally
        time.sleep(0.6)
        r = insert(app, "a", 2)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "replica_behind" and int(r.headers["Retry-After"]) >= 1
        r = pipeline(app, "a", "INSERT INTO t(v) VALUES (3)")
        assert r.status_code == 200, r.text
        result = r.json()["results"][0]
        assert result["type"] == "error" and result["error"]["code"] == "REPLICA_BEHIND", result
        assert values(app, "a") == [1]  # reads go on; the refused writes were rolled back
        assert 'sqlfleet_limit_refusals_total{limit="unshipped_age"}' in app.client.get("/metrics").text
        s3.start()
        wait_until(lambda: not unshipped(app, "a"), timeout=60)
        assert insert(app, "a", 4).status_code == 200
        wait_until(lambda: not unshipped(app, "a"), timeout=60)
        restore_ok(app.client, "a", "latest", "a-copy")
        assert values(app, "a-copy") == [1, 4]


def test_a_hrana_websocket_is_closed_when_the_replica_fails(
    tmp_path: Path, s3: MotoServer, aws_environment: dict[str, str]
) -> None:
    settings = s3_settings(s3, backup_flush_interval=NEVER, ack="replica", request_timeout=2.0)
    with live_server(tmp_path / "data", **settings) as live:
        live.create("a")
        token = live.token("a")
        with hrana_socket(live.ws_url + "/v1/tenants/a") as ws:
            assert ws.hello(token)["type"] == "hello_ok"
            assert ws.call({"type": "open_stream", "stream_id": 1})["type"] == "response_ok"
            assert ws.call(execute(1, "CREATE TABLE t(v)"))["type"] == "response_ok"
            s3.stop()
            ws.request(execute(1, "INSERT INTO t(v) VALUES (1)"))
            code, reason = ws.closed_with(timeout=10)
            assert code == 1011 and reason is not None and reason.startswith("replica_unavailable"), reason
            # cut at a word within the 123 bytes a close frame allows
            assert len(reason.encode()) <= 123 and reason.endswith("..."), reason
            whole = (
                "replica_unavailable: the write's outcome is unknown, read it back before retrying: it "
                "is committed on this server but not in the backup replica (tenant 'a': the backup "
                "replica could not be reached; ack=replica)"
            )
            assert f" {reason[:-3].split()[-1]} " in f" {whole} ", reason
