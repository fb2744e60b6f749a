"""Opening a tenant database: the pragmas the server relies on, limits, and the sandbox."""

from __future__ import annotations

import os
from pathlib import Path

import apsw

from tenants.config import DbConfig
from tenants.sandbox import Sandbox

# SQLITE_OPEN_URI lets the server's own ATTACH (schema sync: a template, read-only) use a URI;
# tenant SQL can never ATTACH, and tenant paths never start with "file:".
_OPEN_FLAGS = (
    apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_NOMUTEX | apsw.SQLITE_OPEN_EXRESCODE | apsw.SQLITE_OPEN_URI
)


SYNCHRONOUS_LEVELS = {"OFF": 0, "NORMAL": 1, "FULL": 2, "EXTRA": 3}  # what PRAGMA synchronous reads


def configure_sqlite() -> None:
    """Process-wide SQLite settings for a server holding many idle connections. Call first
    thing in the process, before any connection opens: it restarts SQLite's library state.

    No lookaside arena: each connection would preallocate one (~44 KiB here, measured: an idle
    tenant connection holds ~156 KiB instead of ~200), for a speed-up no benchmark of the miss
    or the hot path could tell from noise. Raises apsw.Error if SQLite refuses."""
    apsw.shutdown()
    apsw.config(apsw.SQLITE_CONFIG_LOOKASIDE, 0, 0)
    apsw.config(apsw.SQLITE_CONFIG_MEMSTATUS, 0)
    apsw.initialize()


def open_database(path: Path, config: DbConfig, *, create: bool = False) -> tuple[apsw.Connection, Sandbox]:
    """Open `path` in WAL mode with an exclusive lock, sandboxed.

    Raises apsw.CantOpenError if the file is missing (unless `create`), apsw.NotADBError or
    apsw.CorruptError if it is not a sound database. The connection is closed on any failure.
    With `create` the file is made (or kept) readable by this user only, its WAL then too.
    """
    if create:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)  # a copied template may have come with the umask's mode
        finally:
            os.close(fd)
    flags = _OPEN_FLAGS | (apsw.SQLITE_OPEN_CREATE if create else 0)
    conn = apsw.Connection(str(path), flags=flags, statementcachesize=32)
    try:
        max_pages = _configure(conn, config)
    except BaseException:
        conn.close()
        raise
    sandbox = Sandbox(config.statement_timeout)
    # TEMP tables live in a file under /tmp that would otherwise grow without bound. A tiny
    # cache keeps opening it cheap (~12 KiB; the default preallocates ~80 KiB of pages).
    sandbox.temp_bounds = f"PRAGMA temp.cache_size=2; PRAGMA temp.max_page_count={max_pages}"
    sandbox.install(conn)
    return conn, sandbox


def _configure(conn: apsw.Connection, config: DbConfig) -> int:
    """Set the connection up; returns its max_page_count. Every statement here is a prepare
    and a step, and APSW lets go of the GIL around each, which under load wakes another thread;
    so an open reads what it needs in one statement and runs only the pragmas whose values
    differ: four statements, not nine (the TEMP database's bounds wait for the first statement
    that can reach it: tenants.sandbox.Sandbox.temp_bounds)."""
    # Closing must never checkpoint: the server alone decides when the WAL is folded back.
    conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
    conn.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, 1)
    conn.config(apsw.SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0)
    conn.config(apsw.SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 0)
    conn.config(apsw.SQLITE_DBCONFIG_ENABLE_FKEY, 1)  # PRAGMA foreign_keys=ON without a statement
    conn.limit(apsw.SQLITE_LIMIT_ATTACHED, 0)
    conn.limit(apsw.SQLITE_LIMIT_SQL_LENGTH, config.max_sql_length)
    # One LIKE/GLOB call costs up to |value| x |pattern| inside one VM step, where no interrupt
    # reaches it; the built-ins stay (they keep the LIKE index optimization), the pattern is bounded.
    conn.limit(apsw.SQLITE_LIMIT_LIKE_PATTERN_LENGTH, config.max_like_pattern_length)
    # No single value may outgrow a result: otherwise `SELECT length(randomblob(1e9))` makes
    # the server allocate a gigabyte inside one statement, long before any result check.
    conn.limit(apsw.SQLITE_LIMIT_LENGTH, max(config.max_result_bytes, config.max_sql_length))
    conn.wal_autocheckpoint(0)
    # locking_mode before anything reads the file: the exclusive lock keeps the WAL index in
    # heap memory, no -shm. These run once per connection, so never cached: APSW's statement
    # cache would hold them (~29 KiB of SQLite memory) for as long as the connection is open.
    conn.execute("PRAGMA locking_mode=EXCLUSIVE", can_cache=False).fetchall()
    # Reading them reads the schema first (they need it), so a WAL file's header has set the
    # WAL mode and its default synchronous level by then.
    page_size, mode, level = conn.execute(
        "SELECT p.page_size, j.journal_mode, s.synchronous"
        " FROM pragma_page_size p, pragma_journal_mode j, pragma_synchronous s",
        can_cache=False,
    ).fetchall()[0]
    pragmas = [f"PRAGMA cache_size=-{config.cache_size_kib}"]
    if mode != "wal":  # a new file, or one that came in another journal mode
        mode = conn.execute("PRAGMA journal_mode=WAL", can_cache=False).fetchall()[0][0]
        if mode != "wal":
            raise apsw.CantOpenError(f"could not switch to WAL mode (got {mode})")
        level = None  # entering WAL mode may have changed it
    if level != SYNCHRONOUS_LEVELS[config.synchronous]:
        pragmas.append(f"PRAGMA synchronous={config.synchronous}")
    max_pages = max(1, config.max_db_bytes // int(page_size))  # type: ignore[arg-type]
    pragmas.append(f"PRAGMA max_page_count={max_pages}")
    # APSW runs the next statement only when the previous one's rows are consumed
    conn.execute("; ".join(pragmas), can_cache=False).fetchall()
    return max_pages
