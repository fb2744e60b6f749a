"""kill -9 of a real server while many tenant creates run at once (so catalog rows, backup
positions and directory fsyncs are group-committed): every create that was answered 201
survives the restart whole (its row, its file, the first snapshot of its backups), and every
create in flight either happened whole or not at all."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from tenants.rfc3339 import format_time
from tests.support.server import ServerProcess, start_server

CREATORS = 16  # as many as the server's worker threads: creates share commits
KILL_AFTER = 120  # acknowledged creates before the kill


def create_until_killed(
    server: ServerProcess, worker: int, acked: dict[str, float], tried: list[str]
) -> None:
    """Create w<worker>-0, -1, ... until the server dies; note each acknowledged id with the
    moment its 201 arrived, and every id tried."""
    with server.client(timeout=10) as http:
        for n in range(100_000):
            tenant = f"w{worker:02d}-{n}"
            tried.append(tenant)
            try:
                r = http.post("/v1/admin/tenants", json={"id": tenant})
            except httpx.HTTPError:
                return  # killed
            assert r.status_code == 201, r.text
            acked[tenant] = time.time()


def test_acknowledged_creates_survive_kill9(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # a long flush interval: the first snapshots of the new tenants wait on local disk (carried)
    env = {"SQLFLEET_BACKUP_FLUSH_INTERVAL": "3600"}
    server = start_server(data, env=env)
    acked: dict[str, float] = {}
    tried: list[str] = []
    try:
        threads = [
            threading.Thread(target=create_until_killed, args=(server, w, acked, tried))
            for w in range(CREATORS)
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while len(acked) < KILL_AFTER and time.monotonic() < deadline:
            time.sleep(0.005)
        server.kill9()  # while creates are in flight
        for thread in threads:
            thread.join(30)
    finally:
        server.terminate()
    assert len(acked) >= KILL_AFTER
    in_flight = set(tried) - set(acked)
    assert in_flight  # the kill did cut creates short
    # first snapshots of concurrent creates shared files (backups.carry), still waiting there
    assert list((data / "system" / "carry").glob("pack-*.carry"))

    with start_server(data, env=env) as again, again.client() as http:
        listed = http.get("/v1/admin/tenants", params={"limit": 1000}).json()["tenants"]
        states = {t["id"]: t["state"] for t in listed}
        assert set(acked) <= set(states)
        assert set(states) <= set(tried)
        assert set(states.values()) == {"active"}  # a cut-short create left nothing half-made
        for tenant, answered in sorted(acked.items()):
            # its first snapshot is the one taken when it was made, before the 201, not one
            # taken anew after the restart
            described = http.get(f"/v1/admin/tenants/{tenant}/backups")
            assert described.status_code == 200, described.text
            taken = [s["taken"] for s in described.json()["snapshots"] if s["lsn"] == 0]
            assert taken and min(taken) <= format_time(answered), (tenant, taken)
        for tenant in sorted(states):
            r = http.post(f"/v1/tenants/{tenant}/query", json={"sql": "CREATE TABLE t(x)"})
            assert r.status_code == 200, (tenant, r.text)
