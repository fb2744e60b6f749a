"""backups.catalog: positions are read on every tenant open, so a read never waits for a commit
in progress (the fleet loop's profile showed opens queued behind the flusher's fsync)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from backups.catalog import BackupCatalog, Position


def _position(lsn: int) -> Position:
    return Position("g1", lsn, (1, 2), lsn, (3, 4), 0, 0.0)


def test_a_position_read_does_not_wait_for_a_commit(tmp_path: Path) -> None:
    catalog = BackupCatalog(tmp_path / "backups.db")
    try:
        catalog.save_positions({"acme": _position(5)})
        taken, done = threading.Event(), threading.Event()

        def slow_commit() -> None:
            with catalog._lock:  # as the flusher holds it across its commit's fsync
                taken.set()
                done.wait(10)

        writer = threading.Thread(target=slow_commit)
        writer.start()
        taken.wait(10)
        try:
            started = time.monotonic()
            found = catalog.position("acme")
            assert time.monotonic() - started < 1.0
        finally:
            done.set()
            writer.join()
        assert found == _position(5)
        catalog.save_positions({"acme": _position(9)})
        assert catalog.position("acme") == _position(9)  # a read sees every commit before it
        catalog.forget_position("acme")
        assert catalog.position("acme") is None
    finally:
        catalog.close()
