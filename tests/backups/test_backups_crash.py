"""kill -9 of a real server process under write load, shipping to S3 (moto): every acknowledged
write survives on disk, the replica holds every commit shipped before the kill, and after the
restart shipping resumes with no gap."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tenants.rfc3339 import format_time
from tests.support.backups import metric
from tests.support.s3 import MotoServer, unique_prefix
from tests.support.server import ServerProcess, start_server

FLUSH = 0.1
WRITERS = ["w0", "w1", "w2", "w3"]


def values(http: httpx.Client, tenant: str) -> list[Any]:
    r = http.post(f"/v1/tenants/{tenant}/query", json={"sql": "SELECT v FROM t ORDER BY v"})
    assert r.status_code == 200, r.text
    return [row[0] for row in r.json()["rows"]]


def restore_fork(http: httpx.Client, tenant: str, moment: str, fork: str) -> list[Any]:
    r = http.post(f"/v1/admin/tenants/{tenant}/restore", json={"timestamp": moment, "as": fork})
    assert r.status_code == 200, r.text
    return values(http, fork)


def load(server: ServerProcess, tenant: str, acked: list[tuple[int, float]], stop: threading.Event) -> None:
    """Insert 0, 1, 2, ... one commit each until stopped or the server dies; note each
    acknowledged value with the moment its answer arrived."""
    with server.client(timeout=5) as http:
        for i in range(100_000):
            if stop.is_set():
                return
            try:
                r = http.post(
                    f"/v1/tenants/{tenant}/query",
                    json={"sql": "INSERT INTO t(v, pad) VALUES (?, randomblob(500))", "params": [i]},
                )
            except httpx.HTTPError:
                return  # killed
            assert r.status_code == 200, r.text
            acked.append((i, time.time()))


def test_kill9_under_load_then_restart(tmp_path: Path, s3: MotoServer) -> None:
    env = {
        **s3.server_env(unique_prefix("crash")),
        "SQLFLEET_BACKUP_FLUSH_INTERVAL": str(FLUSH),
        "SQLFLEET_BACKUP_CHECKPOINT_FRAMES": "40",
    }
    data = tmp_path / "data"
    server = start_server(data, env=env)
    try:
        with server.client() as http:
            for tenant in WRITERS:
                assert http.post("/v1/admin/tenants", json={"id": tenant}).status_code == 201
                r = http.post(f"/v1/tenants/{tenant}/query", json={"sql": "CREATE TABLE t(v INTEGER, pad)"})
                assert r.status_code == 200, r.text
        acked: dict[str, list[tuple[int, float]]] = {t: [] for t in WRITERS}
        stop = threading.Event()
        threads = [threading.Thread(target=load, args=(server, t, acked[t], stop)) for t in WRITERS]
        for thread in threads:
            thread.start()
        lag = 0.0  # the largest commit-to-replica lag the server reports while under load
        with server.client() as http:
            for _ in range(8):
                time.sleep(0.2)
                lag = max(lag, metric(http, "sqlfleet_backup_lag_max_seconds"))
        killed_at = time.time()
        server.kill9()
        stop.set()
        for thread in threads:
            thread.join(10)
        assert all(len(a) >= 3 for a in acked.values()), {t: len(a) for t, a in acked.items()}

        server = start_server(data, env=env)
        with server.client() as http:
            for tenant, done in acked.items():
                on_disk = values(http, tenant)
                # every acknowledged write is there (and perhaps the one in flight at the kill)
                assert on_disk == list(range(len(on_disk))) and len(on_disk) >= len(done), tenant
                shipped = restore_fork(http, tenant, format_time(killed_at), f"{tenant}-at-kill")
                assert shipped == list(range(len(shipped))), tenant  # a prefix: no gap
                # shipped before the kill: all that was acknowledged a little longer ago than
                # shipping takes (2 flush intervals, plus the lag seen on this busy machine)
                settled = [v for v, t in done if t <= killed_at - 2 * FLUSH - lag]
                assert len(shipped) >= len(settled), (tenant, len(shipped), len(settled), lag)

            # shipping resumes: later writes are restorable, continuing the history with no gap
            for tenant in WRITERS:
                start = len(values(http, tenant))
                for v in range(start, start + 5):
                    r = http.post(
                        f"/v1/tenants/{tenant}/query",
                        json={"sql": "INSERT INTO t(v) VALUES (?)", "params": [v]},
                    )
                    assert r.status_code == 200, r.text
                assert restore_fork(http, tenant, "latest", f"{tenant}-latest") == list(range(start + 5))
                verified = http.post(f"/v1/admin/tenants/{tenant}/backups/verify")
                assert verified.status_code == 200 and verified.json()["ok"], verified.text
    finally:
        server.terminate()
