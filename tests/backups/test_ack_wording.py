"""What a refused durable ack (ack=replica) tells the client: a request that only read is told
it read (retry), even while another request's write of the same tenant commits; a write is
told its outcome is unknown. In every protocol: REST, Hrana over HTTP, Hrana over WebSocket."""

from __future__ import annotations

import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.backups.test_ack import NEVER, s3_settings
from tests.support.app import ADMIN, ADMIN_KEY
from tests.support.s3 import MotoServer
from tests.support.waiting import wait_until
from tests.support.websocket import HranaSocket, Live, execute, hrana_socket, live_server

# A server's arrival of a request whose body is held back: long enough for it to begin (the gate
# notes when). Only the old wording needed it to show its fault; the new one holds regardless.
ARRIVAL = 0.5


class HeldRequest:
    """A POST whose headers go now and whose body goes in `finish`: the server has the request
    (it began) before the body, which the route waits for."""

    def __init__(self, url: str, path: str, body: dict[str, Any]) -> None:
        where = urlsplit(url)
        self.conn = http.client.HTTPConnection(where.hostname or "", where.port, timeout=30)
        self.body = json.dumps(body).encode()
        self.conn.putrequest("POST", path)
        self.conn.putheader("Authorization", f"Bearer {ADMIN_KEY}")
        self.conn.putheader("Content-Type", "application/json")
        self.conn.putheader("Content-Length", str(len(self.body)))
        self.conn.endheaders()

    def finish(self) -> tuple[int, Any]:
        try:
            self.conn.send(self.body)
            response = self.conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            self.conn.close()


def unshipped(live: Live, tenant: str) -> bool:
    backups = live.server.backups
    assert backups is not None
    ledger = backups.shipper.ledger
    return ledger.has_unshipped(tenant, ledger.clock())


def open_socket(ws: HranaSocket, token: str) -> None:
    assert ws.hello(token)["type"] == "hello_ok"
    assert ws.call({"type": "open_stream", "stream_id": 1})["type"] == "response_ok"


def insert(url: str) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=30) as client:
        body = {"sql": "INSERT INTO t(v) VALUES (2)"}
        return client.post("/v1/tenants/a/query", json=body, headers=ADMIN)


def is_read(text: str) -> bool:
    return "would show" in text and "outcome" not in text


def is_write(text: str) -> bool:
    return "outcome is unknown" in text and "would show" not in text


def test_a_read_while_a_write_commits_is_told_it_read(
    tmp_path: Path, s3: MotoServer, aws_environment: dict[str, str]
) -> None:
    settings = s3_settings(s3, backup_flush_interval=NEVER, ack="replica", request_timeout=2.0)
    with live_server(tmp_path / "data", **settings) as live:
        live.create("a")
        r = live.client.post("/v1/tenants/a/query", json={"sql": "CREATE TABLE t(v)"}, headers=ADMIN)
        assert r.status_code == 200, r.text
        token = live.token("a")
        with (
            hrana_socket(live.ws_url + "/v1/tenants/a") as reader,
            hrana_socket(live.ws_url + "/v1/tenants/a") as writer,
            ThreadPoolExecutor(1) as pool,
        ):
            open_socket(reader, token)
            open_socket(writer, token)
            rest = HeldRequest(live.url, "/v1/tenants/a/query", {"sql": "SELECT count(*) FROM t"})
            pipeline = HeldRequest(
                live.url,
                "/v1/tenants/a/v2/pipeline",
                {"requests": [{"type": "execute", "stmt": {"sql": "SELECT count(*) FROM t"}}]},
            )
            time.sleep(ARRIVAL)
            s3.freeze()  # the replica hangs: every response of tenant a waits, then is refused
            try:
                wrote = pool.submit(insert, live.url)
                wait_until(lambda: unshipped(live, "a"))  # the write committed and waits
                # reads that began before that commit and answer after it, and one more write
                reader.request(execute(1, "SELECT count(*) FROM t"))
                writer.request(execute(1, "INSERT INTO t(v) VALUES (3)"))
                rest_status, rest_body = rest.finish()
                pipeline_status, pipeline_body = pipeline.finish()
                read_close = reader.closed_with(timeout=30)
                write_close = writer.closed_with(timeout=30)
                w = wrote.result(timeout=30)
            finally:
                s3.thaw()

    assert w.status_code == 503 and w.json()["error"]["code"] == "replica_unavailable", w.text
    assert is_write(w.json()["error"]["message"]), w.text

    assert rest_status == 503 and rest_body["error"]["code"] == "replica_unavailable", rest_body
    assert is_read(rest_body["error"]["message"]), rest_body
    assert pipeline_status == 503 and pipeline_body["code"] == "REPLICA_UNAVAILABLE", pipeline_body
    assert is_read(pipeline_body["message"]), pipeline_body

    code, reason = read_close
    assert code == 1011 and reason is not None and reason.startswith("replica_unavailable: "), reason
    assert is_read(reason) and len(reason.encode()) <= 123, reason
    code, reason = write_close
    assert code == 1011 and reason is not None and reason.startswith("replica_unavailable: "), reason
    assert is_write(reason) and len(reason.encode()) <= 123, reason
