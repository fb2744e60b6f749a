"""Shared segments: one object per flush holding the new WAL frames (and small snapshots) of every
dirty tenant, each tenant's part compressed on its own so a restore range-reads only its bytes.

Layout:  b"SQFSEG01" | u32 index length | zstd(JSON index) | chunk | chunk | ...
The index lists every chunk with its tenant, generation, kind, LSN range, commit times and byte
range, so a segment describes itself: the local catalog can be rebuilt from the bucket alone.
A frames chunk body is zstd( (u32 page_no, u32 commit_size, page) * n ); a snapshot chunk body is
zstd(database image).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

import zstandard

from backups.errors import SegmentCorrupt

MAGIC = b"SQFSEG01"
PREFIX_SIZE = len(MAGIC) + 4
FRAMES, SNAPSHOT, TOMBSTONE = "frames", "snapshot", "deleted"
_FRAME_HEAD = struct.Struct(">II")


@dataclass(frozen=True)
class PageWrite:
    page_no: int
    commit_size: int  # database size in pages after the commit this frame ends, else 0
    data: bytes


@dataclass
class Chunk:
    """What one tenant contributes to a segment before packing."""

    tenant: str
    generation: str
    kind: str  # FRAMES or SNAPSHOT
    first_lsn: int  # FRAMES: LSN of the first frame; SNAPSHOT: LSN the image includes
    last_lsn: int
    page_size: int
    commits: list[tuple[int, float]] = field(default_factory=list)  # (lsn of commit frame, unix time)
    frames: list[PageWrite] = field(default_factory=list)
    image: bytes = b""
    taken_at: float = 0.0  # SNAPSHOT: when the image was taken; TOMBSTONE: when the tenant was deleted

    def body(self) -> bytes:
        if self.kind == SNAPSHOT:
            return self.image
        return b"".join(_FRAME_HEAD.pack(f.page_no, f.commit_size) + f.data for f in self.frames)


@dataclass(frozen=True)
class ChunkRef:
    """Where a chunk lives: the index entry, plus the segment's key once known."""

    tenant: str
    generation: str
    kind: str
    first_lsn: int
    last_lsn: int
    page_size: int
    commits: tuple[tuple[int, float], ...]
    taken_at: float
    offset: int
    length: int
    key: str = ""

    @property
    def times(self) -> tuple[float, float]:
        """(first, last) moment this chunk covers: its commits, or when the snapshot was taken."""
        if self.kind != FRAMES or not self.commits:
            return self.taken_at, self.taken_at
        return self.commits[0][1], self.commits[-1][1]


def pack(chunks: list[Chunk], meta: dict[str, object], level: int = 3) -> tuple[bytes, list[ChunkRef]]:
    """Serialize chunks into one segment object; returns its bytes and the chunk refs (no key)."""
    compressor = zstandard.ZstdCompressor(level=level)
    bodies = [compressor.compress(c.body()) for c in chunks]
    entries = [
        {"tenant": c.tenant, "generation": c.generation, "kind": c.kind, "first_lsn": c.first_lsn,
         "last_lsn": c.last_lsn, "page_size": c.page_size, "commits": c.commits, "taken_at": c.taken_at,
         "length": len(b)}
        for c, b in zip(chunks, bodies, strict=True)
    ]  # fmt: skip
    index = compressor.compress(json.dumps({"meta": meta, "chunks": entries}).encode())
    offset = PREFIX_SIZE + len(index)
    refs = []
    for entry, body in zip(entries, bodies, strict=True):
        refs.append(_ref(entry, offset))
        offset += len(body)
    return b"".join([MAGIC, struct.pack(">I", len(index)), index, *bodies]), refs


def _ref(entry: dict[str, object], offset: int, key: str = "") -> ChunkRef:
    commits = tuple((int(lsn), float(t)) for lsn, t in entry["commits"])  # type: ignore[attr-defined]
    return ChunkRef(
        str(entry["tenant"]), str(entry["generation"]), str(entry["kind"]), int(entry["first_lsn"]),  # type: ignore[call-overload]
        int(entry["last_lsn"]), int(entry["page_size"]), commits, float(entry["taken_at"]), offset,  # type: ignore[call-overload, arg-type]
        int(entry["length"]), key,  # type: ignore[call-overload]
    )  # fmt: skip


def index_length(prefix: bytes) -> int:
    """From the first PREFIX_SIZE bytes of a segment, the length of its index."""
    if len(prefix) < PREFIX_SIZE or prefix[: len(MAGIC)] != MAGIC:
        raise SegmentCorrupt("not a sqlfleet segment")
    length: int = struct.unpack(">I", prefix[len(MAGIC) : PREFIX_SIZE])[0]
    return length


def parse_index(head: bytes, key: str) -> tuple[dict[str, object], list[ChunkRef]]:
    """(meta, chunk refs) from the segment's first PREFIX_SIZE + index_length bytes."""
    length = index_length(head)
    if len(head) < PREFIX_SIZE + length:
        raise SegmentCorrupt(f"segment {key}: index truncated")
    try:
        raw = zstandard.ZstdDecompressor().decompress(head[PREFIX_SIZE : PREFIX_SIZE + length])
        index = json.loads(raw)
    except (zstandard.ZstdError, ValueError) as exc:
        raise SegmentCorrupt(f"segment {key}: bad index: {exc}") from None
    refs, offset = [], PREFIX_SIZE + length
    for entry in index["chunks"]:
        refs.append(_ref(entry, offset, key))
        offset += int(entry["length"])
    return index["meta"], refs


def decode_frames(body: bytes, page_size: int) -> list[PageWrite]:
    """The page writes of a FRAMES chunk body (as range-read: still compressed)."""
    raw = _decompress(body)
    step = _FRAME_HEAD.size + page_size
    if len(raw) % step:
        raise SegmentCorrupt("frames chunk is not a whole number of frames")
    frames = []
    for pos in range(0, len(raw), step):
        page_no, commit = _FRAME_HEAD.unpack_from(raw, pos)
        frames.append(PageWrite(page_no, commit, raw[pos + _FRAME_HEAD.size : pos + step]))
    return frames


def decode_snapshot(body: bytes) -> bytes:
    return _decompress(body)


def _decompress(body: bytes) -> bytes:
    try:
        return zstandard.ZstdDecompressor().decompress(body)
    except zstandard.ZstdError as exc:
        raise SegmentCorrupt(f"bad chunk: {exc}") from None
