"""Admin routes that need the replica answer within the request's deadline while it hangs (S3
not answering): a delete (its flushes wait a bounded time; the tombstone ships later), restore,
describe, verify, rebuild, rekey and the restorable listing answer 503 replica_unavailable with
Retry-After; what may still take effect says its outcome is unknown; a few threads at most."""

from __future__ import annotations

import time
from pathlib import Path

from tests.backups.test_ack import NEVER, insert, make, s3_settings, shipper, unshipped
from tests.support.app import ADMIN, in_process
from tests.support.s3 import MotoServer
from tests.support.waiting import wait_until

TIMEOUT = 1.0  # request_timeout
BOUND = TIMEOUT + 1.5  # the answer's bound, with slack for a busy machine


def test_admin_routes_answer_within_the_deadline_while_the_replica_hangs(
    tmp_path: Path, s3: MotoServer, aws_environment: dict[str, str]
) -> None:
    settings = s3_settings(s3, backup_flush_interval=NEVER, request_timeout=TIMEOUT)
    with in_process(tmp_path / "data", **settings) as app:
        for tenant in ("a", "gone"):
            make(app, tenant)
            assert insert(app, tenant, 1).status_code == 200
        shipper(app).flush()
        assert not unshipped(app, "a")
        s3.freeze()  # connections are accepted, never answered
        try:
            started = time.monotonic()
            r = app.client.delete("/v1/admin/tenants/gone", headers=ADMIN)
            assert r.status_code == 204 and time.monotonic() - started < BOUND, r.text
            assert shipper(app).deletion_pending("gone")  # recorded in the replica later
            calls = [
                ("POST", "/v1/admin/tenants/a/restore", {"timestamp": "latest", "as": "a2"}, True),
                ("GET", "/v1/admin/tenants/a/backups", None, False),
                ("POST", "/v1/admin/tenants/a/backups/verify", None, False),
                ("POST", "/v1/admin/backups/rebuild", None, True),
                ("POST", "/v1/admin/backups/rekey", {}, True),  # the threads are busy: not begun
                ("GET", "/v1/admin/backups/tenants", None, False),
            ]
            for method, path, body, changes in calls:
                started = time.monotonic()
                r = app.client.request(method, path, json=body, headers=ADMIN)
                assert r.status_code == 503 and time.monotonic() - started < BOUND, (path, r.text)
                error = r.json()["error"]
                assert error["code"] == "replica_unavailable" and int(r.headers["Retry-After"]) >= 1
                unknown = "outcome is unknown" in error["message"]
                assert unknown == (changes and path != "/v1/admin/backups/rekey"), (path, error)
                assert unknown or "nothing was changed" in error["message"], (path, error)
        finally:
            s3.thaw()
        wait_until(lambda: shipper(app).flush() and not shipper(app).deletion_pending("gone"), timeout=60)
        # the restore that answered "unknown" went on once the replica answered
        wait_until(
            lambda: app.client.get("/v1/admin/tenants/a2", headers=ADMIN).status_code == 200, timeout=60
        )
