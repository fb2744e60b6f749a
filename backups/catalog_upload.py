"""A cluster node's backup catalog, uploaded now and then, so that a node taking over after its
death reads one object plus the few segments shipped since, never every segment it ever wrote.

Every `catalog_upload_interval` seconds, and once at a clean stop, the uploader copies backups.db
through SQLite's backup API (a consistent snapshot: one read transaction; flushes go on, WAL),
turns the copy into a single file (rollback journal), adds what it covers, compresses it with
zstd and PUTs it sealed (SealedReplica) under `catalogs/<node>.db.zst`, replacing the previous
one. Every step streams through temporary files: memory stays flat whatever the catalog's size.

What a copy covers is written into it, in two tables: `upload(node, server, written)` (who and
when: the server id names the node's fleet metadata namespace) and `covers(incarnation, seq)`,
per incarnation of this node the highest seq of its segments the copy records. The shipper
records a segment's rows only after its PUT, one seq after another, so everything that
incarnation shipped up to that seq is in the copy (a seq it passed over, a PUT whose answer was
lost, was shipped again in the next one); a reader takes the copy and the segments after.

An upload is a snapshot: the node's own retention or rekey may later drop or replace segments
some of its rows point at; a reader that finds a key of the incarnation's prefix at or below the
cover the copy does not record (a rekeyed copy) reads that segment too (backups/takeover.py).
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import apsw
import zstandard

from backups.catalog import BackupCatalog
from backups.errors import BackupBroken, BackupTampered, ReplicaError, ReplicaNotFound
from backups.fence import SEGMENTS, Writer, parse_key
from backups.sealed_replica import SealedReplica
from backups.shipper import Shipper

log = logging.getLogger(__name__)

PREFIX = "catalogs/"
_READS = 3  # a download read again when the object was replaced while it was read in pieces


def catalog_key(node: str) -> str:
    return f"{PREFIX}{node}.db.zst"


@dataclass(frozen=True)
class Covered:
    """What an uploaded copy of a node's catalog says of itself."""

    node: str
    server: str  # the server id: the node's fleet metadata namespace (backups/fleet_doc.py)
    written: float
    covers: dict[str, int]  # incarnation -> the highest seq whose rows are in the copy


def snapshot(catalog: Path, dest: Path, writer: Writer, server: str) -> Covered:
    """Copy the catalog at `catalog` to `dest` (one file, no WAL) with what it covers of
    `writer`'s node. Raises apsw.Error, OSError."""
    source = apsw.Connection(str(catalog))
    source.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)  # the catalog's own connections do that
    try:
        copy = apsw.Connection(str(dest))
        try:
            with copy.backup("main", source, "main") as backup:
                backup.step()  # every page in one step: one read transaction, a consistent copy
            copy.execute("PRAGMA journal_mode=DELETE").fetchall()
            covers = _covers(copy, writer.node)
            written = time.time()
            with copy:
                copy.execute(
                    "CREATE TABLE upload (node TEXT NOT NULL, server TEXT NOT NULL, written REAL NOT NULL);"
                    "CREATE TABLE covers (incarnation TEXT PRIMARY KEY, seq INTEGER NOT NULL);"
                )
                copy.execute("INSERT INTO upload VALUES (?, ?, ?)", (writer.node, server, written))
                copy.executemany("INSERT INTO covers VALUES (?, ?)", sorted(covers.items()))
        finally:
            copy.close()
    finally:
        source.close()
    return Covered(writer.node, server, written, covers)


def _covers(copy: apsw.Connection, node: str) -> dict[str, int]:
    covers: dict[str, int] = {}
    prefix = f"{SEGMENTS}{node}/"
    # '/' + 1 == '0': the keys under the node's prefix, in one index range
    rows = copy.execute("SELECT key FROM segments WHERE key >= ? AND key < ?", (prefix, prefix[:-1] + "0"))
    for (key,) in rows:
        parsed = parse_key(str(key))
        if parsed is not None and parsed[0].node == node:
            incarnation = parsed[0].incarnation
            covers[incarnation] = max(parsed[1], covers.get(incarnation, 0))
    return covers


def upload(replica: SealedReplica, catalog: Path, writer: Writer, server: str, work_dir: Path) -> Covered:
    """Upload a copy of the catalog at `catalog` (see the module docstring); returns what it
    covers. Raises ReplicaError, apsw.Error, OSError."""
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="catalog-upload-") as tmp:
        copy = Path(tmp) / "backups.db"
        covered = snapshot(catalog, copy, writer, server)
        packed = Path(tmp) / "backups.db.zst"
        with open(copy, "rb") as source, open(packed, "w+b") as out:
            # with the size in the frame header: any zstd tool (or zstandard.decompress) reads it
            compressor = zstandard.ZstdCompressor(level=3, write_checksum=True)
            compressor.copy_stream(source, out, size=copy.stat().st_size)
            out.seek(0)
            replica.put_file(catalog_key(writer.node), out)
    return covered


def download(replica: SealedReplica, node: str, dest: Path) -> Covered | None:
    """Write `node`'s newest uploaded catalog to `dest` (a SQLite file) and return what it
    covers; None when the node never uploaded one. Raises ReplicaError, BackupBroken (an
    upload that does not decode)."""
    key = catalog_key(node)
    for attempt in range(_READS):
        try:
            return _download(replica, key, dest)
        except ReplicaNotFound:
            return None
        except (BackupBroken, BackupTampered) as exc:
            # a new upload replaced the object between two of our ranged reads: read it again
            if attempt == _READS - 1:
                raise
            log.info("catalog upload %s changed while read (%s); reading it again", key, exc)
    raise AssertionError("unreachable")


def _download(replica: SealedReplica, key: str, dest: Path) -> Covered:
    dest.unlink(missing_ok=True)
    packed = dest.with_name(dest.name + ".zst")
    try:
        with open(packed, "w+b") as out:
            replica.copy_plaintext(key, out, allow_plaintext=True)  # as segments are read
            out.seek(0)
            with open(dest, "wb") as db:
                try:
                    zstandard.ZstdDecompressor().copy_stream(out, db)
                except zstandard.ZstdError as exc:
                    raise BackupBroken(f"catalog upload {key} cannot be decoded: {exc}") from None
    finally:
        packed.unlink(missing_ok=True)
    conn = apsw.Connection(str(dest))
    try:
        found = conn.execute("SELECT node, server, written FROM upload").fetchone()
        covers = {str(i): int(s) for i, s in conn.execute("SELECT incarnation, seq FROM covers")}
    except apsw.Error as exc:
        raise BackupBroken(f"catalog upload {key} is not a catalog copy: {exc}") from None
    finally:
        conn.close()
    if found is None:
        raise BackupBroken(f"catalog upload {key} does not say what it covers")
    node, server, written = found
    return Covered(str(node), str(server), float(written), covers)


class CatalogUploader:
    """Uploads the catalog every `interval` seconds in a thread of its own (`start`), and once
    more at `stop`; one upload at a time. A failed upload is logged and tried again the next
    period. Nothing is uploaded once `fenced()` says the incarnation was fenced: its history
    below the fence belongs to whoever fenced it."""

    def __init__(
        self,
        replica: SealedReplica,
        catalog: Path,
        writer: Writer,
        server: str,
        interval: float,
        work_dir: Path,
        fenced: Callable[[], bool],
    ) -> None:
        self.replica, self.catalog, self.writer, self.server = replica, catalog, writer, server
        self.interval, self.work_dir, self._fenced = interval, work_dir, fenced
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last: Covered | None = None  # the last upload that succeeded

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sqlfleet-catalog-upload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the loop, then one last upload (a clean stop: call after the shipper's last
        flush). Never raises; idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self.upload_logged()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.upload_logged()

    def upload(self) -> Covered | None:
        """One upload now (after any in progress); None when fenced. Raises ReplicaError,
        apsw.Error, OSError."""
        with self._lock:
            if self._fenced():
                return None
            self.last = upload(self.replica, self.catalog, self.writer, self.server, self.work_dir)
            return self.last

    def upload_logged(self) -> bool:
        try:
            self.upload()
        except (ReplicaError, apsw.Error, OSError) as exc:
            log.warning("uploading the backup catalog failed (%s); will retry", exc)
            return False
        except Exception:  # a bug must not end the uploads for good
            log.exception("uploading the backup catalog failed; will retry")
            return False
        return True


def uploader(
    replica: SealedReplica, catalog: BackupCatalog, shipper: Shipper, work_dir: Path
) -> CatalogUploader | None:
    """The uploader of a shipper with a writer identity (cluster mode); None for a single server."""
    writer = shipper.flusher.writer
    if writer is None:
        return None
    interval = shipper.config.catalog_upload_interval

    def fenced() -> bool:
        return shipper.fenced is not None

    return CatalogUploader(
        replica, catalog.path, writer, shipper.flusher.server_id, interval, work_dir, fenced
    )
