"""Backups through the admin API of the real app: listing and verify, restore in place and its undo,
the catalog rebuilt from the bucket, disaster recovery onto an empty data dir, and the shipper's
continuity across evictions and a WAL changed behind its back."""

from __future__ import annotations

import errno
import os
import shutil
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from backups import wal
from tenants.execute import Statement
from tenants.rfc3339 import format_time, parse_time
from tests.support.app import ADMIN, InProcess, bearer, in_process
from tests.support.backups import dump, make, query, restore, restore_ok, values, write
from tests.support.waiting import wait_until

FAST = {"backup_flush_interval": 0.1}


def local(tmp_path: Path, **more: Any) -> dict[str, Any]:
    return {**FAST, "replica_url": str(tmp_path / "replica"), **more}


def listed(app: InProcess) -> list[dict[str, Any]]:
    r = app.client.get("/v1/admin/backups/tenants", headers=ADMIN)
    assert r.status_code == 200, r.text
    tenants: list[dict[str, Any]] = r.json()["tenants"]
    return tenants


def error(r: Any, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]


def test_backups_listing_and_verify(tmp_path: Path) -> None:
    with in_process(tmp_path / "data", **local(tmp_path)) as app:
        make(app, "acme", 1, 2, 3)
        query(app.client, "acme", "INSERT INTO t(v) SELECT randomblob(5000) FROM t")

        listing = app.client.get("/v1/admin/tenants/acme/backups", headers=ADMIN)
        assert listing.status_code == 200, listing.text
        info = listing.json()
        assert info["tenant"] == "acme" and info["deleted"] is False
        assert len(info["generations"]) == 1 and info["generations"][0]["started"] == info["earliest"]
        assert parse_time(info["earliest"]) <= parse_time(info["latest"]) <= time.time()
        assert [s["lsn"] for s in info["snapshots"]] == [0]

        verified = app.client.post("/v1/admin/tenants/acme/backups/verify", headers=ADMIN)
        assert verified.status_code == 200, verified.text
        assert verified.json()["ok"] is True and verified.json()["differing_pages"] == []
        assert verified.json()["pages"] > 3
        for empty in (b"", b" ", b"{}"):  # no body, or no field: the newest state is verified
            r = app.client.post("/v1/admin/tenants/acme/backups/verify", headers=ADMIN, content=empty)
            assert r.status_code == 200 and r.json()["ok"] is True, r.text
        for bad in ({"timestamp": "x"}, {"timestamp": "latest"}):  # it takes no field: never ignored
            r = app.client.post("/v1/admin/tenants/acme/backups/verify", headers=ADMIN, json=bad)
            error(r, 400, "bad_request")
            assert "unknown fields: timestamp" in r.json()["error"]["message"], r.text
        r = app.client.post("/v1/admin/tenants/acme/backups/verify", headers=ADMIN, content=b"[1]")
        error(r, 400, "bad_request")

        error(app.client.get("/v1/admin/tenants/nobody/backups", headers=ADMIN), 404, "tenant_not_found")
        error(
            app.client.post("/v1/admin/tenants/nobody/backups/verify", headers=ADMIN), 404, "tenant_not_found"
        )
        error(app.client.get("/v1/admin/tenants/Bad!Id/backups", headers=ADMIN), 400, "invalid_tenant_id")
        token = app.token("acme")
        assert app.client.get("/v1/admin/tenants/acme/backups", headers=bearer(token)).status_code == 403
        assert app.client.get("/v1/admin/tenants/acme/backups").status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {"timestamp": "yesterday"},
        {"timestamp": "2026-01-01T00:00:00"},  # no time zone
        {"timestamp": "2026-13-01T00:00:00Z"},
        {"timestamp": ""},
        {"timestamp": 1700000000},
        {"timestamp": None},
        {"timestamp": "latest", "as": "Not Valid"},
        {"timestamp": "latest", "as": 7},
        {"timestamp": "latest", "unknown": 1},
    ],
)
def test_bad_restore_requests_are_400(app: InProcess, body: dict[str, Any]) -> None:
    app.create("acme")
    r = app.client.post("/v1/admin/tenants/acme/restore", json=body, headers=ADMIN)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"} and r.json()["error"]["code"] and r.json()["error"]["message"]
    assert "Traceback" not in r.text


def test_restore_of_unknown_tenant_or_taken_name(app: InProcess) -> None:
    app.create("acme")
    app.create("taken")
    error(restore(app.client, "nobody", "latest"), 404, "tenant_not_found")
    error(restore(app.client, "acme", "latest", "taken"), 409, "tenant_exists")
    error(restore(app.client, "acme", "1999-01-01T00:00:00Z", "fork"), 404, "no_restore_point")
    assert app.client.get("/v1/admin/tenants/fork", headers=ADMIN).status_code == 404


def _message(r: Any, status: int, code: str) -> str:
    error(r, status, code)
    message: str = r.json()["error"]["message"]
    return message


def test_restore_answers_name_the_moments_that_can_be_restored(tmp_path: Path) -> None:
    with in_process(tmp_path / "data", **local(tmp_path)) as app:
        make(app, "acme", 1, 2)
        info = app.client.get("/v1/admin/tenants/acme/backups", headers=ADMIN).json()
        # a moment in the future: refused, naming the latest state, not restored as if it were then
        future = restore(app.client, "acme", time.time() + 3600, "fork")
        said = _message(future, 400, "restore_time_in_future")
        assert "is in the future" in said and info["latest"] in said and "'latest'" in said, said
        assert app.client.get("/v1/admin/tenants/fork", headers=ADMIN).status_code == 404
        # before the first backup: names the earliest restorable moment
        said = _message(restore(app.client, "acme", "1999-01-01T00:00:00Z", "fork"), 404, "no_restore_point")
        assert f"earliest restorable moment is {info['earliest']}" in said, said
        # a tenant that never was: no such tenant, whatever the moment
        for moment in ("latest", "2000-01-01T00:00:00Z"):
            said = _message(restore(app.client, "nope", moment), 404, "tenant_not_found")
            assert "does not exist here" in said and "no backup" not in said, said


def test_earliest_is_inside_the_retention_window_whenever_retention_last_ran(tmp_path: Path) -> None:
    """Retention runs about once a minute: until it does, chunks older than the window are
    still there; the earliest moment shown (and restorable) is inside the window all the same."""
    with in_process(tmp_path / "data", **local(tmp_path, backup_retention=1.0)) as app:
        make(app, "acme", 1)
        started = parse_time(
            app.client.get("/v1/admin/tenants/acme/backups", headers=ADMIN).json()["earliest"]
        )
        time.sleep(1.2)
        write(app, "acme", 2)
        asked = time.time()
        info = app.client.get("/v1/admin/tenants/acme/backups", headers=ADMIN).json()
        assert info["generations"][0]["started"] == format_time(started)  # not dropped yet
        earliest = parse_time(info["earliest"])
        assert asked - 1.0 <= earliest <= time.time(), (info["earliest"], format_time(asked))
        said = _message(restore(app.client, "acme", started + 0.05, "fork"), 404, "no_restore_point")
        assert "earliest restorable moment" in said, said
        assert values(app, "acme") == [1, 2]
        restore_ok(app.client, "acme", "latest", "fork")
        assert values(app, "fork") == [1, 2]


def test_deleted_tenants_are_listed_as_deleted_and_can_be_restored(tmp_path: Path) -> None:
    with in_process(tmp_path / "data", **local(tmp_path)) as app:
        make(app, "kept", 1)
        make(app, "gone", 1, 2)
        assert app.client.delete("/v1/admin/tenants/gone", headers=ADMIN).status_code == 204
        deleted_at = time.time()
        assert [t["id"] for t in listed(app)] == ["kept"]  # what `restore --all` puts back
        r = app.client.get("/v1/admin/backups/tenants?deleted=true", headers=ADMIN)
        assert r.status_code == 200, r.text
        rows = {t["id"]: t for t in r.json()["tenants"]}
        assert rows["kept"] == {"id": "kept", "exists": True, "deleted": None}
        assert rows["gone"]["exists"] is False
        assert deleted_at - 5 < parse_time(rows["gone"]["deleted"]) <= deleted_at
        error(app.client.get("/v1/admin/backups/tenants?deleted=maybe", headers=ADMIN), 400, "bad_request")
        restore_ok(app.client, "gone", "latest")  # undeleted
        assert values(app, "gone") == [1, 2]
        assert {t["id"] for t in listed(app)} == {"kept", "gone"}


def test_a_restore_in_place_that_replaced_the_file_says_so_though_its_cleanup_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed 838 of the fault simulation (120 steps): removing the restore's temporary directory
    failed (an I/O error) after the live file was replaced, and the restore answered with that
    error, so the client took the tenant for unchanged while it held the restored content."""
    with in_process(tmp_path / "data", **local(tmp_path)) as app:
        one = make(app, "acme", "a")
        write(app, "acme", "b")
        system = tmp_path / "data" / "system"
        rmtree = shutil.rmtree

        def failing(path: Any, onerror: Any = None) -> None:
            if Path(path).parent == system and onerror is not None:  # the directory cannot be read
                onerror(os.open, str(path), (OSError, OSError(errno.EIO, "simulated I/O error"), None))
            rmtree(path, onerror=onerror)

        monkeypatch.setattr(shutil, "rmtree", failing)
        restore_ok(app.client, "acme", one)  # in place
        assert values(app, "acme") == ["a"]


def test_restore_in_place_then_undo_it(tmp_path: Path) -> None:
    with in_process(tmp_path / "data", **local(tmp_path)) as app:
        one = make(app, "acme", "a")
        write(app, "acme", "b", "c")
        token = app.token("acme")
        before_restore = time.time()

        result = restore_ok(app.client, "acme", one)  # in place
        assert result["tenant"] == "acme" and parse_time(result["restored_to"]) <= one
        assert values(app, "acme", bearer(token)) == ["a"]  # same tenant: its tokens still work
        after_restore = write(app, "acme", "d")
        before_undo = time.time()

        restore_ok(app.client, "acme", before_restore)  # undo: back to before the restore
        assert values(app, "acme") == ["a", "b", "c"]
        restore_ok(app.client, "acme", after_restore, "between")  # the restored branch is kept too
        assert values(app, "between") == ["a", "d"]
        restore_ok(app.client, "acme", before_undo, "undone-undo")
        assert values(app, "undone-undo") == ["a", "d"]
        write(app, "acme", "e")
        restore_ok(app.client, "acme", "latest", "now")
        assert values(app, "now") == ["a", "b", "c", "e"]
        generations = app.client.get("/v1/admin/tenants/acme/backups", headers=ADMIN).json()["generations"]
        assert len(generations) == 3


def test_catalog_rebuilt_from_the_bucket_alone(tmp_path: Path) -> None:
    settings = local(tmp_path, backup_checkpoint_frames=4)
    with in_process(tmp_path / "data", **settings) as app:
        early = make(app, "acme", *range(10))
        mid = write(app, "acme", *range(10, 20))
        make(app, "other", "x")
        expected_mid = dump(app.client, "acme")
        write(app, "acme", "last")
        final = dump(app.client, "acme")
    for path in (tmp_path / "data" / "system").glob("backups.db*"):
        path.unlink()

    with in_process(tmp_path / "data", **settings) as app:
        restore_ok(app.client, "acme", mid, "at-mid")
        assert dump(app.client, "at-mid") == expected_mid
        restore_ok(app.client, "acme", early, "at-early")
        assert values(app, "at-early") == list(range(10))
        # shipping goes on (in a new generation: the shipped positions went with the catalog)
        write(app, "acme", "after")
        restore_ok(app.client, "acme", "latest", "at-latest")
        assert values(app, "at-latest") == values(app, "acme") == [*(r[0] for r in final["t"]), "after"]

    # a fresh data dir over the same bucket rebuilds too, and the route does it on demand
    with in_process(tmp_path / "fresh", **settings) as app:
        rebuilt = app.client.post("/v1/admin/backups/rebuild", headers=ADMIN)
        assert rebuilt.status_code == 200 and rebuilt.json()["segments"] > 0
        restore_ok(app.client, "acme", mid, "again")
        assert dump(app.client, "again") == expected_mid


def test_disaster_recovery_onto_an_empty_data_dir(tmp_path: Path) -> None:
    settings = local(tmp_path, signing_key_file=tmp_path / "signing-key.pem")
    with in_process(tmp_path / "setup", **local(tmp_path)) as app:  # just to make a signing key
        pass
    shutil.copyfile(tmp_path / "setup" / "signing-key.pem", tmp_path / "signing-key.pem")

    with in_process(tmp_path / "lost", **settings) as app:
        make(app, "restored", 1, 2)
        make(app, "on-access", 3)
        make(app, "by-token", 4, 5)
        make(app, "deleted", 6)
        before_delete = time.time()
        token = app.token("by-token")
        gone = app.client.delete("/v1/admin/tenants/deleted", headers=ADMIN)
        assert gone.status_code == 204

    with in_process(tmp_path / "fresh", **settings) as app:
        assert listed(app) == [
            {"id": t, "exists": False, "deleted": None} for t in ("by-token", "on-access", "restored")
        ]

        restore_ok(app.client, "restored", "latest", "restored")
        assert values(app, "restored") == [1, 2]
        # the first access restores a tenant the bucket holds, with the admin key or a token
        assert values(app, "on-access") == [3]
        assert values(app, "by-token", bearer(token)) == [4, 5]
        assert app.client.get("/v1/admin/tenants/by-token", headers=ADMIN).status_code == 200
        # a deleted tenant stays deleted, until restored explicitly to before its deletion
        r = app.query("deleted", "SELECT 1")
        assert r.status_code == 404, r.text
        assert app.client.get("/v1/admin/tenants/deleted", headers=ADMIN).status_code == 404
        restore_ok(app.client, "deleted", before_delete, "deleted")
        assert values(app, "deleted") == [6]
        # restored, it has a generation newer than its deletion (once that snapshot is shipped)
        everything = dict.fromkeys(["by-token", "deleted", "on-access", "restored"], True)
        wait_until(lambda: {t["id"]: t["exists"] for t in listed(app)} == everything, 5)


def test_shipping_continues_across_evictions(tmp_path: Path) -> None:
    """A closed tenant's log is dropped; reopening resumes from the WAL it left behind."""
    with in_process(tmp_path / "data", **local(tmp_path, pool_capacity=1, backup_flush_interval=3600)) as app:
        shipper = app.server.backups
        assert shipper is not None
        make(app, "one", 1)
        make(app, "two", 2)
        for i in range(4):
            shipper.shipper.flush()
            write(app, "one", f"one-{i}")
            shipper.shipper.flush()
            write(app, "two", f"two-{i}")  # evicts "one", whose log is gone after the flush
        shipper.shipper.flush()
        moment = write(app, "one", "last")
        generations = {
            t: app.client.get(f"/v1/admin/tenants/{t}/backups", headers=ADMIN).json()["generations"]
            for t in ("one", "two")
        }
        assert all(len(g) == 1 for g in generations.values()), generations  # no restart needed
        restore_ok(app.client, "one", moment, "one-copy")
        assert values(app, "one-copy") == [1, "one-0", "one-1", "one-2", "one-3", "last"]


def test_a_wal_changed_behind_the_shippers_back_starts_a_new_generation(tmp_path: Path) -> None:
    with in_process(tmp_path / "data", **local(tmp_path, backup_flush_interval=3600)) as app:
        backups = app.server.backups
        assert backups is not None
        shipped = make(app, "acme", 1, 2)
        backups.shipper.flush()
        write(app, "acme", 3)
        # damage the checksum of the unshipped frame (not its page: SQLite reads pages, and
        # does not look at checksums again after opening)
        path = Path(f"{app.server.fleet.layout.tenant_path('acme')}-wal")
        header, frames = wal.scan(path)
        assert header is not None
        with open(path, "r+b") as f:
            f.seek(header.frame_offset(len(frames) - 1) + 16)
            f.write(b"\xff\xff\xff\xff")
        backups.shipper.flush()  # finds the damage
        backups.shipper.flush()  # ships the new generation's snapshot
        write(app, "acme", 4)

        info = app.client.get("/v1/admin/tenants/acme/backups", headers=ADMIN).json()
        assert len(info["generations"]) == 2
        restore_ok(app.client, "acme", "latest", "latest")
        assert values(app, "latest") == [1, 2, 3, 4]
        restore_ok(app.client, "acme", shipped, "before")
        assert values(app, "before") == [1, 2]
        verified = app.client.post("/v1/admin/tenants/acme/backups/verify", headers=ADMIN).json()
        assert verified["ok"] is True


def test_a_moment_in_any_zone_is_the_same_moment(tmp_path: Path) -> None:
    with in_process(tmp_path / "data", **local(tmp_path)) as app:
        make(app, "acme", 1)
        moment = write(app, "acme", 2)
        write(app, "acme", 3)
        utc = restore_ok(app.client, "acme", format_time(moment), "utc")
        east = datetime.fromtimestamp(moment, timezone(timedelta(hours=5, minutes=30))).isoformat()
        assert restore_ok(app.client, "acme", east, "east") == {**utc, "tenant": "east"}
        assert values(app, "east") == values(app, "utc") == [1, 2]


def test_the_wal_stays_bounded_under_sustained_writes(tmp_path: Path) -> None:
    """With a commit always in flight, the WAL still gets checkpointed (after shipping it)."""
    settings = local(tmp_path, backup_flush_interval=0.05, backup_checkpoint_frames=20)
    with in_process(tmp_path / "data", **settings) as app:
        make(app, "busy")
        fleet = app.server.fleet
        path = Path(f"{fleet.layout.tenant_path('busy')}-wal")
        largest = previous = truncations = 0
        deadline = time.monotonic() + 1.5
        n = 0
        while time.monotonic() < deadline:
            fleet.execute("busy", Statement("INSERT INTO t(v) VALUES (?)", [n]))
            n += 1
            frames = path.stat().st_size // (4096 + 24)
            largest, truncations = max(largest, frames), truncations + (frames < previous)
            previous = frames
        assert n > 60
        # checkpointed again and again: without that the WAL holds every one of the n commits
        assert truncations >= 3 and largest < n // 2, (truncations, largest, n)
        restore_ok(app.client, "busy", "latest", "copy")
        assert values(app, "copy") == list(range(n))


def hrana(app: InProcess, token: str, baton: str | None, *sql: str) -> str | None:
    requests = [{"type": "execute", "stmt": {"sql": s, "args": []}} for s in sql]
    r = app.client.post("/v2/pipeline", json={"baton": baton, "requests": requests}, headers=bearer(token))
    assert r.status_code == 200 and all(res["type"] == "ok" for res in r.json()["results"]), r.text
    new: str | None = r.json()["baton"]
    return new


def test_an_open_transaction_does_not_hold_up_shipping(tmp_path: Path) -> None:
    """A tenant due for a checkpoint while a client holds a transaction open is skipped, not
    waited for: the flush (and every other tenant's shipping) goes on."""
    settings = local(tmp_path, backup_flush_interval=3600, backup_checkpoint_frames=4, busy_timeout=5.0)
    with in_process(tmp_path / "data", **settings) as app:
        assert app.server.backups is not None
        shipper = app.server.backups.shipper
        make(app, "held", *range(6))
        make(app, "other")
        token = app.token("held")
        baton = hrana(app, token, None, "BEGIN", "INSERT INTO t(v) VALUES ('in tx')")
        write(app, "other", "x")

        started = time.monotonic()
        assert shipper.flush()
        assert time.monotonic() - started < 2.0
        restore_ok(app.client, "other", "latest", "other-copy")
        assert values(app, "other-copy") == ["x"]

        hrana(app, token, baton, "COMMIT")
        shipper.flush()
        shipper.flush()  # the checkpoint skipped before happens now
        assert Path(f"{app.server.fleet.layout.tenant_path('held')}-wal").stat().st_size == 0
        restore_ok(app.client, "held", "latest", "held-copy")
        assert values(app, "held-copy") == [*range(6), "in tx"]


def test_retention_deletes_only_what_no_restore_in_the_window_needs(tmp_path: Path) -> None:
    settings = local(
        tmp_path, backup_flush_interval=0.05, backup_checkpoint_frames=4, backup_snapshot_bytes=16_000
    )
    with in_process(tmp_path / "data", **settings) as app:
        backups = app.server.backups
        assert backups is not None
        make(app, "quiet", "q1", "q2")  # its chunks share segments with busy's oldest ones
        make(app, "busy")
        old = write(app, "busy", *(f"a{i}" for i in range(8)))
        for i in range(8, 16):
            query(app.client, "busy", "INSERT INTO t(v) VALUES (?), (randomblob(3000))", [f"a{i}"])
            backups.shipper.flush()
        horizon = time.time()
        time.sleep(0.01)
        write(app, "busy", "after-1", "after-2")
        snapshots = app.client.get("/v1/admin/tenants/busy/backups", headers=ADMIN).json()["snapshots"]
        assert any(old < parse_time(s["taken"]) < horizon for s in snapshots), snapshots
        objects = len(list(backups.replica.list("segments/")))

        dropped, deleted = backups.enforce_retention(time.time() - horizon)

        assert dropped > 0 and deleted > 0
        assert len(list(backups.replica.list("segments/"))) == objects - deleted
        expected = [f"a{i}" for i in range(16)]
        restore_ok(app.client, "busy", horizon, "at-horizon")
        assert [v for v in values(app, "at-horizon") if isinstance(v, str)] == expected
        restore_ok(app.client, "busy", "latest", "busy-latest")
        assert [v for v in values(app, "busy-latest") if isinstance(v, str)] == [
            *expected,
            "after-1",
            "after-2",
        ]
        error(restore(app.client, "busy", old, "too-old"), 404, "no_restore_point")
        restore_ok(app.client, "quiet", "latest", "quiet-latest")  # its shared segments stayed
        assert values(app, "quiet-latest") == ["q1", "q2"]
        # a catalog rebuilt from what is left in the bucket agrees
        backups.rebuild_catalog()
        restore_ok(app.client, "busy", horizon, "rebuilt-at-horizon")
        assert values(app, "rebuilt-at-horizon") == values(app, "at-horizon")
