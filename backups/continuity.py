"""Continuity: shipping a tenant goes on from the position the replica holds only while the files
on disk provably continue it; otherwise the tenant starts a new generation with a snapshot —
never a silent gap, and never frames applied to pages they do not belong to.

The proof is the files' own content, never how the server last stopped:
- the main file is the one the shipper last left (when the generation began, or after its last
  checkpoint): the database header's change counter and page count, a digest of page 1, and the
  file's size, inode and mtime (catalog.MainFile). A file changed or replaced while the server
  was stopped fails here, WAL or no WAL.
- the WAL continues the position (sqlite.org/fileformat2.html#walformat): the salts recorded at
  the shipped position, and at its last shipped frame the cumulative checksum recorded there. A
  position whose WAL was checkpointed away (salts None) is continued while there is still no WAL.
  A WAL restarted from its first frame (salt-1 + 1: backups.capture.restarts) continues a
  position with salts when the main file is still the one recorded: SQLite restarts a WAL only
  once a checkpoint copied all of it into the main file, the main file is recorded after each
  checkpoint of ours (each of them takes the whole WAL into the position first), and any other
  checkpoint would have changed it.
The main file is read through SQLite's own descriptor (`Connection.read`): closing a descriptor
of our own would drop SQLite's locks on it (DESIGN 9).

A tenant this process closed with nothing left to ship (`Continuity.closed`) reopens without
those reads when its files are provably the ones it left: its WAL was exactly the shipped frames
long when it closed (so no frame past the position: no commit a wal hook missed), and at reopen
the catalog holds the same position, the main file has the size, inode and mtime the position
records, and the WAL those it had at the close. A change while the server was stopped cannot
pass (the memory is this process's), nor one through the server (a restore or an import saves
another position), nor a later write (it moves an mtime: only files last written a clock tick
or more before the close are remembered, as file systems stamp writes with a coarse clock).
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import struct
import time
from pathlib import Path

import apsw

from backups import wal
from backups.capture import restarts
from backups.carry import Carry
from backups.catalog import BackupCatalog, MainFile, Position
from backups.commit_times import CommitTimes
from backups.ledger import Ledger, TenantLog, snapshot_chunk
from backups.spool import PageImage, Spool
from tenants.layout import Layout

log = logging.getLogger(__name__)

# what `Continuity.closed` remembers per tenant, packed (~100 bytes: 100k tenants fit in ~10 MiB):
# hash of the position, page size, and the WAL's size, inode and mtime
_LEFT = struct.Struct("<5q")
MAX_LEFT = 200_000  # tenants remembered; past it the memory starts afresh (their reopens read files)
# Files written this recently at a close are not remembered: a write right after the close
# could leave the mtime as it was (see the module docstring).
SETTLE_NS = 50_000_000


def new_generation_id() -> str:
    """Sortable by creation time, unique across servers."""
    return f"{int(time.time() * 1000):013x}{secrets.token_hex(4)}"


def main_file_of(conn: apsw.Connection) -> MainFile:
    """The main file of an open tenant connection, as it is on disk now (its WAL aside). The
    caller holds the connection. Raises OSError, apsw.Error."""
    path = conn.db_filename("main")
    page_size = db_page_size(conn)
    complete, page1 = conn.read("main", 0, 0, page_size)
    stat = os.stat(path)
    return _main_file(page1 if complete else b"", stat)


def main_file_at(path: Path) -> MainFile:
    """The main file at `path`, which nothing may have open (DESIGN 9). Raises OSError."""
    with open(path, "rb") as f:
        page_size = page_size_of(f.read(18))
        f.seek(0)
        page1 = f.read(page_size)
        return _main_file(page1 if len(page1) == page_size else b"", os.fstat(f.fileno()))


def _main_file(page1: bytes, stat: os.stat_result) -> MainFile:
    header = page1[:100]
    counter = int.from_bytes(header[24:28], "big") if len(header) == 100 else -1
    pages = int.from_bytes(header[28:32], "big") if len(header) == 100 else -1
    digest = hashlib.blake2b(page1, digest_size=16).hexdigest()
    return MainFile(counter, pages, digest, stat.st_size, stat.st_ino, stat.st_mtime_ns)


def resumed_log(
    position: Position | None,
    path: Path,
    conn: apsw.Connection,
    times: dict[tuple[int, int, int], float] | None = None,
) -> TenantLog | None:
    """A log continuing `position` if the tenant's files provably continue it, else None. The
    commits found after the position (committed, then the process died before shipping them)
    are pending, with the times `times` (the commit-times journal's, by salts and frame count)
    gives them, else the WAL's mtime."""
    resumed = _resume(position, path, conn, times or {})
    return resumed if isinstance(resumed, TenantLog) else None


def _resume(
    position: Position | None, path: Path, conn: apsw.Connection, times: dict[tuple[int, int, int], float]
) -> TenantLog | str:
    """The resumed log, or why the files do not continue `position`."""
    if position is None:
        return "no shipped position"
    if position.main is None:
        return "the position does not record the main file"
    changed = position.main.differs(main_file_of(conn))
    if changed is not None:
        return changed
    header = wal.read_header(path)
    if position.salts is None:
        if header is None:
            return TenantLog(position, path, db_page_size(conn))
        if (header.salt1, header.salt2) == position.retired:
            return "the WAL the last checkpoint truncated is back"
        # a WAL begun after the checkpoint: its frames, from the first, follow the main file
        # the position records (as the shipper reads them, backups.flush)
        start, seed = 0, header.checksum
    elif header is None:
        return "the WAL is gone"
    elif (header.salt1, header.salt2) == position.salts:
        start, seed = position.wal_frames, position.seed
    elif restarts(header, position.salts):
        # restarted after a checkpoint of ours failed late (see the module docstring)
        start, seed = 0, header.checksum
    else:
        return "the WAL has other salts"
    salts = (header.salt1, header.salt2)
    commits = wal.tail_commits(path, header, start, seed)
    if commits is None:
        return "the WAL does not continue the shipped frame"
    recovered_at = path.stat().st_mtime
    pending = [(c.frames, times.get((*salts, c.frames), recovered_at)) for c in commits]
    resumed = TenantLog(position, path, header.page_size, pending)
    if position.salts is not None and salts != position.salts:
        resumed.restartable = (position.salts, position.wal_frames)
    return resumed


class Continuity:
    """Starts each tenant's log: resumed from the catalog's position, or a new generation.
    Thread-safe (its state is the ledger's)."""

    def __init__(
        self,
        ledger: Ledger,
        catalog: BackupCatalog,
        layout: Layout,
        spool: Spool,
        times: CommitTimes,
        carry: Carry,
    ) -> None:
        self.ledger = ledger
        self.catalog = catalog
        self.layout = layout
        self.spool = spool
        self.times = times
        self.carry = carry

    def wal_path(self, tenant_id: str) -> Path:
        return Path(f"{self.layout.tenant_path(tenant_id)}-wal")

    def grown(self) -> list[str]:
        """Tenants whose WAL on disk holds frames past their shipped position: commits a crash
        left unshipped, which the commit-times journal may not name (a power loss takes its
        unsynced tail). A stat per tenant with a WAL, and a header read for those not empty."""
        found = []
        for tenant_id, position in self.catalog.positions().items():
            path = self.wal_path(tenant_id)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            if size <= wal.WAL_HEADER_SIZE:
                continue
            header = wal.read_header(path)
            if header is None:
                continue  # no valid WAL, no commits in it
            if position.salts != (header.salt1, header.salt2) or size >= header.frame_offset(
                position.wal_frames + 1
            ):
                found.append(tenant_id)
        return found

    def created(self, tenant_id: str, path: Path) -> None:
        """A new tenant's file, not open anywhere yet (so reading the main file is safe), is the
        snapshot of its first generation (copied aside: the file changes once it is opened)."""
        with self.ledger.lock:
            self.ledger.left.pop(tenant_id, None)
        main = main_file_at(path)
        image = self.spool.copy_file(path)
        position = Position(new_generation_id(), 0, None, 0, (0, 0), 0, time.time(), main)
        self._begin(tenant_id, position, page_size_of(image.head(18)), image)

    def opened(self, tenant_id: str, conn: apsw.Connection) -> None:
        """A tenant connection opened: keep its log if it still has one (evicted and reopened),
        resume the catalog's position if its files continue it, else start a new generation."""
        entry = self.ledger.get(tenant_id)
        if entry is not None and not entry.broken:
            self._found_committed(tenant_id, entry, conn)
            return
        with self.ledger.lock:
            left = self.ledger.left.pop(tenant_id, None)
        position = self.catalog.position(tenant_id)
        times = self.times.recovered(tenant_id)
        path = Path(conn.filename_wal)  # SQLite's: no path arithmetic on every open
        if left is not None and position is not None and not times:
            page_size = _as_left(position, path, left)
            if page_size is not None:
                self.ledger.install(tenant_id, TenantLog(position, path, page_size))
                return
        resumed = _resume(position, path, conn, times)
        if isinstance(resumed, TenantLog):
            self._note_stand_ins(tenant_id, resumed, times)
            self.ledger.install(tenant_id, resumed)
            return
        reason = f"continuity not provable: {resumed}" if position else "first open"
        self.new_generation(tenant_id, conn, reason)

    def closed(self, tenant_id: str) -> None:
        """A tenant connection is about to close, no lease holding it: drop its log if it has
        nothing left to ship (the catalog's position suffices to resume; keeps memory flat at
        100k tenants), remembering how it leaves its files if they are exactly what the position
        describes, so that reopening it can skip reading them (see the module docstring)."""
        entry = self.ledger.drop_if_idle(tenant_id)
        if entry is None or entry.restartable is not None:
            return
        left = _leaving(entry)
        if left is None:
            return
        with self.ledger.lock:
            if len(self.ledger.left) >= MAX_LEFT:
                self.ledger.left.clear()
            self.ledger.left[tenant_id] = left

    def _found_committed(self, tenant_id: str, entry: TenantLog, conn: apsw.Connection) -> None:
        """A kept log's tenant reopened: SQLite's recovery may find commits in the WAL that no
        wal hook reported (a commit whose WAL sync failed is refused to its client, yet its
        frames are on disk, whole, and count once the WAL is read again). They are pending from
        now, when they became visible; left unnoted, a checkpoint would move them into the main
        file without shipping them. A WAL that does not continue the log is the flush's to find;
        so is a restarted one (TenantLog.may_restart) behind which the main file changed while
        the tenant was closed (it no longer may restart, so the flush finds the WAL broken)."""
        path = entry.wal_path
        header = wal.read_header(path)
        with self.ledger.lock:
            base = entry.base
            known = entry.pending[-1][0] if entry.pending else None
        if header is None:
            return
        salts = (header.salt1, header.salt2)
        if base.salts == salts:
            start, seed = base.wal_frames, base.seed
        elif base.salts is None and salts != base.retired:
            start, seed = 0, header.checksum
        elif base.salts is not None and entry.may_restart() and restarts(header, base.salts):
            if base.main is None or base.main.differs(main_file_of(conn)) is not None:
                with self.ledger.lock:
                    entry.restartable = None
                return
            start, seed = 0, header.checksum
        else:
            return
        commits = wal.tail_commits(path, header, start, seed)
        last = start if known is None else known
        found = [c.frames for c in commits or [] if c.frames > last]
        if not found:
            return
        now = time.time()
        log.warning("tenant %s: %d commits found in its WAL that were not reported", tenant_id, len(found))
        with self.ledger.lock:
            entry.pending += [(frames, now) for frames in found]
            self.ledger.dirty.add(tenant_id)
        for frames in found:
            self.times.note(tenant_id, salts, frames, now)

    def _note_stand_ins(
        self, tenant_id: str, entry: TenantLog, recorded: dict[tuple[int, int, int], float]
    ) -> None:
        """The commits found past the position without a recorded time got the WAL's mtime:
        record that, so another restart before they ship gives them the same time, not the
        mtime the WAL has by then (later writes move it on)."""
        header = wal.read_header(entry.wal_path) if entry.pending else None
        if header is None:
            return
        salts = (header.salt1, header.salt2)
        for frames, at in entry.pending:
            if (*salts, frames) not in recorded:
                self.times.note(tenant_id, salts, frames, at)

    def new_generation(self, tenant_id: str, conn: apsw.Connection, reason: str) -> None:
        """Snapshot the connection's current committed state as LSN 0 of a new generation."""
        header, last = wal.last_commit(self.wal_path(tenant_id))
        main = main_file_of(conn)
        image = self.spool.copy_database(conn)
        salts = (header.salt1, header.salt2) if header else None
        seed = last.checksum if last else header.checksum if header else (0, 0)
        frames = last.frames if last else 0
        position = Position(new_generation_id(), 0, salts, frames, seed, 0, time.time(), main)
        log.info("tenant %s: new backup generation %s (%s)", tenant_id, position.generation, reason)
        self._begin(tenant_id, position, db_page_size(conn), image)

    def restart(self, tenant_id: str, entry: TenantLog, conn: apsw.Connection | None) -> None:
        """A new generation for a tenant whose WAL no longer continues what was shipped: now if
        it is open (`conn`, its handle held), else on its next open (its log is dropped, so
        `opened` decides)."""
        if conn is not None:
            self.new_generation(tenant_id, conn, "WAL changed behind the server's back")
        else:
            self.ledger.drop(tenant_id, entry)

    def _begin(self, tenant_id: str, position: Position, page_size: int, image: PageImage) -> None:
        """Begin the generation of `position` with `image` as its snapshot: durable on local disk
        (a carried chunk the next flush ships) before the position is saved, so a crash before
        that flush loses neither the generation nor the commits after it (the restart resumes
        it, and ships them with their times). Raises OSError, apsw.Error (nothing changed)."""
        with image:
            carried = self.carry.write(snapshot_chunk(tenant_id, position, page_size, image), image.pieces())
        try:
            self.catalog.save_positions({tenant_id: position})
        except BaseException:
            Carry.discard(carried)
            raise
        self.ledger.install(
            tenant_id, TenantLog(position, self.wal_path(tenant_id), page_size, carried=[carried])
        )


def _leaving(entry: TenantLog) -> bytes | None:
    """What `Continuity.closed` remembers of an idle log's files, or None if the WAL is not
    exactly what its position describes, or a file was written too recently to tell a later
    write apart. (A main file that is not the one the position records fails at the reopen.)"""
    base, page_size = entry.base, entry.page_size
    if base.main is None:
        return None
    try:
        wal_file = os.stat(entry.wal_path)
    except OSError:
        return None  # no WAL: SQLite makes one on open, so the reopen could not tell
    if wal_file.st_size != _wal_size(base, page_size):
        return None  # frames past the position (e.g. a commit whose sync failed), or not all of it
    if time.time_ns() - max(base.main.mtime_ns, wal_file.st_mtime_ns) < SETTLE_NS:
        return None
    return _LEFT.pack(hash(base), page_size, wal_file.st_size, wal_file.st_ino, wal_file.st_mtime_ns)


def _as_left(position: Position, wal_path: Path, left: bytes) -> int | None:
    """The page size if the tenant's position and files are as `Continuity.closed` left them
    (`left`), else None."""
    key, page_size, *wal_identity = _LEFT.unpack(left)
    found = _identities(wal_path)
    if found is None or key != hash(position) or position.main is None:
        return None
    return page_size if found == (_recorded(position.main), tuple(wal_identity)) else None


Identity = tuple[int, int, int]


def _identities(wal_path: Path) -> tuple[Identity, Identity] | None:
    """(size, inode, mtime) of the main file and of the WAL; None if either is missing."""
    try:
        main, wal_file = os.stat(str(wal_path)[: -len("-wal")]), os.stat(wal_path)
    except OSError:
        return None
    main_identity = (main.st_size, main.st_ino, main.st_mtime_ns)
    return main_identity, (wal_file.st_size, wal_file.st_ino, wal_file.st_mtime_ns)


def _recorded(main: MainFile) -> Identity:
    return (main.size, main.inode, main.mtime_ns)


def _wal_size(position: Position, page_size: int) -> int:
    """The WAL's length when it holds exactly the frames `position` describes (none: a TRUNCATE
    checkpoint leaves it empty)."""
    if position.salts is None:
        return 0
    return wal.WAL_HEADER_SIZE + position.wal_frames * (wal.FRAME_HEADER_SIZE + page_size)


def page_size_of(image: bytes) -> int:
    """The page size a database image's header (its first 18 bytes suffice) states (4096 for
    an empty image)."""
    if len(image) >= 18:
        size = int.from_bytes(image[16:18], "big")
        return 65536 if size == 1 else size or 4096
    return 4096


def db_page_size(conn: apsw.Connection) -> int:
    return int(conn.execute("PRAGMA page_size").fetchall()[0][0])  # type: ignore[arg-type]
