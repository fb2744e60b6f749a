"""Shared segments: one object per flush holding the new WAL frames (and snapshots) of every
dirty tenant, each tenant's part compressed on its own so a restore range-reads only its bytes.

Layout:  b"SQFSEG01" | u32 index length | zstd(JSON index) | chunk | chunk | ...
The index lists every chunk with its tenant, generation, kind, LSN range, commit times and byte
range, so a segment describes itself: the local catalog can be rebuilt from the bucket alone.
A frames chunk body is one zstd frame of (u32 page_no, u32 commit_size, page) * n; a snapshot
chunk body is one zstd frame of the database image; a tombstone's body is an empty frame. Frames
carry zstd's content checksum (segments written before it had none and read the same).

Both directions stream: `SegmentWriter` compresses each chunk body as it arrives into a spool
(memory while small, then a temporary file), and the readers decompress a byte range a bounded
piece at a time, so neither holds a whole chunk in memory, whatever its size.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

import orjson
import zstandard

from backups.errors import SegmentCorrupt
from backups.readers import read_exactly
from backups.spool import PIECE, PageImage, Spool

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

MAGIC = b"SQFSEG01"
PREFIX_SIZE = len(MAGIC) + 4
FRAMES, SNAPSHOT, TOMBSTONE = "frames", "snapshot", "deleted"
_FRAME_HEAD = struct.Struct(">II")
RANGE_PIECE = 4 << 20  # bytes of a stored chunk fetched per range read (one GET on S3)

# (key, start, length) -> bytes [start, start + length) of the object, as ReplicaClient.get_range
RangeReader = Callable[[str, int, int], bytes]


@dataclass(frozen=True)
class PageWrite:
    page_no: int
    commit_size: int  # database size in pages after the commit this frame ends, else 0
    data: bytes


@dataclass(eq=False)
class Chunk:
    """What one tenant contributes to a segment (its body streams in separately)."""

    tenant: str
    generation: str
    kind: str  # FRAMES, SNAPSHOT or TOMBSTONE
    first_lsn: int  # FRAMES: LSN of the first frame; SNAPSHOT: LSN the image includes
    last_lsn: int
    page_size: int
    commits: list[tuple[int, float]] = field(default_factory=list)  # (lsn of commit frame, unix time)
    image: PageImage | None = None  # SNAPSHOT: the database image
    taken_at: float = 0.0  # SNAPSHOT: when the image was taken; TOMBSTONE: when the tenant was deleted


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


def frame_records(frames: Iterable[tuple[int, int, bytes]]) -> bytes:
    """The body bytes of (page_no, commit_size, page) frames."""
    return b"".join(_FRAME_HEAD.pack(page_no, commit) + data for page_no, commit, data in frames)


class SegmentWriter:
    """Builds one segment: each chunk body is compressed as it streams in, into a spooled file,
    so memory stays bounded whatever the chunks' sizes. Not thread-safe. Close it, or `finish`."""

    def __init__(self, spool: Spool, level: int = 3) -> None:
        self._spool = spool
        # the checksum makes a damaged body fail to decode instead of restoring wrong pages
        self._compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
        self._bodies = spool.file()
        self._entries: list[dict[str, object]] = []
        self._chunks: list[tuple[str, str, str, int, int, int, tuple[tuple[int, float], ...], float]] = []

    def __len__(self) -> int:
        """Chunks added so far."""
        return len(self._entries)

    @property
    def size(self) -> int:
        """Compressed bytes of the chunk bodies added so far."""
        return self._bodies.tell()

    def add(self, chunk: Chunk, body: Iterable[bytes] = ()) -> None:
        """Append `chunk` with the body bytes `body` yields, compressing them as they come.
        `chunk`'s fields are read once `body` is exhausted, so a body may fill them in as it goes
        (a frames body: the commits it passes). If iterating `body` raises, the segment is left
        as it was before the call and the exception propagates."""
        start = self._bodies.tell()
        try:
            pieces = iter(body)
            first = next(pieces, b"")
            second = next(pieces, None)
            if second is None:  # one piece (most chunks): one call, no stream to set up
                self._bodies.write(self._compressor.compress(first))
            else:
                writer = self._compressor.stream_writer(self._bodies, closefd=False)
                writer.write(first)
                writer.write(second)
                for piece in pieces:
                    writer.write(piece)
                writer.flush(zstandard.FLUSH_FRAME)  # ends the zstd frame; the bodies file stays open
        except BaseException:
            self._bodies.seek(start)
            self._bodies.truncate(start)
            raise
        commits = tuple(chunk.commits)
        self._entries.append(
            {
                "tenant": chunk.tenant,
                "generation": chunk.generation,
                "kind": chunk.kind,
                "first_lsn": chunk.first_lsn,
                "last_lsn": chunk.last_lsn,
                "page_size": chunk.page_size,
                "commits": commits,
                "taken_at": chunk.taken_at,
                "length": self._bodies.tell() - start,
            }
        )
        # the refs `finish` returns, but for the offset (the index's length is not known yet)
        self._chunks.append(
            (
                chunk.tenant,
                chunk.generation,
                chunk.kind,
                chunk.first_lsn,
                chunk.last_lsn,
                chunk.page_size,
                commits,
                chunk.taken_at,
            )
        )

    def finish(self, meta: dict[str, object]) -> tuple[IO[bytes], list[ChunkRef]]:
        """The whole segment as a spooled file positioned at its start (the caller closes it),
        and the refs of its chunks (no key yet). Closes the writer."""
        try:
            index = self._compressor.compress(orjson.dumps({"meta": meta, "chunks": self._entries}))
            out = self._spool.file()
            try:
                out.write(MAGIC + struct.pack(">I", len(index)) + index)
                self._bodies.seek(0)
                shutil.copyfileobj(self._bodies, out, PIECE)
                out.seek(0)
            except BaseException:
                out.close()
                raise
        finally:
            self.close()
        refs, offset = [], PREFIX_SIZE + len(index)
        for entry, fields in zip(self._entries, self._chunks, strict=True):
            length = int(entry["length"])  # type: ignore[call-overload]
            refs.append(ChunkRef(*fields, offset, length))
            offset += length
        return out, refs

    def close(self) -> None:
        """Drop what was built. Idempotent."""
        self._bodies.close()


def _ref(entry: dict[str, object], offset: int, key: str = "") -> ChunkRef:
    commits = tuple((int(lsn), float(t)) for lsn, t in entry["commits"])  # type: ignore[attr-defined]
    return ChunkRef(
        str(entry["tenant"]),
        str(entry["generation"]),
        str(entry["kind"]),
        int(entry["first_lsn"]),  # type: ignore[call-overload]
        int(entry["last_lsn"]),  # type: ignore[call-overload]
        int(entry["page_size"]),  # type: ignore[call-overload]
        commits,
        float(entry["taken_at"]),  # type: ignore[arg-type]
        offset,
        int(entry["length"]),  # type: ignore[call-overload]
        key,
    )


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


HEAD_PROBE = 64 << 10  # bytes read first for an index: most indexes fit


def read_index(read: RangeReader, key: str) -> tuple[dict[str, object], list[ChunkRef]]:
    """(meta, chunk refs) of segment `key`, read from its start: one range read, two for a
    large index. Raises SegmentCorrupt, and what `read` raises."""
    head = read(key, 0, HEAD_PROBE)
    need = PREFIX_SIZE + index_length(head)
    if len(head) < need:
        head = read(key, 0, need)
    return parse_index(head, key)


def index_only(meta: dict[str, object]) -> bytes:
    """A segment with no chunk: its index holds `meta` alone (a FENCE, backups/fence.py)."""
    index = zstandard.ZstdCompressor(write_checksum=True).compress(orjson.dumps({"meta": meta, "chunks": []}))
    return MAGIC + struct.pack(">I", len(index)) + index


# -- reading chunk bodies, a bounded piece at a time ----------------------------------------------


def read_frames(
    read: RangeReader, key: str, offset: int, length: int, page_size: int
) -> Generator[PageWrite, None, None]:
    """The page writes of the FRAMES chunk stored at [offset, offset + length) of object `key`,
    in order. Raises SegmentCorrupt (while iterating) for a body that does not decode into
    whole frames; what `read` raises propagates. Close it when stopping early."""
    step = _FRAME_HEAD.size + page_size
    batch = step * max(1, PIECE // step)
    with _Decompressed(read, key, offset, length) as reader:
        while block := read_exactly(reader, batch):
            if len(block) % step:
                raise SegmentCorrupt("frames chunk is not a whole number of frames")
            view = memoryview(block)
            for pos in range(0, len(block), step):
                page_no, commit = _FRAME_HEAD.unpack_from(block, pos)
                yield PageWrite(page_no, commit, bytes(view[pos + _FRAME_HEAD.size : pos + step]))


def copy_snapshot(read: RangeReader, key: str, offset: int, length: int, out: IO[bytes]) -> int:
    """Write the database image of the SNAPSHOT chunk stored at [offset, offset + length) of
    object `key` to `out`; returns its size. Raises SegmentCorrupt for a body that does not
    decode; what `read` raises propagates."""
    size = 0
    with _Decompressed(read, key, offset, length) as reader:
        while piece := read_exactly(reader, PIECE):
            out.write(piece)
            size += len(piece)
    return size


class _Decompressed:
    """A chunk body decompressed as it is read: reads of at most the size asked for."""

    def __init__(self, read: RangeReader, key: str, offset: int, length: int) -> None:
        self._source = io.BufferedReader(_Range(read, key, offset, length), RANGE_PIECE)
        self._reader = zstandard.ZstdDecompressor().stream_reader(self._source)

    def read(self, size: int) -> bytes:
        try:
            return self._reader.read(size)
        except zstandard.ZstdError as exc:
            raise SegmentCorrupt(f"bad chunk: {exc}") from None

    def __enter__(self) -> _Decompressed:
        return self

    def __exit__(self, *exc: object) -> None:
        self._source.close()  # the zstd reader holds no resource of its own


class _Range(io.RawIOBase):
    """Bytes [offset, offset + length) of a stored object, fetched through `read` on demand."""

    def __init__(self, read: RangeReader, key: str, offset: int, length: int) -> None:
        self._read, self._key = read, key
        self._position, self._end = offset, offset + length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._end - self._position)
        if want <= 0:
            return 0
        data = self._read(self._key, self._position, want)
        if len(data) < want:  # the stored object is shorter than its index says
            raise SegmentCorrupt(f"segment {self._key}: chunk truncated at byte {self._position + len(data)}")
        view[: len(data)] = data
        self._position += len(data)
        return len(data)
