"""ack=replica with a real server process shipping to S3 (moto): kill -9 it under REST and Hrana
write load, lose its data dir, start a new one on the same bucket, and every acknowledged write
is back (the flush interval is long: with ack=local the last second of acknowledged writes would
be gone with the disk)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import httpx

from tests.support.s3 import MotoServer, unique_prefix
from tests.support.server import ServerProcess, start_server

SECONDS = 1.5  # of write load before the kill


def rest_insert(http: httpx.Client, tenant: str, v: int) -> bool:
    r = http.post(f"/v1/tenants/{tenant}/query", json={"sql": "INSERT INTO t(v) VALUES (?)", "params": [v]})
    assert r.status_code == 200, r.text
    return True


def hrana_insert(http: httpx.Client, tenant: str, v: int) -> bool:
    stmt = {"sql": "INSERT INTO t(v) VALUES (?)", "args": [{"type": "integer", "value": str(v)}]}
    body = {"requests": [{"type": "execute", "stmt": stmt}, {"type": "close"}]}
    r = http.post(f"/v1/tenants/{tenant}/v3/pipeline", json=body)
    assert r.status_code == 200 and r.json()["results"][0]["type"] == "ok", r.text
    return True


WRITERS = {"rest": rest_insert, "hrana": hrana_insert}


def load(server: ServerProcess, tenant: str, acked: list[int], stop: threading.Event) -> None:
    """Insert 0, 1, 2, ... one commit each until stopped or the server dies; note each value
    whose answer came."""
    insert = WRITERS[tenant]
    with server.client(timeout=10) as http:
        for i in range(100_000):
            if stop.is_set():
                return
            try:
                insert(http, tenant, i)
            except httpx.HTTPError:
                return  # killed: this one's outcome is unknown
            acked.append(i)


def values(http: httpx.Client, tenant: str) -> list[Any]:
    r = http.post(f"/v1/tenants/{tenant}/query", json={"sql": "SELECT v FROM t ORDER BY v"})
    assert r.status_code == 200, r.text
    return [row[0] for row in r.json()["rows"]]


def test_kill9_and_a_lost_disk_lose_no_acknowledged_write(tmp_path: Path, s3: MotoServer) -> None:
    env = {
        **s3.server_env(unique_prefix("ack")),
        "SQLFLEET_ACK": "replica",
        "SQLFLEET_BACKUP_FLUSH_INTERVAL": "1.0",
    }
    data = tmp_path / "data"
    server = start_server(data, env=env)
    try:
        with server.client() as http:
            for tenant in WRITERS:
                assert http.post("/v1/admin/tenants", json={"id": tenant}).status_code == 201
                r = http.post(f"/v1/tenants/{tenant}/query", json={"sql": "CREATE TABLE t(v INTEGER)"})
                assert r.status_code == 200, r.text
        acked: dict[str, list[int]] = {t: [] for t in WRITERS}
        stop = threading.Event()
        threads = [threading.Thread(target=load, args=(server, t, acked[t], stop)) for t in WRITERS]
        for thread in threads:
            thread.start()
        stop.wait(SECONDS)
        server.kill9()
        stop.set()
        for thread in threads:
            thread.join(30)
        assert all(len(a) >= 3 for a in acked.values()), {t: len(a) for t, a in acked.items()}

        shutil.rmtree(data)  # the disk is gone with the node
        server = start_server(data, env=env)
        with server.client() as http:
            for tenant, done in acked.items():
                restored = values(http, tenant)  # back from the bucket on first use
                # every acknowledged write, and perhaps the one in flight at the kill
                assert restored == list(range(len(restored))), tenant
                assert len(restored) >= len(done), (tenant, len(restored), len(done))
    finally:
        server.terminate()
