"""Shared segments: written by the streaming SegmentWriter, then read back the way restore and
catalog rebuild do (index, byte ranges a piece at a time)."""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from backups.errors import SegmentCorrupt
from backups.segment import (
    FRAMES,
    PREFIX_SIZE,
    SNAPSHOT,
    TOMBSTONE,
    Chunk,
    ChunkRef,
    PageWrite,
    RangeReader,
    SegmentWriter,
    copy_snapshot,
    frame_records,
    index_length,
    parse_index,
    read_frames,
)
from backups.spool import PageImage, Spool

PAGE = 1024


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool", 1 << 20)


def sample() -> tuple[bytes, list[PageWrite], list[PageWrite]]:
    rng = random.Random(3)
    frames = [PageWrite(n, 0, rng.randbytes(PAGE)) for n in (1, 5, 2)] + [PageWrite(7, 9, b"\x00" * PAGE)]
    return rng.randbytes(3 * PAGE), frames, [PageWrite(3, 3, b"z" * 4096)]


def records(frames: list[PageWrite]) -> Iterator[bytes]:
    yield frame_records((f.page_no, f.commit_size, f.data) for f in frames)


def build(spool: Spool, meta: dict[str, object] | None = None) -> tuple[bytes, list[ChunkRef]]:
    image, acme, other = sample()
    writer = SegmentWriter(spool)
    writer.add(
        Chunk("acme", "gen-1", SNAPSHOT, 0, 0, PAGE, taken_at=100.5),
        PageImage(io.BytesIO(image), len(image), None).pieces(),
    )
    writer.add(Chunk("acme", "gen-1", FRAMES, 1, 4, PAGE, commits=[(2, 101.25), (4, 102.0)]), records(acme))
    writer.add(Chunk("other", "gen-9", FRAMES, 11, 11, 4096, commits=[(11, 103.0)]), records(other))
    writer.add(Chunk("gone", "", TOMBSTONE, 0, 0, 0, taken_at=104.0))
    out, refs = writer.finish(meta or {})
    with out:
        return out.read(), refs


def reader(data: bytes) -> RangeReader:
    """Range reads of an object holding `data`, cut short at its end (as a replica's)."""
    return lambda key, start, length: data[start : start + length]


def test_write_then_parse_index_gives_the_same_refs(spool: Spool) -> None:
    data, refs = build(spool, {"server": "s1", "created": 99.0})
    head = data[: PREFIX_SIZE + index_length(data[:PREFIX_SIZE])]

    meta, parsed = parse_index(head, "segments/k.seg")

    assert meta == {"server": "s1", "created": 99.0}
    assert [r.key for r in parsed] == ["segments/k.seg"] * 4
    assert [(r.tenant, r.generation, r.kind, r.first_lsn, r.last_lsn, r.page_size) for r in parsed] == [
        ("acme", "gen-1", SNAPSHOT, 0, 0, 1024),
        ("acme", "gen-1", FRAMES, 1, 4, 1024),
        ("other", "gen-9", FRAMES, 11, 11, 4096),
        ("gone", "", TOMBSTONE, 0, 0, 0),
    ]
    assert [(r.offset, r.length, r.commits, r.taken_at) for r in parsed] == [
        (r.offset, r.length, r.commits, r.taken_at) for r in refs
    ]
    assert parsed[1].commits == ((2, 101.25), (4, 102.0))
    assert [r.times for r in parsed] == [(100.5, 100.5), (101.25, 102.0), (103.0, 103.0), (104.0, 104.0)]
    assert parsed[-1].offset + parsed[-1].length == len(data)  # chunks tile the object


def test_chunk_bodies_decode_from_their_byte_ranges(spool: Spool) -> None:
    image, acme, other = sample()
    data, refs = build(spool)
    read = reader(data)

    out = io.BytesIO()
    assert copy_snapshot(read, "k", refs[0].offset, refs[0].length, out) == len(image)
    assert out.getvalue() == image
    assert list(read_frames(read, "k", refs[1].offset, refs[1].length, 1024)) == acme
    assert list(read_frames(read, "k", refs[2].offset, refs[2].length, 4096)) == other
    empty = io.BytesIO()
    assert copy_snapshot(read, "k", refs[3].offset, refs[3].length, empty) == 0


def test_an_empty_segment_round_trips(spool: Spool) -> None:
    out, refs = SegmentWriter(spool).finish({"created": 1.0})
    with out:
        data = out.read()
    assert refs == []
    assert parse_index(data, "k") == ({"created": 1.0}, [])


def test_damage_is_reported_as_segment_corrupt(spool: Spool) -> None:
    data, refs = build(spool)
    with pytest.raises(SegmentCorrupt, match="not a sqlfleet segment"):
        index_length(b"SQFSEG99" + data[8:PREFIX_SIZE])
    with pytest.raises(SegmentCorrupt):
        index_length(data[:5])
    with pytest.raises(SegmentCorrupt, match="index truncated"):
        parse_index(data[: PREFIX_SIZE + 3], "k")
    garbled = bytearray(data)
    garbled[PREFIX_SIZE + 2] ^= 0xFF
    with pytest.raises(SegmentCorrupt):
        parse_index(bytes(garbled), "k")
    frames = refs[1]
    truncated = data[: frames.offset + frames.length - 7]  # the object ends inside the chunk
    with pytest.raises(SegmentCorrupt, match="truncated"):
        list(read_frames(reader(truncated), "k", frames.offset, frames.length, 1024))
    with pytest.raises(SegmentCorrupt, match="whole number of frames"):
        list(read_frames(reader(data), "k", frames.offset, frames.length, 1000))
    flipped = bytearray(data)
    flipped[frames.offset + frames.length // 2] ^= 0x01  # inside the body: its checksum catches it
    with pytest.raises(SegmentCorrupt):
        list(read_frames(reader(bytes(flipped)), "k", frames.offset, frames.length, 1024))
