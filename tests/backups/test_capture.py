"""backups.capture and wal.check_spans: a flush reads the new frames of a batch of tenants whole and
checks them together, streams a tenant with more than a batch, and gives exactly what the per-frame
reader (wal.read_batches) gives; a damaged or short WAL fails only its own tenant."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backups import capture, flush, wal
from backups.errors import WalCorrupt
from backups.segment import frame_records
from tests.support.shipper import Rig, open_tenant


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    rig.shutdown()


def _wal_with_commits(path: Path, commits: int, size: int = 100) -> Path:
    conn = open_tenant(path)
    try:
        conn.execute("CREATE TABLE t(v)")
        for i in range(commits):
            conn.execute("INSERT INTO t VALUES (?)", (os.urandom(size + 37 * i),))
    finally:
        conn.close()
    return Path(f"{path}-wal")


def _expected(path: Path, start: int) -> tuple[bytes, list[int], wal.Checksum]:
    """What the per-frame reader makes of frames [start, end) of the WAL at `path`."""
    header, frames = wal.scan(path)
    assert header is not None
    records = frame_records((f.page_no, f.commit_size, f.data) for f in frames[start:])
    return records, [f.index + 1 for f in frames[start:] if f.commit_size], frames[-1].checksum


def test_spans_of_several_wals_check_out_as_the_per_frame_reader_reads_them(tmp_path: Path) -> None:
    wals = [_wal_with_commits(tmp_path / f"{i}.db", commits) for i, commits in enumerate((1, 7, 40))]
    spans = []
    for i, path in enumerate(wals):
        header, frames = wal.scan(path)
        assert header is not None
        start = (0, 2, 11)[i]
        seed = header.checksum if start == 0 else frames[start - 1].checksum
        fd = os.open(path, os.O_RDONLY)
        try:
            spans.append(wal.read_span(fd, header, start, len(frames), seed))
        finally:
            os.close(fd)

    results = wal.check_spans(spans)

    for path, span, got in zip(wals, spans, results, strict=True):
        assert isinstance(got, wal.Records)
        body, commits, checksum = _expected(path, span.start)
        assert (got.body, got.commits, got.checksum) == (body, commits, checksum)
        assert got.count == span.stop - span.start


def test_a_damaged_frame_or_a_short_wal_fails_only_its_own_span(tmp_path: Path) -> None:
    good, damaged, short = (_wal_with_commits(tmp_path / f"{n}.db", 6) for n in ("good", "damaged", "short"))
    header, frames = wal.scan(damaged)
    assert header is not None
    with open(damaged, "r+b") as f:  # a byte of frame 3's page
        f.seek(header.frame_offset(3) + wal.FRAME_HEADER_SIZE + 100)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    spans = []
    for path, extra in ((good, 0), (damaged, 0), (short, 2)):  # `short` is asked for 2 frames too many
        h, fr = wal.scan(path) if path != damaged else (header, frames)
        assert h is not None
        fd = os.open(path, os.O_RDONLY)
        try:
            spans.append(wal.read_span(fd, h, 0, len(fr) + extra, h.checksum))
        finally:
            os.close(fd)

    ok, bad, cut = wal.check_spans(spans)

    assert isinstance(ok, wal.Records) and ok.body == _expected(good, 0)[0]
    assert isinstance(bad, WalCorrupt) and "frame 3" in str(bad)
    assert isinstance(cut, WalCorrupt) and "WAL ends" in str(cut)


def test_read_records_streams_a_long_wal_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _wal_with_commits(tmp_path / "a.db", 30, size=3000)
    monkeypatch.setattr(wal, "BATCH_BYTES", 5 * 4120)  # a few frames per batch
    header, frames = wal.scan(path)
    assert header is not None
    fd = os.open(path, os.O_RDONLY)
    try:
        batches = list(wal.read_records(fd, header, 0, len(frames), header.checksum))
    finally:
        os.close(fd)
    assert len(batches) > 3 and all(b.count <= 5 for b in batches)
    body, commits, checksum = _expected(path, 0)
    assert b"".join(b.body for b in batches) == body
    assert [c for b in batches for c in b.commits] == commits
    assert batches[-1].checksum == checksum


def test_a_flush_of_many_tenants_ships_small_and_large_ones_and_isolates_a_broken_one(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a small check batch: the 30 tenants take several rounds of reading and checking
    monkeypatch.setattr(flush, "CHECK_BYTES", 3 * 4120)
    tenants = [f"t{i:02d}" for i in range(30)]
    for t in tenants:
        rig.create(t)
    assert rig.shipper.flush()
    for i, t in enumerate(tenants):
        rig.insert(t, *(f"{t}-{k}" for k in range(i % 3 + 1)))
    rig.insert("t07", os.urandom(capture_limit() + 1))  # more than a small capture: it streams
    header, frames = wal.scan(rig.wal("t11"))
    assert header is not None
    with open(rig.wal("t11"), "r+b") as f:  # t11's last commit frame: its checksum
        f.seek(header.frame_offset(len(frames) - 1) + 16)
        f.write(b"\xff\xff\xff\xff")
    expected = {t: rig.live(t) for t in tenants}
    generation = rig.shipper.ledger.get("t11").base.generation  # type: ignore[union-attr]

    assert rig.shipper.flush()

    for t in tenants:
        if t != "t11":
            assert rig.restored(t, time.time()) == expected[t], t
    restarted = rig.shipper.ledger.get("t11")  # its WAL did not continue: a new generation
    assert restarted is not None and restarted.base.generation != generation
    assert rig.shipper.flush()
    assert rig.restored("t11", time.time()) == expected["t11"]


def capture_limit() -> int:
    return flush.SMALL_BYTES


def test_small_and_streamed_captures_give_the_same_chunk(rig: Rig) -> None:
    rig.create("a")
    assert rig.shipper.flush()
    rig.insert("a", 1, 2, 3)
    entry = rig.shipper.ledger.get("a")
    assert entry is not None
    pending = list(entry.pending)
    small = capture.read_small(entry, pending, 1 << 20)
    assert isinstance(small, capture.Small)
    (records,) = wal.check_spans([small.span])
    assert isinstance(records, wal.Records)
    chunk, position, frame_bytes = capture.small_chunk("a", entry, pending, small, records)
    with capture.NewFrames("a", entry, pending) as streamed:
        body = b"".join(streamed.body())
    assert records.body == body
    assert (chunk.first_lsn, chunk.last_lsn, chunk.commits) == (
        streamed.chunk.first_lsn,
        streamed.chunk.last_lsn,
        streamed.chunk.commits,
    )
    assert (position, frame_bytes) == (streamed.position, streamed.frame_bytes)
    assert capture.read_small(entry, pending, 1) is None  # past the limit: it streams


def test_an_empty_span_checks_out_empty_and_a_missing_one_short(tmp_path: Path) -> None:
    path = _wal_with_commits(tmp_path / "a.db", 2)
    header, frames = wal.scan(path)
    assert header is not None
    fd = os.open(path, os.O_RDONLY)
    try:
        empty = wal.read_span(fd, header, len(frames), len(frames), frames[-1].checksum)
        missing = wal.read_span(fd, header, len(frames), len(frames) + 1, frames[-1].checksum)
    finally:
        os.close(fd)
    for spans in ([empty], [empty, missing]):
        results = wal.check_spans(spans)
        assert results[0] == wal.Records(len(frames), 0, b"", [], frames[-1].checksum)
    assert isinstance(wal.check_spans([missing])[0], WalCorrupt)
