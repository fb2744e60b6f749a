"""Shared segments: pack, then read back the way restore and catalog rebuild do (index, ranges)."""

from __future__ import annotations

import random

import pytest

from backups.errors import SegmentCorrupt
from backups.segment import (
    FRAMES,
    PREFIX_SIZE,
    SNAPSHOT,
    TOMBSTONE,
    Chunk,
    PageWrite,
    decode_frames,
    decode_snapshot,
    index_length,
    pack,
    parse_index,
)


def chunks() -> list[Chunk]:
    rng = random.Random(3)
    page = 1024
    frames = [PageWrite(n, 0, rng.randbytes(page)) for n in (1, 5, 2)] + [PageWrite(7, 9, b"\x00" * page)]
    return [
        Chunk("acme", "gen-1", SNAPSHOT, 0, 0, page, image=rng.randbytes(3 * page), taken_at=100.5),
        Chunk("acme", "gen-1", FRAMES, 1, 4, page, commits=[(2, 101.25), (4, 102.0)], frames=frames),
        Chunk(
            "other",
            "gen-9",
            FRAMES,
            11,
            11,
            4096,
            commits=[(11, 103.0)],
            frames=[PageWrite(3, 3, b"z" * 4096)],
        ),
        Chunk("gone", "", TOMBSTONE, 0, 0, 0, taken_at=104.0),
    ]


def test_pack_then_parse_index_gives_the_same_refs() -> None:
    data, refs = pack(chunks(), {"server": "s1", "created": 99.0})
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


def test_chunk_bodies_decode_from_their_byte_ranges() -> None:
    original = chunks()
    data, refs = pack(original, {})

    def body(i: int) -> bytes:
        return data[refs[i].offset : refs[i].offset + refs[i].length]

    assert decode_snapshot(body(0)) == original[0].image
    assert decode_frames(body(1), 1024) == original[1].frames
    assert decode_frames(body(2), 4096) == original[2].frames
    assert decode_snapshot(body(3)) == b""


def test_an_empty_segment_round_trips() -> None:
    data, refs = pack([], {"created": 1.0})
    assert refs == []
    assert parse_index(data, "k") == ({"created": 1.0}, [])


def test_damage_is_reported_as_segment_corrupt() -> None:
    data, refs = pack(chunks(), {})
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
    with pytest.raises(SegmentCorrupt):
        decode_frames(data[frames.offset : frames.offset + frames.length - 7], 1024)
    with pytest.raises(SegmentCorrupt, match="whole number of frames"):
        decode_frames(data[frames.offset : frames.offset + frames.length], 1000)
