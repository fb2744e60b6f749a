"""The local backup catalog: which chunks (frames or snapshots) of which tenant live where, and
how far each tenant's WAL has been shipped. It is a cache of the bucket: `rebuild` can recreate
every chunk row from the segments' own indexes."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw

from backups.segment import ChunkRef
from backups.wal import Checksum

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    tenant TEXT NOT NULL, generation TEXT NOT NULL, kind TEXT NOT NULL,
    first_lsn INTEGER NOT NULL, last_lsn INTEGER NOT NULL,
    first_time REAL NOT NULL, last_time REAL NOT NULL, page_size INTEGER NOT NULL,
    key TEXT NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL, commits TEXT NOT NULL,
    PRIMARY KEY (tenant, generation, kind, first_lsn, last_lsn)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunks_key ON chunks(key);
CREATE TABLE IF NOT EXISTS positions (
    tenant TEXT PRIMARY KEY, generation TEXT NOT NULL, lsn INTEGER NOT NULL,
    salt1 INTEGER, salt2 INTEGER, wal_frames INTEGER NOT NULL, seed1 INTEGER NOT NULL,
    seed2 INTEGER NOT NULL, snapshot_lsn INTEGER NOT NULL, snapshot_time REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS segments (key TEXT PRIMARY KEY, created_at REAL NOT NULL) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class Position:
    """How far a tenant's WAL is durably shipped: LSN `lsn` of `generation` is frame
    `wal_frames - 1` of the WAL with salts (salt1, salt2), whose checksum is `seed`.
    salts None: the WAL was checkpointed away and the next one starts at LSN lsn + 1."""

    generation: str
    lsn: int
    salts: tuple[int, int] | None
    wal_frames: int
    seed: Checksum
    snapshot_lsn: int
    snapshot_time: float


class BackupCatalog:
    """Thread-safe; every method is one transaction."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = apsw.Connection(str(path))
        self._db.execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL").fetchall()
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add_segment(self, key: str, created_at: float, refs: Iterable[ChunkRef]) -> None:
        """Record a segment and its chunks; idempotent."""
        rows = []
        for r in refs:
            first, last = r.times
            chunk = (r.tenant, r.generation, r.kind, r.first_lsn, r.last_lsn, first, last, r.page_size)
            rows.append((*chunk, key, r.offset, r.length, json.dumps(r.commits)))
        with self._lock, self._db:
            self._db.execute("INSERT OR IGNORE INTO segments VALUES (?, ?)", (key, created_at))
            self._db.executemany("INSERT OR REPLACE INTO chunks VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)

    def chunks(self, tenant: str, generation: str | None = None) -> list[ChunkRow]:
        sql = "SELECT * FROM chunks WHERE tenant = ?"
        args: tuple[Any, ...] = (tenant,)
        if generation is not None:
            sql, args = sql + " AND generation = ?", (tenant, generation)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY generation, first_lsn, kind", args).fetchall()
        return [ChunkRow.from_row(r) for r in rows]

    def tenants(self) -> list[str]:
        with self._lock:
            return [str(r[0]) for r in self._db.execute("SELECT DISTINCT tenant FROM chunks ORDER BY tenant")]

    def is_empty(self) -> bool:
        """Whether no segment is recorded (a new catalog, or one whose segments all expired)."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM segments LIMIT 1").fetchone() is None

    def delete_chunks(self, rows: Iterable[ChunkRow]) -> None:
        with self._lock, self._db:
            self._db.executemany(
                "DELETE FROM chunks"
                " WHERE tenant=? AND generation=? AND kind=? AND first_lsn=? AND last_lsn=?",
                [(r.tenant, r.generation, r.kind, r.first_lsn, r.last_lsn) for r in rows],
            )

    def unreferenced_segments(self) -> list[str]:
        with self._lock:
            sql = "SELECT key FROM segments s WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.key = s.key)"
            return [str(r[0]) for r in self._db.execute(sql)]

    def forget_segments(self, keys: Iterable[str]) -> None:
        with self._lock, self._db:
            self._db.executemany("DELETE FROM segments WHERE key = ?", [(k,) for k in keys])

    def position(self, tenant: str) -> Position | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM positions WHERE tenant = ?", (tenant,)).fetchone()
        if row is None:
            return None
        _, gen, lsn, s1, s2, frames, c1, c2, snap_lsn, snap_time = row
        salts = None if s1 is None else (int(s1), int(s2))
        seed = (int(c1), int(c2))
        return Position(str(gen), int(lsn), salts, int(frames), seed, int(snap_lsn), float(snap_time))

    def save_positions(self, positions: dict[str, Position]) -> None:
        rows = []
        for t, p in positions.items():
            shipped = (p.generation, p.lsn, *(p.salts or (None, None)), p.wal_frames, *p.seed)
            rows.append((t, *shipped, p.snapshot_lsn, p.snapshot_time))
        with self._lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO positions VALUES (?,?,?,?,?,?,?,?,?,?)", rows)

    def forget_position(self, tenant: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM positions WHERE tenant = ?", (tenant,))


@dataclass(frozen=True)
class ChunkRow:
    tenant: str
    generation: str
    kind: str
    first_lsn: int
    last_lsn: int
    first_time: float
    last_time: float
    page_size: int
    key: str
    offset: int
    length: int
    commits: tuple[tuple[int, float], ...]

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> ChunkRow:
        commits = tuple((int(lsn), float(t)) for lsn, t in json.loads(row[11]))
        return cls(
            str(row[0]),
            str(row[1]),
            str(row[2]),
            int(row[3]),
            int(row[4]),
            float(row[5]),
            float(row[6]),
            int(row[7]),
            str(row[8]),
            int(row[9]),
            int(row[10]),
            commits,
        )
