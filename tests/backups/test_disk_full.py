"""Issue 11, items 4 and 5 on a real full disk: the data dir on a 20 MB tmpfs, filled to the last
byte. Every route that needs the disk answers 507 insufficient_storage (never 413 blaming the
client, never a 500), the metric counts it, /readyz says the replica is behind and why; once
space is freed everything works again, and the commit made just before the disk filled (whose
segment reached the replica while the catalog could not record it) is restored.

Needs root to mount the tmpfs (CI runs as root); skipped, saying so, where mounting is refused."""

from __future__ import annotations

import errno
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.app import ADMIN, InProcess, bearer, in_process
from tests.support.backups import make, query, restore

SIZE = "20m"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of SIZE mounted in tmp_path, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root is needed): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True, timeout=30, check=False).returncode:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30, check=False)


def fill(disk: Path) -> Path:
    """Fill the file system to its last byte with one file; returns it."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 16, 4096, 512, 1):
            piece = bytes(size)
            try:
                while f.write(piece) == size:
                    pass
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return filler


def disk_full_count(app: InProcess, where: str) -> float:
    for family in text_string_to_metric_families(app.client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "sqlfleet_disk_full_total" and sample.labels == {"where": where}:
                return sample.value
    return 0.0


def insufficient(r: Any) -> None:
    assert r.status_code == 507, r.text
    error = r.json()["error"]
    assert error["code"] == "insufficient_storage" and "disk is full" in error["message"], error


def test_a_full_disk_is_507_everywhere_and_nothing_is_lost(tmp_path: Path, small_disk: Path) -> None:
    settings = {
        "replica_url": str(tmp_path / "replica"),  # elsewhere: the upload works, the catalog cannot
        "backup_flush_interval": 3600.0,
        "backup_unready_after": 0.5,
    }
    with in_process(small_disk / "data", **settings) as app:
        backups = app.server.backups
        assert backups is not None
        make(app, "acme", 1)
        backups.flush()
        token = app.token("acme")
        query(app.client, "acme", "INSERT INTO t VALUES (2)")  # committed; its flush comes next
        requests_before = disk_full_count(app, "request")
        filler = fill(small_disk)

        assert not backups.shipper.flush()  # the segment reaches the replica; recording it fails
        assert backups.shipper.health().disk_full
        insufficient(app.query("acme", "INSERT INTO t VALUES (3)"))
        insufficient(app.query("acme", "INSERT INTO t VALUES (randomblob(100000))"))
        batch = [{"sql": "INSERT INTO t VALUES (4)"}, {"sql": "INSERT INTO t VALUES (5)"}]
        insufficient(app.client.post("/v1/tenants/acme/batch", json={"statements": batch}, headers=ADMIN))
        insufficient(app.client.post("/v1/admin/tenants", json={"id": "new"}, headers=ADMIN))
        insufficient(
            app.client.post(
                "/v1/admin/groups", json={"name": "g", "schema": "CREATE TABLE a(x)"}, headers=ADMIN
            )
        )
        insufficient(restore(app.client, "acme", "latest", "copy"))
        pipeline = {"requests": [{"type": "execute", "stmt": {"sql": "INSERT INTO t VALUES (6)"}}]}
        hrana = app.client.post("/v2/pipeline", json=pipeline, headers=bearer(token))
        assert hrana.status_code == 200, hrana.text
        result = hrana.json()["results"][0]
        assert result["type"] == "error" and "disk is full" in result["error"]["message"], result
        listing = app.client.get("/v1/admin/tenants/acme/backups", headers=ADMIN)
        assert listing.status_code == 200 and listing.json()["backlog_bytes"] > 0, listing.text
        assert query(app.client, "acme", "SELECT v FROM t ORDER BY v")["rows"] == [[1], [2]]  # reads go on
        assert disk_full_count(app, "request") >= requests_before + 6
        assert disk_full_count(app, "backup") >= 1

        time.sleep(0.6)  # behind by more than backup_unready_after
        ready = app.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["replica"] is False, ready.text
        assert "disk is full" in ready.json()["reason"]

        filler.unlink()
        backups.flush()  # ships the commit whose earlier segment the catalog never recorded
        assert app.client.get("/readyz").status_code == 200
        query(app.client, "acme", "INSERT INTO t VALUES (3)")
        assert app.client.post("/v1/admin/tenants", json={"id": "new"}, headers=ADMIN).status_code == 201
        r = restore(app.client, "acme", "latest", "copy")
        assert r.status_code == 200, r.text
        assert query(app.client, "copy", "SELECT v FROM t ORDER BY v")["rows"] == [[1], [2], [3]]


def test_a_database_at_its_size_limit_is_still_413_on_a_small_disk(small_disk: Path) -> None:
    """The tenant's own limit is the client's business (413), told apart from a full disk."""
    with in_process(small_disk / "data", backups=False, max_db_bytes=64 << 10) as app:
        app.create("acme")
        query(app.client, "acme", "CREATE TABLE t(v)")
        r = app.query("acme", "INSERT INTO t VALUES (randomblob(200000))")
        assert r.status_code == 413, r.text
        assert r.json()["error"]["message"] == "database size limit reached"
