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
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
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
        position = self.catalog.position(tenant_id)
        times = self.times.recovered(tenant_id)
        resumed = _resume(position, self.wal_path(tenant_id), conn, times)
        if isinstance(resumed, TenantLog):
            self._note_stand_ins(tenant_id, resumed, times)
            self.ledger.install(tenant_id, resumed)
            return
        reason = f"continuity not provable: {resumed}" if position else "first open"
        self.new_generation(tenant_id, conn, reason)

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


def page_size_of(image: bytes) -> int:
    """The page size a database image's header (its first 18 bytes suffice) states (4096 for
    an empty image)."""
    if len(image) >= 18:
        size = int.from_bytes(image[16:18], "big")
        return 65536 if size == 1 else size or 4096
    return 4096


def db_page_size(conn: apsw.Connection) -> int:
    return int(conn.execute("PRAGMA page_size").fetchall()[0][0])  # type: ignore[arg-type]
