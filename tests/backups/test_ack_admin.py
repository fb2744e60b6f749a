"""Durable acks (ack=replica) for the admin writes of a tenant, and what a refusal tells the
client: a create (its tenant named in the body), a delete, a restore to another name answer only
once in the replica; while the replica is down they answer 503 like every other write; the
message says what happened in the client's terms (never the replica's endpoint, bucket or keys)
and tells a read's refusal from a write's."""

from __future__ import annotations

from pathlib import Path

from backups import fleet_doc
from tests.backups.test_ack import NEVER, insert, make, s3_settings, shipper, unshipped
from tests.support.app import ADMIN, in_process
from tests.support.backups import restore_ok
from tests.support.s3 import BUCKET, MotoServer


def leaks(text: str, s3: MotoServer | None = None) -> list[str]:
    """What of the server's internals `text` names."""
    words = ["http://", "https://", BUCKET, "segments/", "S3 "]
    if s3 is not None:
        words.append(s3.url)
    return [w for w in words if w in text]


def test_admin_writes_answer_once_in_the_replica(tmp_path: Path) -> None:
    settings = {"replica_url": str(tmp_path / "replica"), "backup_flush_interval": NEVER, "ack": "replica"}
    with in_process(tmp_path / "data", **settings) as app:
        r = app.client.post("/v1/admin/tenants", json={"id": "a"}, headers=ADMIN)
        assert r.status_code == 201, r.text
        assert not unshipped(app, "a")  # the 201 came after the flush that put it in the replica
        make(app, "b")
        assert insert(app, "b", 1).status_code == 200
        assert restore_ok(app.client, "b", "latest", "b-copy")
        assert not unshipped(app, "b-copy")  # the restore's target, named in its body
        assert app.client.delete("/v1/admin/tenants/a", headers=ADMIN).status_code == 204
        ledger = shipper(app).ledger
        assert not ledger.deletion_pending("a") and not unshipped(app, "a")


def test_a_create_answers_once_its_identity_is_in_the_replica(tmp_path: Path) -> None:
    """Under ack=replica a tenant created just before its node died kept its data through a
    takeover but not its identity (its tokens failed): the 201 waits for the fleet metadata
    round that carries the identity too."""
    settings = {"replica_url": str(tmp_path / "replica"), "backup_flush_interval": NEVER, "ack": "replica"}
    with in_process(tmp_path / "data", **settings) as app:
        r = app.client.post("/v1/admin/tenants", json={"id": "a"}, headers=ADMIN)
        assert r.status_code == 201, r.text
        backups = app.server.backups
        assert backups is not None
        published = fleet_doc.read_namespace(backups.replica, backups.meta.server).records
        row = app.server.fleet.catalog.get("a")
        assert row is not None and "a" in published, published
        assert (published["a"].incarnation, published["a"].token_generation) == (
            row.incarnation,
            row.token_generation,
        )


def test_admin_writes_answer_503_while_the_replica_is_down(
    tmp_path: Path, s3: MotoServer, aws_environment: dict[str, str]
) -> None:
    settings = s3_settings(s3, backup_flush_interval=NEVER, ack="replica", request_timeout=2.0)
    with in_process(tmp_path / "data", **settings) as app:
        make(app, "a")
        assert insert(app, "a", 1).status_code == 200
        s3.stop()
        refused = [
            app.client.post("/v1/admin/tenants", json={"id": "new"}, headers=ADMIN),
            app.client.delete("/v1/admin/tenants/a", headers=ADMIN),
        ]
        for r in refused:
            assert r.status_code == 503, r.text
            error = r.json()["error"]
            assert error["code"] == "replica_unavailable" and "outcome is unknown" in error["message"], error
            assert not leaks(r.text, s3), r.text
        s3.start()
        # the unknown writes did happen here, and ship
        r = app.client.get("/v1/admin/tenants/new", headers=ADMIN)
        assert r.status_code == 200, r.text
        assert app.client.get("/v1/admin/tenants/a", headers=ADMIN).status_code == 404


def test_a_refusal_tells_a_read_from_a_write_and_names_no_server_internals(
    tmp_path: Path, s3: MotoServer, aws_environment: dict[str, str]
) -> None:
    settings = s3_settings(s3, backup_flush_interval=NEVER, ack="replica", request_timeout=2.0)
    with in_process(tmp_path / "data", **settings) as app:
        make(app, "a")
        s3.stop()
        wrote = insert(app, "a", 1)
        assert wrote.status_code == 503, wrote.text
        message = wrote.json()["error"]["message"]
        assert "outcome is unknown" in message and not leaks(message, s3), message
        # a read of the row not in the replica yet: refused too (the output gate), as a read
        read = app.client.post("/v1/tenants/a/query", json={"sql": "SELECT v FROM t"}, headers=ADMIN)
        assert read.status_code == 503, read.text
        message = read.json()["error"]["message"]
        assert "would show" in message and "outcome" not in message and not leaks(message, s3), message
        s3.start()


def test_a_revocation_and_a_group_change_answer_once_in_the_replica(
    tmp_path: Path, s3: MotoServer, aws_environment: dict[str, str]
) -> None:
    """They reach the replica in the fleet metadata, not in a tenant's commits: their answers
    wait for its publishing round, and while the replica is down they are 503 as writes."""
    settings = s3_settings(s3, backup_flush_interval=NEVER, ack="replica", request_timeout=1.0)
    with in_process(tmp_path / "data", **settings) as app:
        make(app, "a")
        backups = app.server.backups
        assert backups is not None
        r = app.client.post("/v1/admin/tenants/a/tokens/revoke", headers=ADMIN)
        assert r.status_code == 200, r.text
        assert backups.meta.record("a") is not None
        s3.stop()
        try:
            refused = [
                app.client.post("/v1/admin/tenants/a/tokens/revoke", headers=ADMIN),
                app.client.post(
                    "/v1/admin/groups", json={"name": "g", "schema": "CREATE TABLE x(y)"}, headers=ADMIN
                ),
            ]
            for r in refused:
                assert r.status_code == 503, r.text
                message = r.json()["error"]["message"]
                assert "outcome is unknown" in message and "would show" not in message, message
                assert not leaks(message, s3), message
        finally:
            s3.start()
        r = app.client.post("/v1/admin/tenants/a/tokens/revoke", headers=ADMIN)
        assert r.status_code == 200, r.text
