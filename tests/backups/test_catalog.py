"""backups.catalog: positions are read on every tenant open, so a read never waits for a commit
in progress (the fleet loop's profile showed opens queued behind the flusher's fsync)."""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import apsw

from backups.catalog import BackupCatalog, Position
from tests.support.waiting import wait_until


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


def test_concurrent_position_saves_share_one_commit_and_fail_alone(tmp_path: Path) -> None:
    path = tmp_path / "backups.db"
    catalog = BackupCatalog(path)
    commits: list[int] = []

    def hook() -> bool:
        commits.append(1)
        return False  # let it commit

    catalog._db.set_commit_hook(hook)
    bad = dataclasses.replace(_position(1), generation=None)  # type: ignore[arg-type]  # NOT NULL violated
    saves = [{f"t{i}": _position(i)} for i in range(8)]
    try:
        with ThreadPoolExecutor(9) as pool:
            with catalog._lock:  # as a commit in progress holds it: the nine queue meanwhile
                futures = [pool.submit(catalog.save_positions, s) for s in saves]
                failing = pool.submit(catalog.save_positions, {"bad": bad})
                wait_until(lambda: catalog._commits.queued == 9, interval=0.001)
            for f in futures:
                f.result(10)
            assert isinstance(failing.exception(10), apsw.ConstraintError)
        assert commits == [1]
    finally:
        catalog.close()
    again = BackupCatalog(path)
    try:
        assert again.positions() == {f"t{i}": _position(i) for i in range(8)}
    finally:
        again.close()


def test_concurrent_position_reads_see_the_last_commit_and_close_ends_every_reader(tmp_path: Path) -> None:
    """Every tenant open reads its position: concurrent reads go through readers of their own
    (no lock among them), each sees what was committed before it began, and `close` leaves no
    reader open (one in use when it runs is closed when its read ends)."""
    catalog = BackupCatalog(tmp_path / "backups.db")
    tenants = [f"t{i}" for i in range(64)]
    catalog.save_positions({t: _position(i) for i, t in enumerate(tenants)})
    start = threading.Barrier(8)

    def read_all(offset: int) -> list[int | None]:
        start.wait()
        return [getattr(catalog.position(t), "lsn", None) for t in tenants[offset:] + tenants[:offset]]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(read_all, range(8)))
    for offset, lsns in enumerate(results):
        assert lsns == list(range(offset, 64)) + list(range(offset))
    assert catalog.position("absent") is None
    readers = list(catalog._readers)
    assert 1 <= len(readers) <= 8
    catalog.close()
    assert catalog._readers == []
    for reader in readers:  # closed: using one raises
        try:
            reader.execute("SELECT 1")
        except apsw.ConnectionClosedError:
            continue
        raise AssertionError("a reader stayed open after close")
