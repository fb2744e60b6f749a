"""Carried chunks: frames a checkpoint takes out of a tenant's WAL before they reached the
replica. Under sustained writes a WAL always holds a few commits the last flush did not ship;
instead of uploading them with the tenant's writes held, the checkpoint copies them here (local
disk only, no PUT), truncates the WAL and lets go, and the next regular flush puts them into its
shared segment like any other chunk. The snapshot a generation starts with waits here too
(backups.continuity), so a crash before the next flush loses neither it nor the history after it.

A checkpoint never loses what is not yet in the replica: each carried chunk is one file,
DIR/<tenant>-<generation>-<first>-<last>.carry, written under a temporary name, fsync'd, renamed
and its directory fsync'd before the WAL may be truncated. Layout: the frame records as a
segment's frames chunk holds them before compression, then the chunk's description (JSON), its
length (u32) and a magic. A file is deleted once its frames are in the replica; files a crash
left are shipped by the first flush after the next start (a chunk shipped twice is harmless:
the catalog keeps one row per LSN range and restore tolerates overlapping chunks).
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from backups.segment import FRAMES, SNAPSHOT, Chunk
from backups.spool import PIECE
from tenants.files import fsync_dir

log = logging.getLogger(__name__)

MAGIC = b"SQFCARY1"
_TRAILER = struct.Struct(">I")
_SUFFIX = ".carry"


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
            left = self.body_length
            while left > 0:
                piece = f.read(min(PIECE, left))
                if not piece:
                    raise OSError(f"carried chunk {self.path} is shorter than it says")
                left -= len(piece)
                yield piece


class Carry:
    """The carried chunks under `directory`. Thread-safe (each file is written by one caller)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def write(self, chunk: Chunk, body: Iterable[bytes]) -> Carried:
        """Store the FRAMES `chunk` with the record bytes `body` yields (its fields are read once
        `body` is exhausted: a body may fill them in as it goes), or the SNAPSHOT `chunk` with
        its image, durably. Raises OSError (nothing is left behind) and whatever `body` raises."""
        self.directory.mkdir(parents=True, exist_ok=True)
        kind = "-snapshot" if chunk.kind == SNAPSHOT else ""
        name = f"{chunk.tenant}-{chunk.generation}-{chunk.first_lsn:012d}{kind}"
        tmp = self.directory / f".{name}.tmp{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                for piece in body:
                    f.write(piece)
                length = f.tell()
                meta = {
                    "tenant": chunk.tenant,
                    "generation": chunk.generation,
                    "first_lsn": chunk.first_lsn,
                    "last_lsn": chunk.last_lsn,
                    "page_size": chunk.page_size,
                    "commits": chunk.commits,
                    "kind": chunk.kind,
                    "taken_at": chunk.taken_at,
                }
                raw = json.dumps(meta).encode()
                f.write(raw + _TRAILER.pack(len(raw)) + MAGIC)
                f.flush()
                os.fsync(f.fileno())
            final = self.directory / f"{name}-{chunk.last_lsn:012d}{_SUFFIX}"
            os.replace(tmp, final)
            fsync_dir(self.directory)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return _carried(final, meta, length)

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
                found.append(read(path))
            except (OSError, ValueError) as exc:
                log.error("carried chunk %s is unreadable (%s); its frames cannot be shipped", path, exc)
        return sorted(found, key=lambda c: (c.tenant, c.generation, c.first_lsn))

    @staticmethod
    def discard(carried: Carried) -> None:
        """Delete a carried chunk whose frames are in the replica. Never raises (a file left
        behind is shipped once more after the next start, which is harmless)."""
        try:
            carried.path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot delete shipped carried chunk %s (%s)", carried.path, exc)


def read(path: Path) -> Carried:
    """The description of the carried chunk at `path`. Raises OSError, ValueError."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        tail = _TRAILER.size + len(MAGIC)
        if size < tail:
            raise ValueError("too short")
        f.seek(size - tail)
        end = f.read(tail)
        if end[_TRAILER.size :] != MAGIC:
            raise ValueError("no trailer")
        (length,) = _TRAILER.unpack(end[: _TRAILER.size])
        body_length = size - tail - length
        if body_length < 0:
            raise ValueError("bad trailer")
        f.seek(body_length)
        meta = json.loads(f.read(length))
    return _carried(path, meta, body_length)


def _carried(path: Path, meta: dict[str, object], body_length: int) -> Carried:
    commits = tuple((int(lsn), float(t)) for lsn, t in meta["commits"])  # type: ignore[attr-defined]
    return Carried(
        path,
        str(meta["tenant"]),
        str(meta["generation"]),
        int(meta["first_lsn"]),  # type: ignore[call-overload]
        int(meta["last_lsn"]),  # type: ignore[call-overload]
        int(meta["page_size"]),  # type: ignore[call-overload]
        commits,
        body_length,
        str(meta.get("kind", FRAMES)),
        float(meta.get("taken_at", 0.0)),  # type: ignore[arg-type]
    )
