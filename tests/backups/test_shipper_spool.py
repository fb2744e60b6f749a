"""The shipper with a small spool: commits and snapshots larger than its memory go through
temporary files and restore exactly; a spool that cannot be written fails the flush the way an
unreachable replica does (nothing advances, the next flush retries)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from backups.errors import ShippingIOError
from backups.segment import SNAPSHOT
from tests.support.shipper import Rig


def test_commits_and_snapshots_larger_than_the_spool_ship_and_restore(tmp_path: Path) -> None:
    rig = Rig(tmp_path, spool_bytes=64 << 10, snapshot_bytes=1 << 20, segment_max_bytes=1 << 20)
    try:
        conn = rig.create("acme")
        rig.insert("acme", "small")
        conn.execute(
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 1500) "
            "INSERT INTO t(v) SELECT randomblob(2000) FROM c"
        )  # one commit of ~3 MB, 50 times the spool
        assert rig.shipper.flush()  # ships it, then checkpoints and snapshots (> snapshot_bytes)
        entry = rig.shipper.ledger.get("acme")
        assert entry is not None and entry.snapshot is not None and entry.snapshot.image is not None
        assert not entry.snapshot.image.in_memory  # 3 MB copy, 64 KiB spool: on disk
        assert rig.shipper.flush()
        assert entry.snapshot is None

        snapshots = [r for r in rig.catalog.chunks("acme") if r.kind == SNAPSHOT]
        assert max(r.first_lsn for r in snapshots) > 0
        assert rig.restored("acme", time.time()) == rig.live("acme")
        assert list((rig.layout.system_dir / "spool").iterdir()) == []
    finally:
        rig.shutdown()


def test_a_spool_that_cannot_be_written_fails_the_flush_and_the_next_retries(tmp_path: Path) -> None:
    rig = Rig(tmp_path, spool_bytes=4096)
    try:
        rig.create("acme")
        assert rig.shipper.flush()
        rig.conns["acme"].execute("INSERT INTO t(v) VALUES (randomblob(100000))")
        position = rig.catalog.position("acme")
        spool = rig.layout.system_dir / "spool"
        shutil.rmtree(spool)
        spool.write_bytes(b"")  # a file where the directory should be: no temporary files

        with pytest.raises(ShippingIOError):
            rig.shipper.ship()
        assert not rig.shipper.flush()
        assert rig.catalog.position("acme") == position and "acme" in rig.shipper.ledger.dirty
        assert rig.shipper.failed_in_a_row == 2

        spool.unlink()
        assert rig.shipper.flush()
        assert rig.restored("acme", time.time()) == rig.live("acme")
    finally:
        rig.shutdown()
