"""Segments stream both ways on real files: chunk bodies far larger than the spool's memory go
through the writer to a temporary file, up to a LocalReplica with put_file, and back through
range reads into a file, with Python's allocations bounded throughout; and segments written
before chunk checksums (the same SQFSEG01 layout) still read."""

from __future__ import annotations

import io
import json
import random
import struct
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import zstandard

from backups.local_replica import LocalReplica
from backups.segment import (
    FRAMES,
    MAGIC,
    SNAPSHOT,
    Chunk,
    PageWrite,
    SegmentWriter,
    copy_snapshot,
    frame_records,
    index_length,
    parse_index,
    read_frames,
)
from backups.spool import PageImage, Spool

PAGE = 4096
T = TypeVar("T")


def peak_allocated(action: Callable[[], T]) -> tuple[T, int]:
    """What `action` returns, and the peak of Python allocations while it ran."""
    tracemalloc.start()
    try:
        result = action()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def page(n: int) -> bytes:
    """Page `n` of the test data: incompressible, the same on every call, different for every n."""
    return random.Random(n).randbytes(PAGE)


def test_large_chunks_stream_through_files_in_bounded_memory(tmp_path: Path) -> None:
    count = 6000  # ~24 MiB of frames, and as large a snapshot: a spool of 1 MiB must spill
    image_path = tmp_path / "image.db"
    with open(image_path, "wb") as f:
        for n in range(count):
            f.write(page(n))
    frames_path = tmp_path / "frames.bin"  # the frames kept on disk, to compare with afterwards
    with open(frames_path, "wb") as f:
        for n in range(count):
            f.write(frame_records([(n % 700 + 1, n + 1 if n % 1000 == 999 else 0, page(n))]))
    spool = Spool(tmp_path / "spool", 1 << 20)
    replica = LocalReplica(tmp_path / "replica")

    def frame_body() -> Iterator[bytes]:
        with open(frames_path, "rb") as f:
            while piece := f.read(1 << 20):
                yield piece

    def write() -> list[tuple[str, int, int, int]]:
        writer = SegmentWriter(spool)
        with open(image_path, "rb") as f:
            image = PageImage(f, count * PAGE, None)
            writer.add(Chunk("acme", "g", SNAPSHOT, 0, 0, PAGE, taken_at=1.0), image.pieces())
        writer.add(Chunk("acme", "g", FRAMES, 1, count, PAGE), frame_body())
        assert writer.size < count * (PAGE + 8) * 2  # about the input: nothing compresses
        segment, refs = writer.finish({"created": 2.0})
        with segment:
            replica.put_file("segments/big.seg", segment)
        return [(r.kind, r.offset, r.length, r.page_size) for r in refs]

    refs, write_peak = peak_allocated(write)
    assert write_peak < 8 << 20, f"writing {2 * count * PAGE >> 20} MiB peaked at {write_peak >> 20} MiB"
    assert list(spool.directory.iterdir()) == []  # anonymous temporary files only, all closed

    (_, snap_at, snap_len, _), (_, frames_at, frames_len, _) = refs
    restored = tmp_path / "restored.db"

    def read_back() -> int:
        with open(restored, "wb") as out:
            size = copy_snapshot(replica.get_range, "segments/big.seg", snap_at, snap_len, out)
        with open(frames_path, "rb") as expected:
            for n, write in enumerate(
                read_frames(replica.get_range, "segments/big.seg", frames_at, frames_len, PAGE)
            ):
                page_no, commit = struct.unpack(">II", expected.read(8))
                assert write == PageWrite(page_no, commit, expected.read(PAGE)), n
            assert expected.read() == b""
        return size

    size, read_peak = peak_allocated(read_back)
    assert read_peak < 16 << 20, f"reading back peaked at {read_peak >> 20} MiB"
    assert size == count * PAGE
    assert restored.read_bytes() == image_path.read_bytes()


def test_a_body_that_fails_midway_leaves_the_segment_as_it_was(tmp_path: Path) -> None:
    writer = SegmentWriter(Spool(tmp_path / "spool", 1 << 16))  # small: the failure is on disk
    writer.add(Chunk("a", "g", FRAMES, 1, 1, PAGE, commits=[(1, 1.0)]), [frame_records([(1, 1, page(1))])])
    size = writer.size

    def failing() -> Iterator[bytes]:
        for n in range(100):
            yield frame_records([(n + 1, 0, page(n))])
        raise OSError("the WAL went away")

    with pytest.raises(OSError, match="went away"):
        writer.add(Chunk("b", "g", FRAMES, 1, 100, PAGE), failing())
    assert writer.size == size and len(writer) == 1
    writer.add(Chunk("c", "g", FRAMES, 5, 5, PAGE, commits=[(5, 2.0)]), [frame_records([(2, 2, page(2))])])
    segment, refs = writer.finish({})
    with segment:
        data = segment.read()

    def read(key: str, start: int, length: int) -> bytes:
        return data[start : start + length]

    assert [r.tenant for r in refs] == ["a", "c"]
    assert list(read_frames(read, "k", refs[1].offset, refs[1].length, PAGE)) == [PageWrite(2, 2, page(2))]
    assert parse_index(data[: 12 + index_length(data[:12])], "k")[1][1].tenant == "c"


def test_segments_written_before_chunk_checksums_still_read() -> None:
    """The layout of the first SQFSEG01 writer (chunks compressed whole, no zstd checksum)."""
    old = zstandard.ZstdCompressor(level=3)
    image = page(7) + page(8)
    bodies = [
        old.compress(image),
        old.compress(frame_records([(2, 0, page(9)), (3, 3, page(10))])),
    ]
    common = {"tenant": "t", "generation": "g", "page_size": PAGE}
    entries = [
        {
            **common,
            "kind": SNAPSHOT,
            "first_lsn": 0,
            "last_lsn": 0,
            "commits": [],
            "taken_at": 5.0,
            "length": len(bodies[0]),
        },
        {
            **common,
            "kind": FRAMES,
            "first_lsn": 1,
            "last_lsn": 2,
            "commits": [[2, 6.0]],
            "taken_at": 0.0,
            "length": len(bodies[1]),
        },
    ]
    index = old.compress(json.dumps({"meta": {"created": 6.0}, "chunks": entries}).encode())
    data = b"".join([MAGIC, struct.pack(">I", len(index)), index, *bodies])

    def read(key: str, start: int, length: int) -> bytes:
        return data[start : start + length]

    meta, (snap, frames) = parse_index(data, "old.seg")
    out = io.BytesIO()
    assert copy_snapshot(read, "old.seg", snap.offset, snap.length, out) == 2 * PAGE
    assert out.getvalue() == image
    assert list(read_frames(read, "old.seg", frames.offset, frames.length, PAGE)) == [
        PageWrite(2, 0, page(9)),
        PageWrite(3, 3, page(10)),
    ]
    assert meta == {"created": 6.0} and frames.commits == ((2, 6.0),)
