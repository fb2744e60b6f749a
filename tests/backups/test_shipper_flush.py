"""backups.flush over real WAL files and a real LocalReplica: each commit's frames are captured
exactly, with the time it committed; all dirty tenants share one segment; nothing advances before
the upload succeeded, and a failed upload is retried from where it was."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backups import wal
from backups.errors import ReplicaError
from backups.segment import FRAMES, SNAPSHOT, TOMBSTONE, SegmentWriter, read_frames
from tests.support.shipper import Rig


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    rig.shutdown()


def segments(rig: Rig) -> list[str]:
    return sorted(o.key for o in rig.replica.list("segments/"))


def test_each_commit_is_captured_with_its_frames_and_time(rig: Rig) -> None:
    conn = rig.create("acme")
    assert rig.shipper.flush()
    ledger, flusher = rig.shipper.ledger, rig.shipper.flusher
    entry = ledger.get("acme")
    assert entry is not None and entry.pending == [] and entry.snapshot is None
    base = entry.base
    windows = []
    for sql in (
        "INSERT INTO t(v) VALUES ('one')",
        "INSERT INTO t(v) VALUES (randomblob(20000))",  # overflow pages: one commit, many frames
        "BEGIN; INSERT INTO t(v) VALUES ('two'); INSERT INTO t(v) VALUES ('three'); COMMIT",
    ):
        before = time.time()
        conn.execute(sql)
        windows.append((before, time.time()))

    header, frames = wal.scan(rig.wal("acme"))
    assert header is not None
    commit_counts = [f.index + 1 for f in frames if f.commit_size]
    assert [n for n, _ in entry.pending] == commit_counts[-3:]
    assert all(lo <= t <= hi for (_, t), (lo, hi) in zip(entry.pending, windows, strict=True))
    pending = list(entry.pending)

    writer = SegmentWriter(rig.shipper.spool)
    capture = flusher.capture(writer, "acme", entry)

    assert capture is not None and capture.snapshot is None and len(writer) == 1
    data, refs = writer.finish({})
    with data:
        segment = data.read()
    [chunk] = refs
    new = frames[base.wal_frames :]
    assert chunk.kind == FRAMES and chunk.generation == base.generation
    assert (chunk.first_lsn, chunk.last_lsn) == (base.lsn + 1, base.lsn + len(new))
    written = read_frames(lambda _, at, n: segment[at : at + n], "", chunk.offset, chunk.length, 4096)
    assert [(w.page_no, w.commit_size, w.data) for w in written] == [
        (f.page_no, f.commit_size, f.data) for f in new
    ]
    assert list(chunk.commits) == [(base.lsn + n - base.wal_frames, t) for n, t in pending]
    assert capture.position == dataclasses.replace(
        base, lsn=base.lsn + len(new), wal_frames=len(frames), seed=frames[-1].checksum
    )
    assert capture.consumed == 3 and capture.commit_times == [t for _, t in pending]
    assert entry.pending == pending and entry.base == base  # capturing changes nothing


def test_one_segment_holds_every_dirty_tenant(rig: Rig) -> None:
    rig.create("a")
    rig.create("b")
    rig.create("idle")
    assert rig.shipper.flush()
    before = segments(rig)
    rig.insert("a", 1)
    rig.insert("b", 2, 3)

    assert sorted(rig.shipper.flusher.run()) == ["a", "b"]

    added = sorted(set(segments(rig)) - set(before))
    assert len(added) == 1
    rows = [r for t in ("a", "b", "idle") for r in rig.catalog.chunks(t) if r.key == added[0]]
    assert sorted((r.tenant, r.kind) for r in rows) == [("a", FRAMES), ("b", FRAMES)]
    for tenant in ("a", "b"):
        entry = rig.shipper.ledger.get(tenant)
        assert entry is not None and entry.pending == []
        assert rig.catalog.position(tenant) == entry.base
    assert rig.shipper.ledger.dirty == set() and rig.shipper.backlog_bytes() == 0
    assert rig.restored("b", time.time()) == [2, 3]


def test_a_failed_upload_leaves_everything_as_it_was_and_the_next_flush_retries(rig: Rig) -> None:
    rig.create("acme")
    assert rig.shipper.flush()
    rig.insert("acme", 1, 2)
    shipper, ledger = rig.shipper, rig.shipper.ledger
    entry = ledger.get("acme")
    assert entry is not None
    base, pending, position = entry.base, list(entry.pending), rig.catalog.position("acme")
    before, backlog = segments(rig), shipper.backlog_bytes("acme")
    assert backlog > 0

    rig.replica.fail_puts = 2
    with pytest.raises(ReplicaError):
        shipper.ship()
    assert not shipper.flush()

    assert entry.base == base and entry.pending == pending and ledger.get("acme") is entry
    assert "acme" in ledger.dirty
    assert rig.catalog.position("acme") == position
    assert segments(rig) == before
    assert shipper.backlog_bytes("acme") == backlog
    assert shipper.failed_in_a_row == 2 and shipper.flusher.failures == 2

    assert shipper.flush()
    assert shipper.failed_in_a_row == 0 and shipper.last_success > 0
    assert entry.pending == [] and rig.catalog.position("acme") == entry.base
    assert rig.restored("acme", time.time()) == [1, 2]
    shipped = [c for r in rig.catalog.chunks("acme") if r.kind == FRAMES for c in r.commits]
    assert [t for _, t in shipped[-2:]] == [t for _, t in pending]  # the times they committed


def test_a_failed_upload_keeps_snapshots_and_deletions_waiting(rig: Rig) -> None:
    rig.replica.fail_puts = 1
    rig.create("new")  # its first snapshot waits for the replica
    rig.shipper.after_delete("gone")  # flushes: fails
    assert rig.shipper.deletion_pending("gone")
    entry = rig.shipper.ledger.get("new")
    assert entry is not None and [c.kind for c in entry.carried] == [SNAPSHOT]

    assert rig.shipper.flush()
    assert not rig.shipper.deletion_pending("gone")
    assert [r.kind for r in rig.catalog.chunks("gone")] == [TOMBSTONE]
    assert entry.carried == []
    assert {r.kind for r in rig.catalog.chunks("new")} == {SNAPSHOT, FRAMES}


def test_commits_made_during_an_upload_stay_pending(rig: Rig) -> None:
    rig.create("acme")
    assert rig.shipper.flush()
    flusher, ledger = rig.shipper.flusher, rig.shipper.ledger
    rig.insert("acme", 1)
    entry = ledger.get("acme")
    assert entry is not None
    logs, _ = ledger.take()
    writer = SegmentWriter(rig.shipper.spool)
    capture = flusher.capture(writer, "acme", logs["acme"])
    assert capture is not None
    rig.insert("acme", "late")  # after the capture, before the upload finished
    flusher.upload(writer)
    flusher.advance([capture])

    assert entry.base == capture.position and len(entry.pending) == 1
    assert "acme" in ledger.dirty
    assert rig.restored("acme", time.time()) == [1]
    assert rig.shipper.flush()
    assert rig.restored("acme", time.time()) == [1, "late"]


def test_a_wal_that_does_not_continue_the_base_marks_the_tenant_broken(rig: Rig) -> None:
    rig.create("acme")
    assert rig.shipper.flush()
    rig.insert("acme", 1)
    position = rig.catalog.position("acme")
    header, frames = wal.scan(rig.wal("acme"))
    assert header is not None
    with open(rig.wal("acme"), "r+b") as f:  # the unshipped commit's checksum, not its page
        f.seek(header.frame_offset(len(frames) - 1) + 16)
        f.write(b"\xff\xff\xff\xff")

    assert rig.shipper.flusher.run() == ["acme"]  # for maintenance: a new generation

    entry = rig.shipper.ledger.get("acme")
    assert entry is not None and entry.broken
    assert rig.catalog.position("acme") == position  # nothing of the broken WAL was shipped


def test_segments_split_past_the_size_bound_but_never_inside_a_tenant(tmp_path: Path) -> None:
    rig = Rig(tmp_path, segment_max_bytes=1)
    try:
        rig.create("a")
        rig.create("b")
        assert rig.shipper.flush()
        keys = segments(rig)
        assert len(keys) == 2
        for key in keys:
            rows = [r for t in ("a", "b") for r in rig.catalog.chunks(t) if r.key == key]
            assert len({r.tenant for r in rows}) == 1
            assert {r.kind for r in rows} == {SNAPSHOT, FRAMES}  # its snapshot and frames together
    finally:
        rig.shutdown()


def test_the_backlog_counts_unshipped_frames_and_bounds_writes(tmp_path: Path) -> None:
    rig = Rig(tmp_path, max_backlog_bytes=3 * 4096)
    try:
        rig.create("acme")
        assert rig.shipper.flush()
        assert rig.shipper.backlog_bytes("acme") == 0 and rig.shipper.writable("acme")
        rig.insert("acme", 1)
        entry = rig.shipper.ledger.get("acme")
        assert entry is not None
        assert rig.shipper.backlog_bytes("acme") == (entry.pending[-1][0] - entry.base.wal_frames) * 4096
        rig.conns["acme"].execute("INSERT INTO t(v) VALUES (randomblob(20000))")
        assert not rig.shipper.writable("acme") and rig.shipper.backlog_bytes() > 3 * 4096
        assert rig.shipper.writable("unknown")

        assert rig.shipper.flush()
        assert rig.shipper.backlog_bytes() == 0 and rig.shipper.writable("acme")
    finally:
        rig.shutdown()
