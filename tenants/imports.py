"""Import: checking an uploaded SQLite file before it becomes a tenant.

`check_upload` decides whether a file may go live, and turns it into what a tenant file is (WAL
mode, checkpointed), or raises a 4xx naming what is wrong; the upload is the only file it
touches. What is accepted, and why:

- a real SQLite file: the 16-byte magic, a page size SQLite allows (a power of two from 512 to
  65536: every one works with the server's pragmas), a size that is a whole number of pages and
  agrees with the header's page count (else it says which: truncated, or longer than the
  header says);
- UTF-8 text only: the API, the dump and the stand-in functions (tenants.functions) speak UTF-8;
  convert a UTF-16 database with `sqlite3 old.db .dump | sqlite3 new.db` first;
- a rollback-journal (DELETE) header: one uploaded file cannot bring its -wal along, and a file
  in WAL mode may have commits (or half a checkpoint) there; checkpoint it and switch to DELETE,
  or copy it with `sqlite3 FILE ".backup out.db"` (this server's export is such a file);
- at most `max_db_bytes` (the tenant size limit) and `PRAGMA integrity_check` ok within
  `check_timeout` seconds;
- a schema the tenant could have made itself, by the rule the live API follows: every CREATE is
  run again as tenant SQL (the sandbox's authorizer, trusted_schema off, the server's functions)
  on an empty scratch database, and what the sandbox refuses there is refused by name (a CHECK,
  DEFAULT, generated column or index calling load_extension or an unknown function). What
  tenant SQL may CREATE but that fails when used (a view or trigger calling a refused function,
  a view whose table is gone) is accepted, as the API accepts it: it fails in the imported
  tenant exactly as it did in the one it came from, so an export always imports back. Of the
  `sqlite_*` names only the tables SQLite makes itself (sqlite_sequence, sqlite_stat1,
  sqlite_stat4, in the shape it makes them) are accepted; of the server's `_sqlfleet_*` names
  only `_sqlfleet_migrations` (the migration record an exported group tenant carries), whose
  shape is checked where it is read.

Blocking; call it from a worker thread.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import apsw

from tenants.config import DbConfig
from tenants.connection import open_database
from tenants.errors import BadRequest, TooLarge
from tenants.sandbox import BOOKKEEPING_PREFIX, is_bookkeeping

MAGIC = b"SQLite format 3\x00"
HEADER = 100
RECORD_TABLE = "_sqlfleet_migrations"  # schema_sync.migrations.RECORD_TABLE (a test keeps them equal)
# The tables SQLite makes itself that a tenant can have (AUTOINCREMENT, ANALYZE), as SQLite
# writes them (sqlite.org/fileformat2.html#internal_schema_objects)
SQLITE_OWN = {
    "sqlite_sequence": "CREATE TABLE sqlite_sequence(name,seq)",
    "sqlite_stat1": "CREATE TABLE sqlite_stat1(tbl,idx,stat)",
    "sqlite_stat4": "CREATE TABLE sqlite_stat4(tbl,idx,neq,nlt,ndlt,sample)",
}


class BadImport(BadRequest):
    code = "bad_import"


class ImportTooLarge(TooLarge):
    code = "import_too_large"


@dataclass(frozen=True)
class Header:
    page_size: int
    pages: int
    encoding: int
    write_version: int
    read_version: int


def read_header(head: bytes, size: int) -> Header:
    """The parts of the 100-byte header an import checks (sqlite.org/fileformat2.html)."""
    if len(head) < HEADER or not head.startswith(MAGIC):
        raise BadImport("not an SQLite database: the file does not start with 'SQLite format 3'")
    raw_page = struct.unpack(">H", head[16:18])[0]
    page_size = 65536 if raw_page == 1 else raw_page
    if page_size < 512 or page_size & (page_size - 1):
        raise BadImport(
            f"page size {raw_page} in the header is not one SQLite allows (512 to 65536, a power of 2)"
        )
    (change,), (pages,), (valid_for,) = (struct.unpack(">I", head[i : i + 4]) for i in (24, 28, 92))
    (encoding,) = struct.unpack(">I", head[56:60])
    if change != valid_for or pages == 0:
        pages = size // page_size  # an old writer left the page count stale: the file size says
    return Header(page_size, pages, encoding, head[18], head[19])


def check_header(header: Header, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ImportTooLarge(f"the file is {size} bytes; a tenant may be at most {max_bytes}")
    expected = header.pages * header.page_size
    shape = f"the header says {header.pages} pages of {header.page_size} bytes ({expected} bytes)"
    if size < expected:
        raise BadImport(f"truncated: {shape}, the file has {size}")
    if size % header.page_size:
        raise BadImport(
            f"{size} bytes is not a whole number of {header.page_size}-byte pages: the file was cut "
            "short or has bytes added at its end"
        )
    if size > expected:
        raise BadImport(
            f"the file is longer than its header says: {shape}, the file has {size} (bytes added "
            "at its end, or a header from another file)"
        )
    if header.encoding not in (0, 1):
        kind = {2: "UTF-16le", 3: "UTF-16be"}.get(header.encoding, f"unknown ({header.encoding})")
        raise BadImport(f"text encoding {kind}: only UTF-8 databases can be imported")
    if header.write_version == 2 or header.read_version == 2:
        raise BadImport(
            "the file is in WAL mode: its latest commits may be in a -wal file that was not uploaded; "
            "checkpoint it and set journal_mode=DELETE, or copy it with sqlite3 FILE '.backup out.db'"
        )
    if header.write_version != 1 or header.read_version != 1:
        raise BadImport(
            f"file format versions {header.write_version}/{header.read_version}: SQLite writes 1 or 2"
        )


@contextlib.contextmanager
def _deadline(conn: apsw.Connection, seconds: float, what: str) -> Iterator[None]:
    until = time.monotonic() + seconds
    conn.set_progress_handler(lambda: time.monotonic() > until, 10_000)
    try:
        yield
    except apsw.InterruptError:
        raise BadImport(f"{what} did not finish within {seconds:g} s") from None
    finally:
        conn.set_progress_handler(None)


def _objects(path: Path) -> list[tuple[str, str, str, str]]:
    """The schema's rows. Read with trusted_schema on, so that a schema the tenant's connection
    could not even load (a CHECK calling load_extension) is listed and then refused by name;
    parsing a schema runs none of its functions."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        conn.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, 1)
        rows = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE sql IS NOT NULL ORDER BY rowid"
        ).fetchall()
    except apsw.Error as exc:
        raise BadImport(f"corrupt: its schema cannot be read: {exc}") from None
    finally:
        conn.close()
    return [(str(t), str(n), str(tb), str(s)) for t, n, tb, s in rows]


def _check_integrity(path: Path, seconds: float) -> None:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE)
    try:
        with _deadline(conn, seconds, "the integrity check"):
            try:
                conn.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, 1)
                conn.config(apsw.SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0)
                conn.execute("PRAGMA cache_size=-2048")
                problems = [str(r[0]) for r in conn.execute("PRAGMA integrity_check(20)")]
            except (apsw.CorruptError, apsw.NotADBError) as exc:
                raise BadImport(f"corrupt: {exc}") from None
            except apsw.InterruptError:
                raise
            except apsw.Error as exc:
                raise BadImport(f"cannot be read: {exc}") from None
    finally:
        conn.close()
    if problems != ["ok"]:
        raise BadImport("corrupt: integrity_check found: " + "; ".join(problems), problems=problems)


def _check_names(objects: list[tuple[str, str, str, str]]) -> None:
    for kind, name, _, sql in objects:
        if is_bookkeeping(name) and name != RECORD_TABLE:
            raise BadImport(
                f"{kind} {name}: {BOOKKEEPING_PREFIX}* names are the server's; a tenant cannot make one",
                object=name,
            )
        if name.lower().startswith("sqlite_") and (kind, sql) != ("table", SQLITE_OWN.get(name)):
            raise BadImport(
                f"{kind} {name}: sqlite_* names are SQLite's own, and this is not one of the tables "
                f"SQLite makes ({', '.join(SQLITE_OWN)}); tenant SQL cannot create it",
                object=name,
            )


def _check_schema(objects: list[tuple[str, str, str, str]], scratch: Path, config: DbConfig) -> None:
    """Run each CREATE again as tenant SQL on an empty database: what the sandbox refuses there,
    the live API refuses too."""
    _check_names(objects)
    conn, sandbox = open_database(scratch, config, create=True)
    try:
        for kind, name, _, sql in objects:
            if name.lower().startswith("sqlite_") or _exists(conn, name):
                continue  # made by SQLite itself (checked above), or a virtual table's shadow table
            # the server makes the record; its shape is checked where it is read (RecordBroken)
            sandbox.trusted = name == RECORD_TABLE
            try:
                sandbox.start_statement()
                conn.execute(sql).fetchall()
            except apsw.Error as exc:
                raise BadImport(f"{kind} {name} would be refused: {exc}", object=name) from None
            finally:
                sandbox.end_statement()
                sandbox.trusted = False
    finally:
        conn.close()


def _exists(conn: apsw.Connection, name: str) -> bool:
    return bool(conn.execute("SELECT 1 FROM main.sqlite_schema WHERE name = ?", (name,)).fetchall())


def check_upload(path: Path, config: DbConfig, check_timeout: float) -> Header:
    """Check the uploaded file at `path` (see the module doc) and turn it into a tenant file: WAL
    mode, checkpointed, no side files. Raises BadImport (400) or ImportTooLarge (413); on any
    error the caller deletes `path`."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(HEADER)
    header = read_header(head, size)
    check_header(header, size, config.max_db_bytes)
    objects = _objects(path)
    scratch = path.with_name(path.name + ".schema")
    try:
        _check_schema(objects, scratch, config)
    finally:
        for side in (scratch, Path(f"{scratch}-wal"), Path(f"{scratch}-journal")):
            side.unlink(missing_ok=True)
    _check_integrity(path, check_timeout)
    try:
        conn, _ = open_database(path, config)  # WAL mode, as every tenant file
    except (apsw.SQLError, apsw.CorruptError, apsw.NotADBError) as exc:
        raise BadImport(f"cannot be opened as a tenant database: {exc}") from None
    try:
        conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    finally:
        conn.close()
    Path(f"{path}-wal").unlink(missing_ok=True)  # empty after the TRUNCATE checkpoint
    return header
