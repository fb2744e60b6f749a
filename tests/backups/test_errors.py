"""What a client reads of a replica's failure (backups.errors `public`): what happened in its
terms, never the replica's endpoint, bucket, object keys or a server path; the full text and
detail stay for the log."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from typing import Any

from starlette.requests import Request

from backups.errors import BackupBroken, ReplicaNotFound, ReplicaUnavailable, ShippingIOError
from router.errors import handle_sqlfleet_error, render
from router.hrana.protocol import Error
from tests.backups.test_ack import insert, make, s3_settings
from tests.backups.test_ack_admin import leaks
from tests.support.app import ADMIN, in_process
from tests.support.backups import restore
from tests.support.s3 import BUCKET, MotoServer


def test_replica_errors_reach_clients_in_user_terms() -> None:
    detail: dict[str, Any] = {"bucket": BUCKET, "key": "segments/n1/0001"}
    for exc in (
        ReplicaUnavailable(f"S3 unreachable: Could not connect to http://127.0.0.1:9/{BUCKET}", **detail),
        ReplicaNotFound(f"S3 NoSuchKey: segments/n1/0001 in {BUCKET}", **detail),
    ):
        body = bytes(render(exc).body).decode()
        assert exc.code in body and not leaks(body), body
        assert not leaks(Error.of(exc).message)
        assert leaks(str(exc)) and exc.detail == detail  # the full text and detail stay for the log


def test_a_broken_backup_says_what_is_wrong_without_object_keys() -> None:
    exc = BackupBroken("backup of 'a' cannot be decoded: segment 'p/segments/0001.seg' chunk 3 is cut short")
    message = exc.to_json()["error"]["message"]
    assert message.startswith("backup of 'a' cannot be decoded") and "chunk 3 is cut short" in message
    assert not leaks(message), message
    gap = BackupBroken("backup of 'a' lacks LSNs 4..4")
    assert gap.public() is gap


def test_a_restore_behind_the_replica_does_not_quote_the_flush_error(
    tmp_path: Path, s3: MotoServer, aws_environment: dict[str, str]
) -> None:
    with in_process(tmp_path / "data", **s3_settings(s3, backup_flush_interval=0.2)) as app:
        make(app, "a")
        s3.stop()
        assert insert(app, "a", 1).status_code == 200  # ack=local: acknowledged, not shipped
        r = restore(app.client, "a", "latest", "a-copy")
        assert r.status_code == 503 and r.json()["error"]["code"] == "backup_behind", r.text
        assert "not in the replica yet" in r.text and not leaks(r.text, s3), r.text
        assert app.client.get("/v1/admin/tenants/a", headers=ADMIN).status_code == 200
        s3.start()


def test_a_full_disk_is_507_without_the_path() -> None:
    full = OSError(errno.ENOSPC, "No space left on device", "/srv/sqlfleet/system/spool/x")
    exc = ShippingIOError(f"backup flush: {full}")
    exc.__cause__ = full
    request = Request({"type": "http", "method": "PUT", "path": "/v1/admin/tenants/a/import", "headers": []})
    response = asyncio.run(handle_sqlfleet_error(request, exc))
    body = bytes(response.body).decode()
    assert response.status_code == 507 and "disk is full" in body and "/srv/" not in body, body
