"""backups.wal reads WALs a batch at a time (real SQLite WALs): the same frames as reading them
whole, the same commits SQLite's recovery keeps, and memory that does not grow with the WAL."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import apsw
import pytest

from backups import wal
from backups.errors import WalCorrupt
from tests.support.shipper import open_tenant


def big_wal(path: Path, commits: int, blob: int) -> tuple[apsw.Connection, Path]:
    conn = open_tenant(path)
    conn.execute("CREATE TABLE t(v)")
    for _ in range(commits):
        conn.execute("INSERT INTO t VALUES (randomblob(?))", (blob,))
    return conn, Path(f"{path}-wal")


def test_batches_hold_the_frames_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conn, path = big_wal(tmp_path / "t.db", 30, 9000)
    try:
        header, frames = wal.scan(path)
        assert header is not None and len(frames) > 60
        monkeypatch.setattr(wal, "BATCH_BYTES", 5 * header.frame_size)
        with open(path, "rb") as f:
            batches = list(wal.read_batches(f, header, 3, len(frames), frames[2].checksum))
        assert {len(b) for b in batches[:-1]} == {5}
        assert [fr for b in batches for fr in b] == frames[3:]
        with open(path, "rb") as f, pytest.raises(WalCorrupt, match="ends at frame"):
            list(wal.read_batches(f, header, 3, len(frames) + 1, frames[2].checksum))

        commits = wal.tail_commits(path, header, 3, frames[2].checksum)
        assert commits == [wal.Commit(f.index + 1, f.checksum) for f in frames[3:] if f.commit_size]
        assert wal.tail_commits(path, header, 3, frames[1].checksum) is None
        assert wal.last_commit(path) == (header, commits[-1])
    finally:
        conn.close()


def test_the_last_commit_ignores_what_follows_a_damaged_frame(tmp_path: Path) -> None:
    conn, path = big_wal(tmp_path / "t.db", 10, 100)
    try:
        header, frames = wal.scan(path)
        assert header is not None
        raw = bytearray(path.read_bytes())
        raw[header.frame_offset(frames[-1].index) + wal.FRAME_HEADER_SIZE] ^= 1
        damaged = tmp_path / "damaged-wal"
        damaged.write_bytes(raw)
        before = [f for f in frames[:-1] if f.commit_size][-1]

        assert wal.last_commit(damaged) == (header, wal.Commit(before.index + 1, before.checksum))
        assert wal.last_commit(tmp_path / "absent-wal") == (None, None)
    finally:
        conn.close()


def test_finding_the_last_commit_of_a_large_wal_holds_one_batch(tmp_path: Path) -> None:
    conn, path = big_wal(tmp_path / "t.db", 4, 6_000_000)  # a 24 MB WAL
    try:
        tracemalloc.start()
        try:
            header, last = wal.last_commit(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert header is not None and last is not None
        assert last.frames * header.frame_size > 24_000_000
        assert peak < 8 * wal.BATCH_BYTES, f"peaked at {peak >> 20} MiB"  # checksums take a few copies
    finally:
        conn.close()
