"""Carried chunks: frames a checkpoint takes out of a tenant's WAL before they reached the
replica. Under sustained writes a WAL always holds a few commits the last flush did not ship;
instead of uploading them with the tenant's writes held, the checkpoint copies them here (local
disk only, no PUT), truncates the WAL and lets go, and the next regular flush puts them into its
shared segment like any other chunk. The snapshot a generation starts with waits here too
(backups.continuity), so a crash before the next flush loses neither it nor the history after it.

A checkpoint never loses what is not yet in the replica: each carried chunk is in a file,
DIR/<tenant>-<generation>-<first>-<last>.carry, written under a temporary name, fsync'd, renamed
and its directory fsync'd before the WAL may be truncated. Layout: the frame records as a
segment's frames chunk holds them before compression, then the chunk's description (JSON), its
length (u32) and a magic. A file is deleted once its frames are in the replica; files a crash
left are shipped by the first flush after the next start (a chunk shipped twice is harmless:
the catalog keeps one row per LSN range and restore tolerates overlapping chunks).

Small chunks written at the same time share a file, DIR/pack-<random>.carry: one after the other,
each with its description (which then also states its body's length), so the file is read from
its end. Every new tenant carries its first snapshot, and creates run concurrently: one file, one
fsync and one rename for many, and one inode to free once all of them are shipped (ext4 scans
past recently freed inodes on every allocation: thousands freed a second slow down every create).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import struct
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backups.segment import FRAMES, SNAPSHOT, Chunk
from backups.spool import PIECE
from tenants.files import DirSync
from tenants.group_commit import Batcher

log = logging.getLogger(__name__)

MAGIC = b"SQFCARY1"
_TRAILER = struct.Struct(">I")
_TAIL = _TRAILER.size + len(MAGIC)
_SUFFIX = ".carry"
PACK_LIMIT = 64 << 10  # chunks with bodies up to this long share files


class _Pack:
    """A file of several carried chunks: deleted once each of them is discarded."""

    def __init__(self, path: Path, count: int) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._live = set(range(count))

    def release(self, index: int) -> bool:
        """Chunk `index` is shipped (again: no change); whether none is left."""
        with self._lock:
            self._live.discard(index)
            return not self._live


@dataclass(frozen=True)
class Carried:
    """One carried chunk, durable at `path`."""

    path: Path
    tenant: str
    generation: str
    first_lsn: int
    last_lsn: int
    page_size: int
    commits: tuple[tuple[int, float], ...]
    body_length: int
    kind: str = FRAMES  # or SNAPSHOT: a generation's first snapshot
    taken_at: float = 0.0  # SNAPSHOT: when it was taken
    offset: int = 0  # where its body starts in `path`
    # a file it shares with other chunks (None: its own), and its place there
    pack: _Pack | None = field(default=None, compare=False, repr=False)
    index: int = 0

    @property
    def frame_bytes(self) -> int:
        """WAL page bytes it holds (none for a snapshot)."""
        if self.kind != FRAMES:
            return 0
        return (self.last_lsn - self.first_lsn + 1) * self.page_size

    @property
    def moments(self) -> list[float]:
        """The moments a restore needs it for: its commits' times, or when a generation's first
        snapshot was taken (until it is in the replica, a restore would find the generation before)."""
        if self.kind == SNAPSHOT:
            return [self.taken_at] if self.first_lsn == 0 else []
        return [t for _, t in self.commits]

    def chunk(self) -> Chunk:
        return Chunk(
            self.tenant,
            self.generation,
            self.kind,
            self.first_lsn,
            self.last_lsn,
            self.page_size,
            commits=list(self.commits),
            taken_at=self.taken_at,
        )

    def body(self) -> Iterator[bytes]:
        """The frame records, a PIECE at a time. Raises OSError."""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            left = self.body_length
            while left > 0:
                piece = f.read(min(PIECE, left))
                if not piece:
                    raise OSError(f"carried chunk {self.path} is shorter than it says")
                left -= len(piece)
                yield piece


class Carry:
    """The carried chunks under `directory`. Thread-safe."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # every create writes its first snapshot here: concurrent writes share one file and fsync
        self._dir_sync = DirSync(directory)
        self._packs: Batcher[tuple[Chunk, bytes], Carried] = Batcher(self._write_pack)

    def write(self, chunk: Chunk, body: Iterable[bytes]) -> Carried:
        """Store the FRAMES `chunk` with the record bytes `body` yields (its fields are read once
        `body` is exhausted: a body may fill them in as it goes), or the SNAPSHOT `chunk` with
        its image, durably. Raises OSError (nothing is left behind) and whatever `body` raises."""
        self.directory.mkdir(parents=True, exist_ok=True)
        pieces, size = [], 0
        rest = iter(body)
        for piece in rest:
            pieces.append(piece)
            size += len(piece)
            if size > PACK_LIMIT:
                return self._write_own(chunk, itertools.chain(pieces, rest))
        return self._packs.run((chunk, b"".join(pieces)))

    def _write_own(self, chunk: Chunk, body: Iterable[bytes]) -> Carried:
        """`write`, to a file of the chunk's own."""
        kind = "-snapshot" if chunk.kind == SNAPSHOT else ""
        name = f"{chunk.tenant}-{chunk.generation}-{chunk.first_lsn:012d}{kind}"
        tmp = self.directory / f".{name}.tmp{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                for piece in body:
                    f.write(piece)
                length = f.tell()
                meta = _meta(chunk)
                raw = json.dumps(meta).encode()
                f.write(raw + _TRAILER.pack(len(raw)) + MAGIC)
                f.flush()
                os.fsync(f.fileno())
            final = self.directory / f"{name}-{chunk.last_lsn:012d}{_SUFFIX}"
            os.replace(tmp, final)
            self._dir_sync.sync()
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return _carried(final, meta, length)

    def _write_pack(self, items: list[tuple[Chunk, bytes]]) -> list[Carried | BaseException]:
        """The chunks queued for one file (the Batcher's commit): all durable, or none."""
        if len(items) == 1:  # alone: under its own name, as a large one
            chunk, data = items[0]
            return [self._write_own(chunk, [data])]
        name = f"pack-{uuid.uuid4().hex}"
        tmp = self.directory / f".{name}.tmp{os.getpid()}"
        final = self.directory / f"{name}{_SUFFIX}"
        placed: list[tuple[dict[str, Any], int, int]] = []
        try:
            with open(tmp, "wb") as f:
                for chunk, data in items:
                    meta = {**_meta(chunk), "body_length": len(data)}
                    raw = json.dumps(meta).encode()
                    placed.append((meta, f.tell(), len(data)))
                    f.write(data + raw + _TRAILER.pack(len(raw)) + MAGIC)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            self._dir_sync.sync()
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        pack = _Pack(final, len(placed))
        return [
            _carried(final, meta, length, offset, pack, index)
            for index, (meta, offset, length) in enumerate(placed)
        ]

    def recover(self) -> list[Carried]:
        """Every complete carried chunk on disk, in tenant and LSN order; removes the temporary
        files of writes a crash cut short (their WALs were not truncated)."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in sorted(self.directory.iterdir()):
            if path.name.startswith("."):
                path.unlink(missing_ok=True)
                continue
            if path.suffix != _SUFFIX:
                continue
            try:
                found += read_all(path)
            except (OSError, ValueError) as exc:
                log.error("carried chunk %s is unreadable (%s); its frames cannot be shipped", path, exc)
        return sorted(found, key=lambda c: (c.tenant, c.generation, c.first_lsn))

    @staticmethod
    def discard(carried: Carried) -> None:
        """Delete a carried chunk whose frames are in the replica (its file, once no other chunk
        in it is left). Never raises (a file left behind is shipped once more after the next
        start, which is harmless)."""
        if carried.pack is not None and not carried.pack.release(carried.index):
            return
        try:
            carried.path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot delete shipped carried chunk %s (%s)", carried.path, exc)


def _meta(chunk: Chunk) -> dict[str, Any]:
    return {
        "tenant": chunk.tenant,
        "generation": chunk.generation,
        "first_lsn": chunk.first_lsn,
        "last_lsn": chunk.last_lsn,
        "page_size": chunk.page_size,
        "commits": chunk.commits,
        "kind": chunk.kind,
        "taken_at": chunk.taken_at,
    }


def read_all(path: Path) -> list[Carried]:
    """The carried chunks in the file at `path`, in the order written. Raises OSError,
    ValueError."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        found: list[tuple[dict[str, Any], int, int]] = []
        while end > 0:  # from the last chunk back
            if end < _TAIL:
                raise ValueError("too short")
            f.seek(end - _TAIL)
            tail = f.read(_TAIL)
            if tail[_TRAILER.size :] != MAGIC:
                raise ValueError("no trailer")
            (length,) = _TRAILER.unpack(tail[: _TRAILER.size])
            start = end - _TAIL - length
            if start < 0:
                raise ValueError("bad trailer")
            f.seek(start)
            meta = json.loads(f.read(length))
            body_length = int(meta.get("body_length", start))  # none stated: alone in its file
            if not 0 <= body_length <= start:
                raise ValueError("bad body length")
            found.append((meta, start - body_length, body_length))
            end = start - body_length
    found.reverse()
    pack = _Pack(path, len(found)) if len(found) > 1 else None
    return [_carried(path, meta, length, offset, pack, i) for i, (meta, offset, length) in enumerate(found)]


def _carried(
    path: Path,
    meta: dict[str, Any],
    body_length: int,
    offset: int = 0,
    pack: _Pack | None = None,
    index: int = 0,
) -> Carried:
    commits = tuple((int(lsn), float(t)) for lsn, t in meta["commits"])
    return Carried(
        path,
        str(meta["tenant"]),
        str(meta["generation"]),
        int(meta["first_lsn"]),
        int(meta["last_lsn"]),
        int(meta["page_size"]),
        commits,
        body_length,
        str(meta.get("kind", FRAMES)),
        float(meta.get("taken_at", 0.0)),
        offset,
        pack,
        index,
    )
