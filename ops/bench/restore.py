"""Restore time of a large tenant, for `sqlfleet bench backups`: one snapshot, many commits
after it, then a timed restore of `latest` into a new tenant."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ops.bench.driver import Driver
from ops.bench.errors import BenchError
from ops.bench.s3 import delta, scrape
from ops.bench.server import BenchServer, running_server
from ops.bench.shipping import INSERT_SQL, ROW, admin_http, check, setup_tenants
from tenants.rfc3339 import parse_time

_BLOBS = (
    "INSERT INTO blobs(b) WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
    "SELECT randomblob(?) FROM n"
)


def measure_restore(
    shipping: Mapping[str, str],
    data_dir: Path,
    serve_args: Sequence[str],
    mb: int,
    commits: int,
    clients: int,
    deadline: float,
) -> dict[str, Any]:
    """Load `mb` MB, take one snapshot of it, make `commits` commits and no new snapshot (three
    server runs on one data dir with different snapshot settings, each shipping with the
    environment `shipping`), then time a restore."""
    base = list(serve_args)
    never = ["--backup-snapshot-bytes", str(1 << 40), "--backup-snapshot-interval", "1e9"]
    tenant = "big"

    def query(driver: Driver, sql: str, params: list[Any] | None = None) -> bytes:
        return driver.request("POST", f"/v1/tenants/{tenant}/query", {"sql": sql, "params": params or []})

    with running_server(data_dir, [*base, *never], shipping) as server:
        driver = Driver(server, clients, deadline)
        setup_tenants(driver, [tenant], 1)
        check(driver.run("blobs", [query(driver, "CREATE TABLE blobs (b BLOB)")], 1, 1), 1, "blobs", server)
        load = query(driver, _BLOBS, [256, 4000])  # ~1 MB a statement
        check(driver.run("load", [load], mb, 1), mb, "load", server)
    with running_server(data_dir, [*base, "--backup-snapshot-interval", "0.05"], shipping) as server:
        snapshot = _snapshot_now(server, tenant)
    with running_server(data_dir, [*base, *never], shipping) as server:
        driver = Driver(server, clients, deadline)
        check(
            driver.run("commits", [query(driver, INSERT_SQL, [ROW])], commits, 4), commits, "commits", server
        )
        with admin_http(server, timeout=600) as http:
            size = http.get(f"/v1/admin/tenants/{tenant}").json()["size"]
            before, started = scrape(server.url), time.perf_counter()
            r = http.post(
                f"/v1/admin/tenants/{tenant}/restore", json={"timestamp": "latest", "as": "restored"}
            )
            seconds = time.perf_counter() - started
            if r.status_code != 200:
                raise BenchError(f"restore failed: {r.status_code} {r.text}\n{server.log_tail()}")
            server_seconds = delta(before, scrape(server.url), "sqlfleet_restore_duration_seconds_sum")
            count = {"sql": "SELECT count(*) FROM kv"}
            rows = [
                http.post(f"/v1/tenants/{t}/query", json=count).json()["rows"][0][0]
                for t in (tenant, "restored")
            ]
    if rows[0] != rows[1]:
        raise BenchError(f"the restored tenant has {rows[1]} rows, the original {rows[0]}")
    return {
        "db_bytes": size,
        "snapshot_bytes": snapshot["bytes"],
        "commits_since_snapshot": commits,
        "commits_applied": r.json()["commits_applied"],
        "seconds": round(seconds, 3),
        "server_seconds": round(server_seconds, 3),
    }


def _snapshot_now(server: BenchServer, tenant: str, wait: float = 300.0) -> dict[str, Any]:
    """Commit once and wait for the snapshot that follows (the server's snapshot interval is short)."""
    with admin_http(server) as http:
        since = time.time()
        r = http.post(f"/v1/tenants/{tenant}/query", json={"sql": INSERT_SQL, "params": [ROW]})
        if r.status_code != 200:
            raise BenchError(f"commit before the snapshot: {r.status_code} {r.text}\n{server.log_tail(60)}")
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            for snap in http.get(f"/v1/admin/tenants/{tenant}/backups").json()["snapshots"]:
                if parse_time(snap["taken"]) >= since:
                    return dict(snap)
            time.sleep(0.1)
    raise BenchError(f"no snapshot of {tenant} within {wait:g} s\n{server.log_tail()}")
