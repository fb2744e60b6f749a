"""The S3 replica goes away under write load (moto stopped): writes go on, the metrics show it,
the backlog is bounded, and once S3 is back the replica catches up with no gap."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from backups.errors import ReplicaError
from tests.support.app import ADMIN, InProcess, in_process
from tests.support.backups import metric, query, restore_ok, values
from tests.support.s3 import BUCKET, REGION, MotoServer, unique_prefix
from tests.support.waiting import wait_until


def s3_settings(s3: MotoServer, **more: Any) -> dict[str, Any]:
    return {
        "replica_url": f"s3://{BUCKET}/{unique_prefix('faults')}",
        "s3_endpoint_url": s3.url,
        "s3_region": REGION,
        "s3_force_path_style": True,
        "backup_flush_interval": 0.1,
        **more,
    }


def insert(app: InProcess, tenant: str, v: Any, blob: int = 0) -> Any:
    return app.client.post(
        f"/v1/tenants/{tenant}/query",
        headers=ADMIN,
        json={"sql": "INSERT INTO t(v, b) VALUES (?, randomblob(?))", "params": [v, blob]},
    )


def make(app: InProcess, tenant: str) -> None:
    app.create(tenant)
    query(app.client, tenant, "CREATE TABLE t(v, b)")


def test_an_outage_delays_shipping_and_loses_nothing(
    tmp_path: Path, s3: MotoServer, aws_environment: dict[str, str]
) -> None:
    with in_process(tmp_path / "data", **s3_settings(s3, backup_checkpoint_frames=8)) as app:
        tenants = ["red", "blue"]
        acked: dict[str, list[tuple[float, int]]] = {t: [] for t in tenants}  # (moment after, value)

        def write(i: int) -> None:
            tenant = tenants[i % 2]
            r = insert(app, tenant, i, 2000)
            assert r.status_code == 200, r.text  # writes go on whatever the replica does
            acked[tenant].append((time.time(), i))
            time.sleep(0.01)

        for t in tenants:
            make(app, t)
        for i in range(10):
            write(i)
        errors = metric(app.client, "sqlfleet_backup_upload_errors_total")
        s3.stop()
        outage = range(10, 40)
        for i in outage:
            write(i)
        wait_until(lambda: metric(app.client, "sqlfleet_backup_upload_errors_total") > errors, 10)
        assert metric(app.client, "sqlfleet_backup_backlog_bytes") > 0
        assert metric(app.client, "sqlfleet_backup_lag_max_seconds") > 0
        s3.start()
        for i in range(40, 46):
            write(i)

        # the replica catches up by itself (no restore has flushed it)
        wait_until(lambda: metric(app.client, "sqlfleet_backup_backlog_bytes") == 0, 30, 0.2)
        # restore proves there is no gap: every moment gives exactly what was acknowledged by then
        for tenant, history in acked.items():
            for k, (moment, _) in enumerate(history[2::3]):
                fork = f"{tenant}-{k}"
                restore_ok(app.client, tenant, moment, fork)
                assert values(app, fork) == [v for t, v in history if t <= moment], (tenant, moment)


def test_the_backlog_bound_stops_writes_until_the_replica_is_back(
    tmp_path: Path, s3: MotoServer, aws_environment: dict[str, str]
) -> None:
    with in_process(tmp_path / "data", **s3_settings(s3, backup_max_backlog_bytes=40_000)) as app:
        make(app, "busy")
        make(app, "calm")
        wait_until(lambda: metric(app.client, "sqlfleet_backup_backlog_bytes") == 0, 10)
        s3.stop()
        acked = []
        refused = None
        for i in range(100):
            r = insert(app, "busy", i, 3000)
            if r.status_code != 200:
                refused = r
                break
            acked.append(i)
        assert refused is not None, "the backlog never filled"
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "tenant_unavailable"
        assert refused.headers["Retry-After"]
        assert 2 <= len(acked) < 30
        assert values(app, "busy") == acked  # reads still work
        assert insert(app, "busy", "no", 0).status_code == 503
        assert insert(app, "calm", "yes", 0).status_code == 200  # the bound is per tenant

        s3.start()
        wait_until(lambda: insert(app, "busy", "back", 0).status_code == 200, 30, 0.2)
        restore_ok(app.client, "busy", "latest", "busy-copy")
        assert values(app, "busy-copy") == [*acked, "back"]


def test_backups_flush_raises_while_the_replica_is_down(
    tmp_path: Path, s3: MotoServer, aws_environment: dict[str, str]
) -> None:
    settings = s3_settings(s3, backup_flush_interval=3600)
    with in_process(tmp_path / "data", **settings) as app:
        backups = app.server.backups
        assert backups is not None
        make(app, "acme")
        backups.flush()
        s3.stop()
        assert insert(app, "acme", "during", 0).status_code == 200
        with pytest.raises(ReplicaError):
            backups.flush()
        s3.start()
        backups.flush()  # returns once it is durable: no background flush runs (interval 1 h)
        assert backups.shipper.backlog_bytes("acme") == 0
        restore_ok(app.client, "acme", "latest", "copy")
        assert values(app, "copy") == ["during"]
