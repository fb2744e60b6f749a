"""Encryption at rest end to end: the real app shipping to the moto S3 server with a key file.
Ship and restore, disaster recovery from the bucket alone, rotation, rekey (then the old key
removed), a missing or wrong key, encryption turned on for an existing replica, and tampered
objects in the bucket: every failure is a clear error naming the key, and nothing changes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backups.crypto import HEADER_PROBE, MAGIC, parse_header
from backups.keyring import Keyring
from backups.s3_replica import S3Replica
from tests.support.app import ADMIN, InProcess, in_process
from tests.support.backups import dump, make, query, restore, restore_ok, values, write
from tests.support.http_contract import assert_error_shape, operation, schema_of, validate
from tests.support.s3 import BUCKET, REGION, MotoServer, unique_prefix

K1 = ("k1", "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=")
K2 = ("k2", "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=")
K1_OTHER = ("k1", "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=")
SECRET = "TOPSECRET-payload"


class Bucket:
    """The app's S3 settings, and a raw client under the same prefix to look behind its back."""

    def __init__(self, server: MotoServer, tmp_path: Path) -> None:
        self.prefix = unique_prefix("enc")
        self.raw: S3Replica = server.replica(self.prefix)
        self.tmp_path = tmp_path
        self.settings: dict[str, Any] = {
            "replica_url": f"s3://{BUCKET}/{self.prefix}",
            "s3_endpoint_url": server.url,
            "s3_region": REGION,
            "s3_force_path_style": True,
            "backup_flush_interval": 0.1,
        }

    def app(self, data: str, *keys: tuple[str, str]) -> Any:
        """The app over data dir `data`, with a key file of `keys` (none: encryption off)."""
        settings = dict(self.settings)
        if keys:
            path = (
                self.tmp_path
                / f"keys-{'-'.join(k for k, _ in keys)}-{len(list(self.tmp_path.glob('keys-*')))}"
            )
            path.write_text("".join(f"{k}:{v}\n" for k, v in keys))
            settings["backup_encryption_key_file"] = str(path)
        return in_process(self.tmp_path / data, **settings)

    def segments(self) -> list[str]:
        return [o.key for o in self.raw.list("segments/")]

    def key_ids(self) -> dict[str, str | None]:
        """Segment key -> the id of the key sealing it (None: not sealed)."""
        ids = {}
        for key in self.segments():
            header = parse_header(self.raw.get_range(key, 0, HEADER_PROBE), key)
            ids[key] = header.key_id if header else None
        return ids


@pytest.fixture
def bucket(s3: MotoServer, aws_environment: dict[str, str], tmp_path: Path) -> Iterator[Bucket]:
    b = Bucket(s3, tmp_path)
    try:
        yield b
    finally:
        b.raw.close()


def failed(reply: Any, code: str, key_id: str | None = None) -> dict[str, Any]:
    assert reply.status_code == 500, reply.text
    assert str(reply.status_code) in documented_statuses(reply)
    assert_error_shape(reply)
    error: dict[str, Any] = reply.json()["error"]
    assert error["code"] == code, error
    if key_id is not None:
        assert error["key_id"] == key_id and f"'{key_id}'" in error["message"], error
    assert "Traceback" not in reply.text
    return error


def documented_statuses(reply: Any) -> set[str]:
    op = operation(reply.request.method, reply.request.url.path)
    assert op is not None
    return set(op["responses"])


def exists(app: InProcess, tenant: str) -> bool:
    return bool(app.client.get(f"/v1/admin/tenants/{tenant}", headers=ADMIN).status_code == 200)


def rekey_all(app: InProcess, limit: int = 2) -> list[dict[str, Any]]:
    answers, after = [], None
    while True:
        r = app.client.post("/v1/admin/backups/rekey", json={"after": after, "limit": limit}, headers=ADMIN)
        assert r.status_code == 200, r.text
        validate(r.json(), schema_of("RekeyBatch"))
        answers.append(r.json())
        after = r.json()["next"]
        if after is None:
            return answers


def test_ship_restore_and_recover_a_fleet_from_an_encrypted_bucket(bucket: Bucket) -> None:
    with bucket.app("data", K1) as app:
        make(app, "acme-secret-tenant", f"{SECRET} one")
        moment = write(app, "acme-secret-tenant", f"{SECRET} two")
        write(app, "acme-secret-tenant", "three")
        assert restore_ok(app.client, "acme-secret-tenant", moment, "copy")["tenant"] == "copy"
        assert values(app, "copy") == [f"{SECRET} one", f"{SECRET} two"]
        verified = app.client.post("/v1/admin/tenants/acme-secret-tenant/backups/verify", headers=ADMIN)
        assert verified.status_code == 200 and verified.json()["ok"], verified.text
        live = dump(app.client, "acme-secret-tenant")
    # every object in the bucket is sealed with k1, and neither the data nor the tenant ids
    # (in the segments' indexes) can be read there
    keys = bucket.key_ids()
    assert keys and set(keys.values()) == {"k1"}
    for key in keys:
        stored = bucket.raw.get(key)
        assert stored.startswith(MAGIC)
        assert SECRET.encode() not in stored and b"acme-secret-tenant" not in stored
    # disaster: a new data dir, the same bucket and key: the catalog is rebuilt from the bucket
    with bucket.app("data-dr", K1) as app:
        listed = app.client.get("/v1/admin/backups/tenants", headers=ADMIN).json()["tenants"]
        assert {t["id"] for t in listed} == {"acme-secret-tenant", "copy"}
        restore_ok(app.client, "acme-secret-tenant", "latest", "acme-secret-tenant")
        assert dump(app.client, "acme-secret-tenant") == live
        rebuilt = app.client.post("/v1/admin/backups/rebuild", headers=ADMIN)
        assert rebuilt.status_code == 200 and rebuilt.json()["segments"] >= len(keys), rebuilt.text


def test_rotate_then_rekey_then_drop_the_old_key(bucket: Bucket) -> None:
    with bucket.app("data", K1) as app:
        before = make(app, "acme", "under k1", "also k1")
    with bucket.app("data", K2, K1) as app:  # rotated: k2 seals, k1 still opens
        after = write(app, "acme", "under k2")
        assert restore_ok(app.client, "acme", before, "at-k1")
        assert values(app, "at-k1") == ["under k1", "also k1"]
        assert set(bucket.key_ids().values()) == {"k1", "k2"}
        latest = dump(app.client, "acme")
    with bucket.app("data", K2) as app:  # k1 removed too early: clear failures, nothing changes
        failed(restore(app.client, "acme", before, "early"), "backup_key_missing", "k1")
        assert not exists(app, "early")
        failed(restore(app.client, "acme", before), "backup_key_missing", "k1")  # in place
        assert dump(app.client, "acme") == latest
        verify = app.client.post("/v1/admin/tenants/acme/backups/verify", headers=ADMIN)
        failed(verify, "backup_key_missing", "k1")
    with bucket.app("data-dr-early", K2) as app:  # a rebuild that cannot read it all adds nothing
        failed(app.client.post("/v1/admin/backups/rebuild", headers=ADMIN), "backup_key_missing", "k1")
        assert app.client.get("/v1/admin/backups/tenants", headers=ADMIN).json()["tenants"] == []
    with bucket.app("data", K2, K1) as app:
        old_segments = set(bucket.segments())
        answers = rekey_all(app, limit=2)
        assert len(answers) >= 2 and all(a["key_id"] == "k2" for a in answers)
        assert sum(a["rewritten"] for a in answers) >= 1 and sum(a["missing"] for a in answers) == 0
        assert sum(a["checked"] for a in answers) >= answers[0]["total"]  # the shipper may add some
        again = rekey_all(app, limit=100)  # idempotent: nothing left to do
        assert sum(a["rewritten"] for a in again) == 0
        assert referenced_key_ids(app, bucket) == {"k2"}
    assert set(bucket.key_ids().values()) == {"k2"}  # old objects deleted once their copies took over
    assert set(bucket.segments()) != old_segments
    with bucket.app("data", K2) as app:  # k1 gone for good: everything still restores
        restore_ok(app.client, "acme", before, "at-k1-again")
        assert values(app, "at-k1-again") == ["under k1", "also k1"]
        restore_ok(app.client, "acme", after, "at-k2")
        assert values(app, "at-k2") == ["under k1", "also k1", "under k2"]
        verify = app.client.post("/v1/admin/tenants/acme/backups/verify", headers=ADMIN)
        assert verify.status_code == 200 and verify.json()["ok"], verify.text
    with bucket.app("data-dr", K2) as app:  # and the bucket alone rebuilds with only k2
        restore_ok(app.client, "acme", before, "acme")
        assert values(app, "acme") == ["under k1", "also k1"]


def test_a_wrong_key_under_the_right_id_fails_clearly_and_changes_nothing(bucket: Bucket) -> None:
    with bucket.app("data", K1) as app:
        moment = make(app, "acme", "a", "b")
    with bucket.app("data", K1_OTHER) as app:
        write(app, "acme", "c")
        error = failed(restore(app.client, "acme", moment), "backup_key_mismatch", "k1")
        assert "another key" in error["message"]
        assert values(app, "acme") == ["a", "b", "c"]
        failed(restore(app.client, "acme", moment, "fork"), "backup_key_mismatch", "k1")
        assert not exists(app, "fork")
    with bucket.app("data-dr", K1_OTHER) as app:  # a rebuild with the wrong key reads nothing
        rebuilt = app.client.post("/v1/admin/backups/rebuild", headers=ADMIN)
        failed(rebuilt, "backup_key_mismatch", "k1")


def test_a_rebuild_that_cannot_open_every_segment_adds_none(bucket: Bucket) -> None:
    with bucket.app("data", K2) as app:
        make(app, "early", "a")
    with bucket.app("data", K1) as app:  # a later segment under a key the rebuild will lack
        make(app, "late", "b")
    with bucket.app("data-dr", K2) as app:
        failed(app.client.post("/v1/admin/backups/rebuild", headers=ADMIN), "backup_key_missing", "k1")
        # not "early" alone: a catalog rebuilt from part of the bucket would restore less than was shipped
        assert app.client.get("/v1/admin/backups/tenants", headers=ADMIN).json()["tenants"] == []


def test_an_encrypted_bucket_without_keys_names_the_key_it_needs(bucket: Bucket) -> None:
    with bucket.app("data", K1) as app:
        moment = make(app, "acme", "a")
    with bucket.app("data") as app:  # the key file forgotten: encryption off
        write(app, "acme", "b")
        failed(restore(app.client, "acme", moment, "fork"), "backup_key_missing", "k1")
        assert not exists(app, "fork") and values(app, "acme") == ["a", "b"]
    with bucket.app("data-dr") as app:  # disaster recovery without the key
        failed(app.client.post("/v1/admin/backups/rebuild", headers=ADMIN), "backup_key_missing", "k1")
        assert app.client.get("/v1/admin/backups/tenants", headers=ADMIN).json()["tenants"] == []


def test_turning_encryption_on_for_an_existing_replica(bucket: Bucket) -> None:
    with bucket.app("data") as app:
        plain_moment = make(app, "acme", "plain")
    assert set(bucket.key_ids().values()) == {None}
    with bucket.app("data", K1) as app:
        later = write(app, "acme", "sealed")
        flush(app)
        assert set(bucket.key_ids().values()) == {None, "k1"}  # new objects are sealed
        # unencrypted objects are refused once encryption is on (one could have been planted),
        # with the fix named; the tenant's snapshot is one of them, so even "latest" waits for it
        for moment in (plain_moment, "latest"):
            error = failed(restore(app.client, "acme", moment, "old"), "backup_not_encrypted")
            assert "sqlfleet backups rekey" in error["message"] and not exists(app, "old")
        rekey_all(app)
        assert referenced_key_ids(app, bucket) == {"k1"}
        restore_ok(app.client, "acme", plain_moment, "old")
        assert values(app, "old") == ["plain"]
        restore_ok(app.client, "acme", later, "later")
        assert values(app, "later") == ["plain", "sealed"]
    with bucket.app("data-dr", K1) as app:  # the bucket alone restores everything
        restore_ok(app.client, "acme", plain_moment, "acme")
        assert values(app, "acme") == ["plain"]


def test_the_catalog_rebuilds_from_a_bucket_with_unencrypted_backups_and_rekey_adopts_them(
    bucket: Bucket,
) -> None:
    with bucket.app("data") as app:
        moment = make(app, "acme", "plain")
    with bucket.app("data-dr", K1) as app:  # encryption on, catalog rebuilt from a plain bucket
        listed = app.client.get("/v1/admin/backups/tenants", headers=ADMIN).json()["tenants"]
        assert [t["id"] for t in listed] == ["acme"]
        failed(restore(app.client, "acme", moment, "acme"), "backup_not_encrypted")
        rekey_all(app)
        restore_ok(app.client, "acme", moment, "acme")
        assert values(app, "acme") == ["plain"]


def flush(app: InProcess) -> None:
    backups = app.server.backups
    assert backups is not None
    backups.flush()


def referenced_key_ids(app: InProcess, bucket: Bucket) -> set[str | None]:
    """Key ids of the segments the server's catalog points at."""
    backups = app.server.backups
    assert backups is not None
    ids = bucket.key_ids()
    return {ids[k] for k in backups.catalog.referenced_segments()}


@pytest.mark.parametrize("damage", ["flip", "truncate", "reorder", "swap"])
def test_tampered_objects_are_detected_and_never_applied(bucket: Bucket, damage: str) -> None:
    with bucket.app("data", K1) as app:
        moment = make(app, "acme", "a")
        flush(app)
        query(app.client, "acme", "CREATE TABLE big(b)")
        query(app.client, "acme", "INSERT INTO big VALUES (randomblob(300000))")  # several blocks
        write(app, "acme", "b")
        flush(app)
        # the segment holding the blob's frames: several blocks, written after `moment`'s segment
        target = max(bucket.raw.list("segments/"), key=lambda o: o.size).key
        other = sorted(bucket.segments())[0]
        assert target != other
        stored = bucket.raw.get(target)
        header = parse_header(stored, target)
        assert header is not None
        step = header.block_size + 16
        if damage == "flip":
            changed = bytearray(stored)
            changed[len(changed) // 2] ^= 0x10
            bucket.raw.put(target, bytes(changed))
        elif damage == "truncate":
            bucket.raw.put(target, stored[: len(stored) - 20])
        elif damage == "reorder":
            first, second = header.size + step, header.size + 2 * step
            assert len(stored) > second + step
            bucket.raw.put(
                target,
                stored[:first]
                + stored[second : second + step]
                + stored[first:second]
                + stored[second + step :],
            )
        else:
            bucket.raw.put(target, bucket.raw.get(other))
        failed(restore(app.client, "acme", "latest", "fork"), "backup_tampered", "k1")
        assert not exists(app, "fork")
        failed(restore(app.client, "acme", "latest"), "backup_tampered", "k1")  # in place: untouched
        assert values(app, "acme") == ["a", "b"]
        restore_ok(app.client, "acme", moment, "before")  # what does not need the object still restores
        assert values(app, "before") == ["a"]


def test_a_damaged_unencrypted_segment_is_a_broken_backup_not_an_internal_error(bucket: Bucket) -> None:
    with bucket.app("data") as app:
        make(app, "acme", "a")
        flush(app)
        for segment in bucket.segments():  # one, or two when the background flush ran between
            stored = bytearray(bucket.raw.get(segment))
            stored[-30:] = bytes(30)  # inside the last chunk's compressed body
            bucket.raw.put(segment, bytes(stored))
        r = restore(app.client, "acme", "latest", "fork")
        assert r.status_code == 500 and r.json()["error"]["code"] == "backup_broken", r.text
        assert not exists(app, "fork")


def test_rekey_needs_keys_and_checks_its_input(bucket: Bucket) -> None:
    with bucket.app("data") as app:
        r = app.client.post("/v1/admin/backups/rekey", json={}, headers=ADMIN)
        assert r.status_code == 409 and r.json()["error"]["code"] == "backup_encryption_off", r.text
    with bucket.app("data", K1) as app:
        for body in ({"limit": 0}, {"limit": "5"}, {"limit": True}, {"after": 5}, {"other": 1}):
            r = app.client.post("/v1/admin/backups/rekey", json=body, headers=ADMIN)
            assert r.status_code == 400, (body, r.text)
        flush(app)  # publishes the fleet metadata sealed, over what the run without keys wrote
        assert rekey_all(app) == [
            {"key_id": "k1", "total": 0, "checked": 0, "rewritten": 0, "missing": 0, "next": None}
        ]


def test_a_bad_key_file_stops_the_server_from_starting(tmp_path: Path) -> None:
    from ops.server import Server
    from ops.settings import Settings
    from tenants.errors import BadRequest

    path = tmp_path / "keys"
    path.write_text("k1:tooshort\n")
    settings = Settings.load(environ={}, data_dir=tmp_path / "data", backup_encryption_key_file=str(path))
    with pytest.raises(BadRequest, match="line 1"):
        Server.build(settings)
    path.write_text(Keyring.generate("k1") + "\n")
    Server.build(settings).close()  # the data dir was released by the failed start
