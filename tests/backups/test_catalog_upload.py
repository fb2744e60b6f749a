"""A cluster node's backup catalog in the bucket (backups/catalog_upload.py): a sealed, compressed,
consistent SQLite copy saying what it covers, uploaded by a thread every interval and at a stop."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest
import zstandard

from backups.catalog import BackupCatalog
from backups.catalog_upload import CatalogUploader, catalog_key, download, upload
from backups.crypto import is_sealed
from backups.fence import Writer, fence_incarnation
from backups.keyring import Keyring
from backups.sealed_replica import SealedReplica
from backups.shipper import Shipper
from tests.support.shipper import Rig
from tests.support.waiting import wait_until

WRITER = Writer("node-a", "a1")
KEYRING = Keyring([("k1", b"\x05" * 32)])


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """A shipper writing as WRITER, with a tenant `acme` shipped in two segments."""
    rig = Rig(tmp_path / "rig")
    rig.shipper = Shipper(rig.replica, rig.catalog, rig.layout, rig.config, "test0001", rig.lease, WRITER)
    rig.create("acme")
    rig.insert("acme", 1)
    assert rig.shipper.flush()
    rig.insert("acme", 2)
    assert rig.shipper.flush()
    yield rig
    rig.shipper.stop()
    rig.shutdown()


def _seqs(rig: Rig) -> int:
    return len(list(rig.replica.list(WRITER.prefix)))


def test_an_upload_is_a_sealed_sqlite_copy_that_says_what_it_covers(rig: Rig, tmp_path: Path) -> None:
    sealed = SealedReplica(rig.replica, KEYRING)
    covered = upload(sealed, rig.catalog.path, WRITER, "test0001", tmp_path)
    assert covered.covers == {"a1": _seqs(rig)} and covered.server == "test0001"
    stored = rig.replica.get(catalog_key("node-a"))
    assert is_sealed(stored)  # nothing readable in the bucket

    copy = tmp_path / "copy.db"
    copy.write_bytes(zstandard.ZstdDecompressor().decompress(sealed.get(catalog_key("node-a"))))
    conn = apsw.Connection(str(copy))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA journal_mode").fetchall() == [("delete",)]  # one file
        assert conn.execute("SELECT incarnation, seq FROM covers").fetchall() == [("a1", _seqs(rig))]
    finally:
        conn.close()
    view = BackupCatalog(copy)
    try:
        assert view.chunks("acme") == rig.catalog.chunks("acme")
    finally:
        view.close()
    again = download(sealed, "node-a", tmp_path / "again.db")
    assert again == covered
    assert download(sealed, "node-b", tmp_path / "none.db") is None
    assert [p.name for p in tmp_path.iterdir() if "catalog-upload" in p.name] == []  # temp files gone


def test_the_uploader_uploads_every_interval_and_at_stop_but_not_once_fenced(
    rig: Rig, tmp_path: Path
) -> None:
    sealed = SealedReplica(rig.replica, KEYRING)
    uploader = CatalogUploader(
        sealed, rig.catalog.path, WRITER, "test0001", 0.05, tmp_path, lambda: rig.shipper.fenced is not None
    )
    uploader.start()
    try:
        wait_until(lambda: uploader.last is not None, 20)
    finally:
        rig.insert("acme", 3)
        assert rig.shipper.flush()
        uploader.stop()  # the last upload covers the last flush
    assert uploader.last is not None and uploader.last.covers == {"a1": _seqs(rig)}
    assert download(sealed, "node-a", tmp_path / "v.db") == uploader.last
    uploader.stop()  # idempotent

    fence_incarnation(rig.replica, WRITER.node, WRITER.incarnation)
    rig.insert("acme", 4)
    assert not rig.shipper.flush()
    assert rig.shipper.fenced is not None
    assert uploader.upload() is None  # its history belongs to the fencer now
