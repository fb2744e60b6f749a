"""Continuity: shipping a tenant goes on from the position the replica holds only while the WAL
on disk provably continues it; otherwise the tenant starts a new generation with a snapshot —
never a silent gap.

The proof is the WAL's own (sqlite.org/fileformat2.html#walformat): the salts recorded at the
shipped position, and at its last shipped frame the cumulative checksum recorded there. A position
whose WAL was checkpointed away (salts None) is continued while there is still no WAL.
"""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path

import apsw

from backups import wal
from backups.catalog import BackupCatalog, Position
from backups.ledger import Ledger, TenantLog, snapshot_chunk
from backups.spool import PageImage, Spool
from tenants.layout import Layout

log = logging.getLogger(__name__)


def new_generation_id() -> str:
    """Sortable by creation time, unique across servers."""
    return f"{int(time.time() * 1000):013x}{secrets.token_hex(4)}"


def resumed_log(position: Position | None, path: Path, conn: apsw.Connection) -> TenantLog | None:
    """A log continuing `position` if the WAL at `path` provably continues it, else None.
    The commits found after the position (committed, then the process died before shipping
    them) are pending, stamped with the WAL's mtime: their exact times died with the process."""
    if position is None:
        return None
    header = wal.read_header(path)
    if position.salts is None:
        return TenantLog(position, path, db_page_size(conn)) if header is None else None
    if header is None or (header.salt1, header.salt2) != position.salts:
        return None
    commits = wal.tail_commits(path, header, position.wal_frames, position.seed)
    if commits is None:
        return None
    recovered_at = path.stat().st_mtime
    return TenantLog(position, path, header.page_size, [(c.frames, recovered_at) for c in commits])


class Continuity:
    """Starts each tenant's log: resumed from the catalog's position, or a new generation.
    Thread-safe (its state is the ledger's)."""

    def __init__(self, ledger: Ledger, catalog: BackupCatalog, layout: Layout, spool: Spool) -> None:
        self.ledger = ledger
        self.catalog = catalog
        self.layout = layout
        self.spool = spool

    def wal_path(self, tenant_id: str) -> Path:
        return Path(f"{self.layout.tenant_path(tenant_id)}-wal")

    def created(self, tenant_id: str, path: Path) -> None:
        """A new tenant's file, not open anywhere yet (so reading the main file is safe), is the
        snapshot of its first generation (copied aside: the file changes once it is opened)."""
        image = self.spool.copy_file(path)
        position = Position(new_generation_id(), 0, None, 0, (0, 0), 0, time.time())
        self._begin(tenant_id, position, page_size_of(image.head(18)), image)

    def opened(self, tenant_id: str, conn: apsw.Connection) -> None:
        """A tenant connection opened: keep its log if it still has one (evicted and reopened),
        resume the catalog's position if the WAL continues it, else start a new generation."""
        entry = self.ledger.get(tenant_id)
        if entry is not None and not entry.broken:
            return
        position = self.catalog.position(tenant_id)
        resumed = resumed_log(position, self.wal_path(tenant_id), conn)
        if resumed is not None:
            self.ledger.install(tenant_id, resumed)
            return
        self.new_generation(tenant_id, conn, "continuity not provable" if position else "first open")

    def new_generation(self, tenant_id: str, conn: apsw.Connection, reason: str) -> None:
        """Snapshot the connection's current committed state as LSN 0 of a new generation."""
        header, last = wal.last_commit(self.wal_path(tenant_id))
        image = self.spool.copy_database(conn)
        salts = (header.salt1, header.salt2) if header else None
        seed = last.checksum if last else header.checksum if header else (0, 0)
        frames = last.frames if last else 0
        position = Position(new_generation_id(), 0, salts, frames, seed, 0, time.time())
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
        snapshot = snapshot_chunk(tenant_id, position, page_size, image)
        self.ledger.install(
            tenant_id, TenantLog(position, self.wal_path(tenant_id), page_size, snapshot=snapshot)
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
