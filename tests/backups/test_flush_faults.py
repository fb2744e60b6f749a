"""Issue 11, item 4: a flush that fails at any step (capture, pack, PUT, a response lost after the
PUT, catalog write, position save, in-memory advance) leaves the shipper as if it never ran: the
tenants stay dirty, their commits pending, deletions waiting; the next flush ships everything
again (what already reached the replica twice, harmlessly). And a restore never silently returns
less than was committed: it says what is missing."""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import apsw
import pytest

from backups.catalog import BackupCatalog, Position
from backups.errors import ReplicaUnavailable
from backups.ledger import Capture
from backups.segment import FRAMES, TOMBSTONE, Chunk, parse_index
from backups.spool import Spool
from tests.support.app import ADMIN, in_process
from tests.support.backups import make, query, restore, restore_ok
from tests.support.shipper import FlakyReplica, Rig


class Faults:
    """Which injected fault fires next: each name armed fires once."""

    def __init__(self) -> None:
        self.armed: set[str] = set()

    def fire(self, name: str, error: Callable[[], BaseException]) -> None:
        if name in self.armed:
            self.armed.discard(name)
            raise error()


def disk_full() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device (injected)")


class FaultyCatalog(BackupCatalog):
    """A real catalog whose next write of an armed kind fails as a full disk makes it fail."""

    def __init__(self, path: Path, faults: Faults) -> None:
        super().__init__(path)
        self.faults = faults

    def add_segment(self, key: str, created_at: float, refs: Any) -> None:
        self.faults.fire("catalog", lambda: apsw.FullError("database or disk is full"))
        super().add_segment(key, created_at, refs)

    def save_positions(self, positions: dict[str, Position]) -> None:
        self.faults.fire("positions", lambda: apsw.FullError("database or disk is full"))
        super().save_positions(positions)


class LossyReplica(FlakyReplica):
    """Puts that fail before (`put`) or after the object is stored (`lost response`)."""

    def __init__(self, root: Path, faults: Faults) -> None:
        super().__init__(root)
        self.faults = faults

    def put_file(self, key: str, source: IO[bytes], *, if_absent: bool = False) -> None:
        self.faults.fire("put", lambda: ReplicaUnavailable("injected: replica unreachable"))
        super().put_file(key, source, if_absent=if_absent)
        self.faults.fire("lost response", lambda: ReplicaUnavailable("injected: response lost"))


class _FailingWrites:
    """A spooled file whose writes fail as on a full disk."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file

    def write(self, data: bytes) -> int:
        raise disk_full()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def __enter__(self) -> _FailingWrites:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


class FaultySpool(Spool):
    """A real spool; armed `capture`, the next segment's chunk bodies cannot be written; armed
    `pack`, the next finished segment cannot."""

    def __init__(self, spool: Spool, faults: Faults) -> None:
        super().__init__(spool.directory, spool.memory_bytes)
        self.faults = faults
        self._files = 0

    def file(self) -> Any:
        self._files += 1
        file = super().file()
        kind = "capture" if self._files % 2 else "pack"  # a segment: its bodies, then its whole
        if kind in self.faults.armed:
            self.faults.armed.discard(kind)
            return _FailingWrites(file)
        return file


class FaultyRig(Rig):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.faults = Faults()
        self.catalog.close()
        self.replica.close()
        self.catalog = FaultyCatalog(self.layout.system_dir / "backups.db", self.faults)
        self.replica = LossyReplica(root / "replica", self.faults)
        self.new_shipper()
        self.shipper.flusher.spool = FaultySpool(self.shipper.spool, self.faults)


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultyRig]:
    rig = FaultyRig(tmp_path)
    ledger = rig.shipper.ledger
    real_advance = ledger.advance

    def advance(captured: list[Capture]) -> None:
        rig.faults.fire("memory", lambda: MemoryError("injected"))
        real_advance(captured)

    monkeypatch.setattr(ledger, "advance", advance)
    yield rig
    rig.shutdown()


STEPS = ["capture", "pack", "put", "lost response", "catalog", "positions", "memory"]


@pytest.mark.parametrize("step", STEPS)
def test_a_flush_failing_at_any_step_is_as_if_it_never_ran(rig: FaultyRig, step: str) -> None:
    rig.create("acme")
    assert rig.shipper.flush()
    rig.insert("acme", 1, 2)
    ledger = rig.shipper.ledger
    entry = ledger.get("acme")
    assert entry is not None
    base, pending = entry.base, list(entry.pending)
    ledger.add_tombstone(Chunk("gone", "", TOMBSTONE, 0, 0, 0, taken_at=time.time()))
    position = rig.catalog.position("acme")

    rig.faults.armed.add(step)
    assert not rig.shipper.flush()

    assert not rig.faults.armed, "the fault fired"
    assert ledger.get("acme") is entry and entry.base == base and entry.pending == pending
    assert "acme" in ledger.dirty and rig.shipper.deletion_pending("gone")
    assert rig.shipper.failed_in_a_row == 1 and rig.shipper.health().last_error
    if step not in ("positions", "memory"):  # those two come after the catalog took the rows
        assert rig.catalog.position("acme") == position

    rig.insert("acme", 3)
    assert rig.shipper.flush()
    assert rig.shipper.failed_in_a_row == 0 and rig.shipper.backlog_bytes() == 0
    assert rig.restored("acme", time.time()) == [1, 2, 3]
    shipped: dict[int, float] = {}
    for row in rig.catalog.chunks("acme"):
        if row.kind == FRAMES:
            shipped.update(row.commits)
    times = sorted(shipped.values())
    assert times[-3:-1] == [t for _, t in pending]  # each commit keeps the time it was made
    assert [r.kind for r in rig.catalog.chunks("gone")] == [TOMBSTONE]


def test_a_chunk_shipped_twice_restores_once(rig: FaultyRig) -> None:
    """The same frames in two segments (a response lost after the PUT, then the re-ship): once
    the catalog knows both (a rebuild from the bucket reads every segment), overlapping ranges
    restore the same pages, and recording a segment again changes nothing."""
    rig.create("acme")
    rig.insert("acme", 1)
    rig.faults.armed.add("lost response")
    assert not rig.shipper.flush()
    rig.insert("acme", 2)
    assert rig.shipper.flush()
    for key in sorted(o.key for o in rig.replica.list("segments/")):  # as a rebuild does
        _, refs = parse_index(rig.replica.get(key), key)
        rig.catalog.add_segment(key, 0.0, refs)
        rig.catalog.add_segment(key, 0.0, refs)  # idempotent
    frames = [r for r in rig.catalog.chunks("acme") if r.kind == FRAMES]
    assert len(frames) == 2 and frames[0].first_lsn == frames[1].first_lsn < frames[1].last_lsn
    assert rig.restored("acme", time.time()) == [1, 2]


# -- restores that cannot be whole say so -----------------------------------------------------------


def test_a_restore_refuses_while_commits_are_not_in_the_replica(tmp_path: Path) -> None:
    replica = tmp_path / "replica"
    with in_process(tmp_path / "data", replica_url=str(replica), backup_flush_interval=3600.0) as app:
        make(app, "acme", 1)
        shipped = restore_ok(app.client, "acme", "latest", "before")["restored_to"]
        replica.rename(tmp_path / "away")  # the replica breaks: a file where its directory was
        replica.write_text("not a directory")
        query(app.client, "acme", "INSERT INTO t VALUES (2)")

        r = restore(app.client, "acme", "latest", "copy")
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "backup_behind"
        assert "1 commits" in r.json()["error"]["message"]
        assert app.client.get("/v1/admin/tenants/copy", headers=ADMIN).status_code == 404
        # in place, even to a moment the replica has: the live file holds the only copy of (2)
        r = restore(app.client, "acme", shipped)
        assert r.status_code == 503 and r.json()["error"]["code"] == "backup_behind", r.text
        assert query(app.client, "acme", "SELECT v FROM t ORDER BY v")["rows"] == [[1], [2]]

        replica.unlink()
        (tmp_path / "away").rename(replica)
        restore_ok(app.client, "acme", "latest", "copy")
        assert query(app.client, "copy", "SELECT v FROM t ORDER BY v")["rows"] == [[1], [2]]


def test_a_restore_says_what_the_catalog_lacks(tmp_path: Path) -> None:
    """The catalog lost the rows of shipped frames (a bug, a bad rebuild): a restore of `latest`
    names the missing LSNs instead of answering with less."""
    with in_process(
        tmp_path / "data", replica_url=str(tmp_path / "replica"), backup_flush_interval=3600.0
    ) as app:
        backups = app.server.backups
        assert backups is not None
        make(app, "acme", 1)
        backups.flush()
        query(app.client, "acme", "INSERT INTO t VALUES (2)")
        backups.flush()
        last = max((r for r in backups.catalog.chunks("acme") if r.kind == FRAMES), key=lambda r: r.last_lsn)
        backups.catalog.delete_chunks([last])

        r = restore(app.client, "acme", "latest", "copy")
        assert r.status_code == 500, r.text
        assert r.json()["error"]["code"] == "backup_broken"
        assert f"LSNs {last.first_lsn}..{last.last_lsn}" in r.json()["error"]["message"]
        backups.rebuild_catalog()
        restore_ok(app.client, "acme", "latest", "copy")
        assert query(app.client, "copy", "SELECT v FROM t ORDER BY v")["rows"] == [[1], [2]]
