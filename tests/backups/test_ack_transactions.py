"""A refused durable ack (ack=replica) of a transaction that only read, or wrote only TEMP
tables, is told it read (retry); one that wrote is told its outcome is unknown (finding 6 of
issue 17, session 4: a libSQL client's batch() sends BEGIN ... COMMIT in one Hrana pipeline).
Every protocol marks writes in tenants.execute (tests/tenants/test_execute_writes.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.backups.test_ack import NEVER, s3_settings
from tests.backups.test_ack_wording import insert, is_read, is_write, unshipped
from tests.support.app import ADMIN
from tests.support.s3 import MotoServer
from tests.support.waiting import wait_until
from tests.support.websocket import Live, live_server


def pipeline(live: Live, *sql: str) -> tuple[int, Any]:
    requests = [{"type": "execute", "stmt": {"sql": text}} for text in sql]
    r = live.client.post("/v1/tenants/a/v2/pipeline", json={"requests": requests}, headers=ADMIN, timeout=30)
    return r.status_code, r.json()


def test_a_transaction_is_told_a_write_only_when_it_wrote(
    tmp_path: Path, s3: MotoServer, aws_environment: dict[str, str]
) -> None:
    settings = s3_settings(s3, backup_flush_interval=NEVER, ack="replica", request_timeout=2.0)
    with live_server(tmp_path / "data", **settings) as live:
        live.create("a")
        r = live.client.post("/v1/tenants/a/query", json={"sql": "CREATE TABLE t(v)"}, headers=ADMIN)
        assert r.status_code == 200, r.text
        with ThreadPoolExecutor(1) as pool:
            s3.freeze()  # the replica hangs: every response of tenant a waits, then is refused
            try:
                wrote = pool.submit(insert, live.url)
                wait_until(lambda: unshipped(live, "a"))  # a write committed and waits
                read_only = pipeline(live, "BEGIN", "SELECT count(*) FROM t", "COMMIT")
                temp_only = pipeline(
                    live, "BEGIN", "CREATE TEMP TABLE scratch(v)", "INSERT INTO scratch VALUES (1)", "COMMIT"
                )
                written = pipeline(live, "BEGIN", "INSERT INTO t(v) VALUES (5)", "COMMIT")
                wrote.result(timeout=30)
            finally:
                s3.thaw()

    for status, body in (read_only, temp_only, written):
        assert status == 503 and body["code"] == "REPLICA_UNAVAILABLE", body
    assert is_read(read_only[1]["message"]), read_only
    assert is_read(temp_only[1]["message"]), temp_only
    assert is_write(written[1]["message"]), written
