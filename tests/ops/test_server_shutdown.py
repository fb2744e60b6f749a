"""SIGTERM to a real server under write load: every acknowledged write is on disk and in the
replica, every tenant WAL is checkpointed, and the process exits 0 within shutdown_timeout."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import httpx

from tenants.layout import Layout
from tests.support.server import run_server, start_server

TENANTS = ("red", "green", "blue", "gold")
TIMEOUT = 10.0


def _writer(url: str, headers: dict[str, str], tenant: str, acked: list[int], stop: threading.Event) -> None:
    with httpx.Client(base_url=url, headers=headers, timeout=15) as client:
        for i in range(100_000):
            if stop.is_set():
                return
            try:
                r = client.post(
                    f"/v1/tenants/{tenant}/query", json={"sql": "insert into t(v) values (?)", "params": [i]}
                )
            except httpx.HTTPError:
                return  # the server is going away: this write was never acknowledged
            if r.status_code != 200:
                return
            acked.append(i)


def test_sigterm_under_write_load_ships_checkpoints_and_exits_in_time(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data, "--shutdown-timeout", str(TIMEOUT), "--backup-flush-interval", "0.5")
    acked: dict[str, list[int]] = {t: [] for t in TENANTS}
    stop = threading.Event()
    try:
        with server.client() as client:
            for tenant in TENANTS:
                assert client.post("/v1/admin/tenants", json={"id": tenant}).status_code == 201
                r = client.post(f"/v1/tenants/{tenant}/query", json={"sql": "create table t(v)"})
                assert r.status_code == 200
        headers = {"Authorization": f"Bearer {server.admin_key}"}
        threads = [
            threading.Thread(target=_writer, args=(server.url, headers, t, acked[t], stop))
            for t in TENANTS
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        assert all(acked.values()), acked  # load is really running
        started = time.monotonic()
        code = server.terminate(timeout=TIMEOUT + 10)
        took = time.monotonic() - started
        stop.set()
        for thread in threads:
            thread.join(20)
    finally:
        stop.set()
        server.kill9()
    assert code == 0, server.log()
    assert took < TIMEOUT, took
    assert "Traceback" not in server.log()

    layout = Layout(data)
    on_disk: dict[str, list[int]] = {}
    for tenant in TENANTS:
        wal = Path(f"{layout.tenant_path(tenant)}-wal")
        assert not wal.exists() or wal.stat().st_size == 0, (tenant, wal.stat().st_size)
        with sqlite3.connect(f"file:{layout.tenant_path(tenant)}?mode=ro", uri=True) as db:
            on_disk[tenant] = [v for (v,) in db.execute("select v from t order by rowid")]
        db.close()
        assert set(acked[tenant]) <= set(on_disk[tenant]), tenant

    # a new server over the same replica: restore each tenant's latest state as a fork
    env = {"SQLFLEET_REPLICA_URL": str(data / "replica")}
    with run_server(tmp_path / "other", env=env) as other, other.client() as client:
        for tenant in TENANTS:
            body = {"timestamp": "latest", "as": f"{tenant}-copy"}
            r = client.post(f"/v1/admin/tenants/{tenant}/restore", json=body)
            assert r.status_code == 200, r.text
            r = client.post(
                f"/v1/tenants/{tenant}-copy/query", json={"sql": "select v from t order by rowid"}
            )
            assert [v for (v,) in r.json()["rows"]] == on_disk[tenant], tenant  # nothing committed was lost
