"""The local backup catalog: which chunks (frames or snapshots) of which tenant live where, and
how far each tenant's WAL has been shipped. It is a cache of the bucket: `rebuild` can recreate
every chunk row from the segments' own indexes."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import threading
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw
import orjson

from backups.segment import ChunkRef
from backups.wal import Checksum
from tenants.group_commit import GroupCommit

log = logging.getLogger(__name__)


def _chunk_key(row: ChunkRow) -> tuple[str, str, str, int, int]:
    """A chunk row's primary key in the catalog (what `delete_chunks` matches)."""
    return row.tenant, row.generation, row.kind, row.first_lsn, row.last_lsn


_IN_BATCH = 500  # tenants in one `IN (...)` of chunks_of: well under SQLite's 32,766 parameters

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    tenant TEXT NOT NULL, generation TEXT NOT NULL, kind TEXT NOT NULL,
    first_lsn INTEGER NOT NULL, last_lsn INTEGER NOT NULL,
    first_time REAL NOT NULL, last_time REAL NOT NULL, page_size INTEGER NOT NULL,
    key TEXT NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL, commits TEXT NOT NULL,
    PRIMARY KEY (tenant, generation, kind, first_lsn, last_lsn)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunks_key ON chunks(key);
CREATE INDEX IF NOT EXISTS chunks_first_time ON chunks(first_time, tenant);
CREATE TABLE IF NOT EXISTS positions (
    tenant TEXT PRIMARY KEY, generation TEXT NOT NULL, lsn INTEGER NOT NULL,
    salt1 INTEGER, salt2 INTEGER, wal_frames INTEGER NOT NULL, seed1 INTEGER NOT NULL,
    seed2 INTEGER NOT NULL, snapshot_lsn INTEGER NOT NULL, snapshot_time REAL NOT NULL,
    main_file TEXT, retired1 INTEGER, retired2 INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS segments (key TEXT PRIMARY KEY, created_at REAL NOT NULL) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class MainFile:
    """A tenant's main database file as the shipper last left it (when its generation began, or
    after its last checkpoint): what proves at the next open that nothing else wrote it since.
    From its content, the header's file change counter and page count and a digest of page 1
    (header and schema root; sqlite.org/fileformat2.html#the_database_header); from the file
    system, its size, inode and modification time (an outside write in WAL mode that leaves
    page 1 alone still moves the mtime)."""

    change_counter: int
    page_count: int
    page1: str  # blake2b of the first page, hex
    size: int
    inode: int
    mtime_ns: int

    def differs(self, other: MainFile) -> str | None:
        """What differs from `other` (None: nothing)."""
        for name in ("change_counter", "page_count", "page1", "size", "inode", "mtime_ns"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                return f"main file {name} {theirs} where {mine} was recorded"
        return None

    def to_text(self) -> str:
        # orjson and vars, not json and asdict (which deep-copies): every flush saves the position
        # of every tenant it shipped
        return orjson.dumps(vars(self)).decode()

    @classmethod
    def from_text(cls, text: str) -> MainFile:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Position:
    """How far a tenant's WAL is durably shipped (to the replica, or into a carried chunk that
    waits for it on local disk, backups/carry.py): LSN `lsn` of `generation` is frame
    `wal_frames - 1` of the WAL with salts (salt1, salt2), whose checksum is `seed`.
    salts None: the WAL was checkpointed away and the next one starts at LSN lsn + 1.
    `main`: the main file as of the last checkpoint (None: unknown, so continuity is unprovable).
    `retired`: the salts of the WAL the last checkpoint truncated. SQLite does not sync that
    truncation, so a power loss may bring that WAL back; one with these salts is that one (its
    frames are in the main file already), any other WAL was begun after the checkpoint."""

    generation: str
    lsn: int
    salts: tuple[int, int] | None
    wal_frames: int
    seed: Checksum
    snapshot_lsn: int
    snapshot_time: float
    main: MainFile | None = None
    retired: tuple[int, int] | None = None


class BackupCatalog:
    """Thread-safe; every method is one transaction (`save_positions`: a savepoint in one)."""

    def __init__(self, path: Path) -> None:
        self.path = path  # what a copy is taken of (backups/catalog_upload.py)
        self._lock = threading.Lock()
        # Held by whoever deletes unreferenced segments (retention) or rewrites or re-reads them
        # (rekey, rebuild): a rekeyed copy is recorded before its chunks point at it.
        self.maintenance = threading.Lock()
        # tenant -> (restores borrowing its rows, the rows lent): see `lent`
        self._loans: dict[str, tuple[int, list[ChunkRow]]] = {}
        self._loans_lock = threading.Lock()
        self._db = apsw.Connection(str(path))
        try:
            self._setup()
        except BaseException:
            self._db.close(True)
            raise
        # Positions are read on every tenant open; the writer holds `_lock` across its commit's
        # fsync, so reads go through connections of their own (WAL: a reader never waits for a
        # writer) and keep an open off a flush's path. One per concurrent reader, taken from a
        # free list (list.pop and append need no lock): with one shared reader behind a lock,
        # concurrent opens queued on that lock (a fifth of the worker threads' samples in the
        # fleet bench) while its holder waited for the GIL between SQLite calls.
        self._readers: list[apsw.Connection] = []
        self._readers_closed = False
        self._commits = GroupCommit(self._db, self._lock)
        # Tenants given a chunk at or before `_marking_below` since `take_marked` (rows another
        # node or the bucket had): see `mark_rows_below`. Under `_lock`.
        self._marking_below = -math.inf
        self._marked: set[str] = set()

    def _setup(self) -> None:
        # FULL: a transaction is durable when it returns, power loss included. What the shipper
        # does next relies on it: it deletes carried chunks and journal files once their rows are
        # in, and truncates a WAL once its position is; a catalog that lost those rows would
        # restore less than the bucket holds (or re-ship frames with lost commit times).
        self._db.execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL").fetchall()
        self._db.execute(_SCHEMA)
        columns = {str(r[1]) for r in self._db.execute("PRAGMA table_info(positions)")}
        if "main_file" not in columns:  # a catalog of an older version: its positions prove nothing
            self._db.execute("ALTER TABLE positions ADD COLUMN main_file TEXT")
        if "retired1" not in columns:
            self._db.execute("ALTER TABLE positions ADD COLUMN retired1 INTEGER")
            self._db.execute("ALTER TABLE positions ADD COLUMN retired2 INTEGER")

    def close(self) -> None:
        """Idempotent; never raises. Closing checkpoints the catalog's WAL, which a full or
        failing disk may refuse: every transaction is in already, the WAL stays for the next open."""
        self._readers_closed = True
        while self._readers:
            self._readers.pop().close(True)  # reads only: nothing to lose (one in use: see position)
        with self._lock:
            try:
                self._db.close()
            except apsw.Error as exc:
                log.warning("backup catalog: closing it failed (%s); its WAL stays", exc)
                self._db.close(True)

    def add_segment(self, key: str, created_at: float, refs: Iterable[ChunkRef]) -> None:
        """Record a segment and its chunks; idempotent."""
        rows = []
        for r in refs:
            first, last = r.times
            chunk = (r.tenant, r.generation, r.kind, r.first_lsn, r.last_lsn, first, last, r.page_size)
            rows.append((*chunk, key, r.offset, r.length, orjson.dumps(r.commits).decode()))
        with self._lock, self._db:
            self._db.execute("INSERT OR IGNORE INTO segments VALUES (?, ?)", (key, created_at))
            self._db.executemany("INSERT OR REPLACE INTO chunks VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            self._mark(rows)

    def add_rows(self, rows: Iterable[ChunkRow]) -> None:
        """Record chunk rows another node's catalog had (backups.handoff), and their segments;
        idempotent."""
        rows = list(rows)
        values = [(*dataclasses.astuple(r)[:-1], orjson.dumps(r.commits).decode()) for r in rows]
        with self._lock, self._db:
            self._db.executemany(
                "INSERT OR IGNORE INTO segments VALUES (?, ?)", [(r.key, r.first_time) for r in rows]
            )
            self._db.executemany("INSERT OR REPLACE INTO chunks VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", values)
            self._mark(values)

    def mark_rows_below(self, horizon: float) -> None:
        """From now on, note each tenant given a chunk whose first time is at or before
        `horizon` seconds (unix time) until `take_marked` (backups.retention.Retention: what
        a pass over only the tenants whose chunks crossed the horizon would miss)."""
        with self._lock:
            self._marking_below = horizon

    def take_marked(self) -> set[str]:
        """The tenants noted since the last call (see `mark_rows_below`), forgotten here."""
        with self._lock:
            marked, self._marked = self._marked, set()
        return marked

    def _mark(self, rows: Iterable[tuple[Any, ...]]) -> None:
        # chunk rows as stored: (tenant, generation, kind, first_lsn, last_lsn, first_time, ...)
        self._marked.update(str(r[0]) for r in rows if r[5] <= self._marking_below)

    def tenants_between(self, since: float, until: float) -> list[str]:
        """Tenants with a chunk whose first time is within [since, until] (unix seconds)."""
        sql = "SELECT DISTINCT tenant FROM chunks WHERE first_time BETWEEN ? AND ?"
        with self._lock:
            return [str(r[0]) for r in self._db.execute(sql, (since, until))]

    def chunks(self, tenant: str, generation: str | None = None) -> list[ChunkRow]:
        sql = "SELECT * FROM chunks WHERE tenant = ?"
        args: tuple[Any, ...] = (tenant,)
        if generation is not None:
            sql, args = sql + " AND generation = ?", (tenant, generation)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY generation, first_lsn, kind", args).fetchall()
        return [ChunkRow.from_row(r) for r in rows]

    def chunks_of(self, tenants: Collection[str]) -> dict[str, list[ChunkRow]]:
        """tenant -> its chunks, in the order `chunks` gives them, for those of `tenants` that
        have any: a query per _IN_BATCH tenants, not one each (a takeover reads thousands)."""
        found: dict[str, list[ChunkRow]] = {}
        ordered = sorted(tenants)
        for start in range(0, len(ordered), _IN_BATCH):
            part = ordered[start : start + _IN_BATCH]
            sql = (
                f"SELECT * FROM chunks WHERE tenant IN ({','.join('?' * len(part))})"
                " ORDER BY tenant, generation, first_lsn, kind"
            )
            with self._lock:
                rows = self._db.execute(sql, part).fetchall()
            for row in rows:
                found.setdefault(str(row[0]), []).append(ChunkRow.from_row(row))
        return found

    def tenants(self) -> list[str]:
        with self._lock:
            return [str(r[0]) for r in self._db.execute("SELECT DISTINCT tenant FROM chunks ORDER BY tenant")]

    def is_empty(self) -> bool:
        """Whether no segment is recorded (a new catalog, or one whose segments all expired)."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM segments LIMIT 1").fetchone() is None

    @contextlib.contextmanager
    def lent(self, tenant: str, rows: list[ChunkRow]) -> Iterator[None]:
        """Those of `rows` (of `tenant`, another node's tenant) this catalog lacks, in it for the
        block only (a cluster's restore `as`: router.backups_api). Kept, they would be a copy of
        another node's history that goes stale: without the source's later deletion they would
        list it here as restorable, and bring it back on first access once this node gains its
        slot. Rows it had stay. Overlapping loans of one tenant share the rows; the last one out
        takes them back."""
        if not rows:
            yield
            return
        with self._loans_lock:
            borrowers, lent = self._loans.get(tenant, (0, []))
            present = {_chunk_key(row) for row in self.chunks(tenant)}
            more = [row for row in rows if _chunk_key(row) not in present]
            self.add_rows(more)
            self._loans[tenant] = (borrowers + 1, lent + more)
        try:
            yield
        finally:
            with self._loans_lock:
                borrowers, lent = self._loans.pop(tenant)
                if borrowers > 1:
                    self._loans[tenant] = (borrowers - 1, lent)
                else:  # their segments' rows, then unreferenced: forgotten by retention
                    self.delete_chunks(lent)

    def delete_chunks(self, rows: Iterable[ChunkRow]) -> None:
        rows = list(rows)
        if not rows:
            return  # no transaction for nothing (retention asks for most tenants it reads)
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

    def referenced_segments(self, after: str = "", limit: int = -1) -> list[str]:
        """Keys of the segments some chunk row points at, in key order, after `after`."""
        sql = "SELECT DISTINCT key FROM chunks WHERE key > ? ORDER BY key LIMIT ?"
        with self._lock:
            return [str(r[0]) for r in self._db.execute(sql, (after, limit))]

    def count_referenced_segments(self) -> int:
        with self._lock:
            return next(int(r[0]) for r in self._db.execute("SELECT COUNT(DISTINCT key) FROM chunks"))

    def move_segment(self, old: str, new: str) -> None:
        """Point every chunk row of segment `old` at `new` (a copy with the same bytes at the same
        offsets), in one transaction; `old` stays recorded, unreferenced, for retention to delete."""
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO segments SELECT ?, created_at FROM segments WHERE key = ?", (new, old)
            )
            self._db.execute("UPDATE chunks SET key = ? WHERE key = ?", (new, old))

    _POSITION = (
        "SELECT tenant, generation, lsn, salt1, salt2, wal_frames, seed1, seed2, snapshot_lsn,"
        " snapshot_time, main_file, retired1, retired2 FROM positions"
    )

    def position(self, tenant: str) -> Position | None:
        """The tenant's position as last committed; never waits for a commit in progress."""
        try:
            reader = self._readers.pop()
        except IndexError:
            reader = apsw.Connection(str(self.path))
        try:
            row = reader.execute(self._POSITION + " WHERE tenant = ?", (tenant,)).fetchone()
        finally:
            self._readers.append(reader)
            if self._readers_closed:  # closed meanwhile
                while self._readers:
                    self._readers.pop().close(True)
        return None if row is None else _position(row)

    def positions(self) -> dict[str, Position]:
        """Every tenant's position, by tenant."""
        with self._lock:
            rows = self._db.execute(self._POSITION + " ORDER BY tenant").fetchall()
        return {str(row[0]): _position(row) for row in rows}

    def save_positions(self, positions: dict[str, Position]) -> None:
        """Record each tenant's position, all or none (one transaction, or a savepoint of one
        that concurrent callers share)."""
        rows = []
        for t, p in positions.items():
            shipped = (p.generation, p.lsn, *(p.salts or (None, None)), p.wal_frames, *p.seed)
            main = p.main.to_text() if p.main is not None else None
            rows.append((t, *shipped, p.snapshot_lsn, p.snapshot_time, main, *(p.retired or (None, None))))

        def work(db: apsw.Connection) -> None:
            db.executemany(
                "INSERT OR REPLACE INTO positions (tenant, generation, lsn, salt1, salt2, wal_frames,"
                " seed1, seed2, snapshot_lsn, snapshot_time, main_file, retired1, retired2)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )

        # group-committed: every new tenant saves its first position, and creates run concurrently
        self._commits.run(work)

    def forget_position(self, tenant: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM positions WHERE tenant = ?", (tenant,))


def _position(row: tuple[Any, ...]) -> Position:
    _, gen, lsn, s1, s2, frames, c1, c2, snap_lsn, snap_time, main, r1, r2 = row
    salts = None if s1 is None else (int(s1), int(s2))
    retired = None if r1 is None else (int(r1), int(r2))
    seed = (int(c1), int(c2))
    main_file = MainFile.from_text(str(main)) if main is not None else None
    return Position(
        str(gen), int(lsn), salts, int(frames), seed, int(snap_lsn), float(snap_time), main_file, retired
    )


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
        commits = tuple((int(lsn), float(t)) for lsn, t in orjson.loads(row[11]))
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
