"""The shipper's memory is bounded whatever one commit's size (issue 10, finding 3: one 400 MB
/batch took the server from 73 MB to 2 GB while it shipped). A real server process ships one
~150 MB commit, snapshots it, restores it as a new tenant and verifies it, while psutil samples
its RSS; then the restored tenant's rows are compared with the original's."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import apsw
import httpx
import psutil

from ops.process import ServerProcess
from tenants.layout import Layout
from tests.support.server import run_server
from tests.support.waiting import wait_until

ROWS, BLOB = 150_000, 1000  # one commit of ~150 MB: randomblob does not compress
GROWTH_BOUND = 96 << 20  # the old code grew by about 5 times the commit


class PeakRss:
    """Samples a process's resident set size in a thread, from `start` until `stop`."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self._process = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.start_rss = self.peak = self._process.memory_info().rss

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def start(self) -> PeakRss:
        self._thread.start()
        return self

    def stop(self) -> int:
        """The peak growth over the RSS at construction."""
        self._stop.set()
        self._thread.join()
        return self.peak - self.start_rss


def call(http: httpx.Client, method: str, url: str, body: Any = None) -> Any:
    r = http.request(method, url, json=body)
    assert r.status_code in (200, 201), r.text
    return r.json() if r.content else None


def snapshots_after_lsn_0(http: httpx.Client, tenant: str) -> bool:
    described = call(http, "GET", f"/v1/admin/tenants/{tenant}/backups")  # flushes first
    return described["backlog_bytes"] == 0 and any(s["lsn"] > 0 for s in described["snapshots"])


def ship_snapshot_restore_verify(server: ServerProcess) -> int:
    """The scenario, against a running server; returns the peak RSS growth while it ran."""
    with server.client(timeout=600) as http:
        call(http, "POST", "/v1/admin/tenants", {"id": "big", "group": None})
        call(http, "POST", "/v1/tenants/big/query", {"sql": "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)"})
        call(http, "POST", "/v1/tenants/big/query", {"sql": "INSERT INTO t(v) VALUES (randomblob(100))"})
        call(http, "GET", "/v1/admin/backups/tenants")  # warmed up and shipped: the baseline
        third = ROWS // 3
        insert = (
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<?) "
            "INSERT INTO t(v) SELECT randomblob(?) FROM c"
        )
        rss = PeakRss(server.proc.pid).start()
        try:
            batch = {"statements": [{"sql": insert, "params": [third, BLOB]}] * 3}  # one commit
            call(http, "POST", "/v1/tenants/big/batch", batch)
            # shipped, then checkpointed and snapshotted (more than backup_snapshot_bytes shipped)
            wait_until(lambda: snapshots_after_lsn_0(http, "big"), timeout=300, interval=0.5)
            call(http, "POST", "/v1/admin/tenants/big/restore", {"timestamp": "latest", "as": "copy"})
            call(http, "GET", "/v1/admin/backups/tenants")  # the copy's own first snapshot shipped
            verified = call(http, "POST", "/v1/admin/tenants/big/backups/verify")
        finally:
            growth = rss.stop()
        assert verified["ok"], verified
        assert verified["pages"] * 4096 > ROWS * BLOB
    return growth


def rows_digest(path: Path) -> tuple[int, str]:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        digest, count = hashlib.sha256(), 0
        for row_id, value in conn.execute("SELECT id, v FROM t ORDER BY id"):
            digest.update(f"{row_id}:".encode() + bytes(value))
            count += 1
        return count, digest.hexdigest()
    finally:
        conn.close()


def test_shipping_snapshotting_and_restoring_a_large_commit_keeps_memory_bounded(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with run_server(data_dir, "--statement-timeout", "300") as server:
        growth = ship_snapshot_restore_verify(server)
        assert server.terminate(60) == 0  # checkpoints every shipped WAL: the files are whole

    assert growth < GROWTH_BOUND, f"RSS grew by {growth >> 20} MiB while shipping {ROWS * BLOB >> 20} MB"
    layout = Layout(data_dir)
    original, restored = rows_digest(layout.tenant_path("big")), rows_digest(layout.tenant_path("copy"))
    assert original[0] == 3 * (ROWS // 3) + 1
    assert restored == original
