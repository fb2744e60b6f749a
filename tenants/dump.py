"""Dump: SQL text that recreates a database, as `sqlite3 .dump` writes it.

Read from a consistent copy (tenants.export), never from the live tenant, so a long dump holds
no lock. The text is `PRAGMA foreign_keys=OFF; BEGIN TRANSACTION;`, each table's CREATE and then
its rows (ANALYZE's sqlite_stat1 as sqlite3 writes it: `ANALYZE sqlite_schema;`, then its
rows), `sqlite_sequence`, then indexes, triggers and views in
creation order, then `COMMIT;`.
Every statement ends with ";\\n" and each row is one INSERT naming its columns (generated
columns left out, so they are computed again) and, for rowid tables, the rowid (a table without
an INTEGER PRIMARY KEY keeps its rowids too). Values are exact: integers as digits, reals as
Python's shortest round-tripping repr (±inf as ±1e999), text as '...' with '' escapes (a NUL
as ||char(0)||), blobs as X'..', NULL.

Left out: `_sqlfleet_*` bookkeeping (the server's, not the tenant's: an import or a schema group
makes its own), sqlite_stat4 (see STAT_TABLES) and virtual tables' shadow tables (their CREATE
VIRTUAL TABLE makes them; the virtual table's rows are inserted through it).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import apsw

CHUNK = 64 << 10  # characters per yielded piece
# ANALYZE's statistics: tenant SQL may run ANALYZE and write them, and sqlite3 .dump keeps them.
# Not sqlite_stat4 (its samples): only SQLite built with SQLITE_ENABLE_STAT4 (this server's is)
# can load it, most sqlite3 CLIs cannot, and ANALYZE makes it again.
STAT_TABLES = ("sqlite_stat1",)

_OBJECTS = (
    "SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE sql IS NOT NULL"
    " AND (name NOT LIKE 'sqlite\\_%' ESCAPE '\\' OR (type = 'table' AND name IN ({stats})))"
    " AND name NOT LIKE '\\_sqlfleet\\_%' ESCAPE '\\'"
    " ORDER BY rowid"
).format(stats=", ".join(f"'{name}'" for name in STAT_TABLES))


def quote_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_value(value: object) -> str:
    """`value` as an SQL literal that reads back as exactly the same value and type."""
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:  # SQLite stores NaN as NULL; never read back as a float
            return "NULL"
        if value in (float("inf"), float("-inf")):
            return "1e999" if value > 0 else "-1e999"
        return repr(value)
    if isinstance(value, bytes):
        return "X'" + value.hex().upper() + "'"
    if isinstance(value, str):
        text = "'" + value.replace("'", "''") + "'"
        return text.replace("\x00", "'||char(0)||'") if "\x00" in value else text
    raise TypeError(f"not an SQLite value: {type(value).__name__}")


def _shadow_tables(conn: apsw.Connection) -> set[str]:
    return {str(r[1]) for r in conn.execute("PRAGMA main.table_list") if r[2] == "shadow"}


def _insertable_columns(conn: apsw.Connection, table: str) -> list[str]:
    # hidden: 0 normal, 1 hidden (virtual tables), 2 and 3 generated (computed again)
    return [str(r[1]) for r in conn.execute(f"PRAGMA main.table_xinfo({quote_name(table)})") if r[6] == 0]


def _without_rowid(conn: apsw.Connection, table: str) -> bool:
    # table_list: schema, name, type, ncol, wr (WITHOUT ROWID), strict
    return any(r[1] == table and r[4] for r in conn.execute("PRAGMA main.table_list"))


def _rows(conn: apsw.Connection, table: str, virtual: bool) -> Iterator[str]:
    columns = _insertable_columns(conn, table)
    rowid = None
    if not _without_rowid(conn, table):
        lowered = {c.lower() for c in columns}
        rowid = next((n for n in ("rowid", "_rowid_", "oid") if n not in lowered), None)
    names = ([rowid] if rowid else []) + columns
    if not names:
        return
    target = f"INSERT INTO {quote_name(table)}({','.join(map(quote_name, names))}) VALUES("
    select = ", ".join(([rowid] if rowid else []) + [quote_name(c) for c in columns])
    order = " ORDER BY rowid" if rowid and not virtual else ""
    for row in conn.execute(f"SELECT {select} FROM main.{quote_name(table)}{order}"):
        yield target + ",".join(map(quote_value, row)) + ");\n"


def statements(conn: apsw.Connection) -> Iterator[str]:
    """The dump of `conn`'s main database, one statement (ending ";\\n") at a time. The caller
    keeps the database unchanged meanwhile (a read transaction, or a private copy)."""
    yield "PRAGMA foreign_keys=OFF;\n"
    yield "BEGIN TRANSACTION;\n"
    objects = [(str(t), str(n), str(tb), str(s)) for t, n, tb, s in conn.execute(_OBJECTS)]
    shadows = _shadow_tables(conn)
    analyzed = False
    for kind, name, _, sql in objects:
        if kind != "table" or name in shadows:
            continue
        if name in STAT_TABLES:
            if not analyzed:  # as sqlite3 .dump: it makes the statistics tables, then their rows
                yield "ANALYZE sqlite_schema;\n"
                analyzed = True
            yield from _rows(conn, name, virtual=False)
            continue
        yield sql + ";\n"
        yield from _rows(conn, name, virtual=sql.lstrip()[:14].upper().startswith("CREATE VIRTUAL"))
    has_sequence = conn.execute(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'sqlite_sequence'"
    ).fetchall()
    if has_sequence:
        yield "DELETE FROM sqlite_sequence;\n"
        for name, seq in conn.execute("SELECT name, seq FROM sqlite_sequence ORDER BY rowid"):
            yield f"INSERT INTO sqlite_sequence(name,seq) VALUES({quote_value(name)},{quote_value(seq)});\n"
    for kind, name, _, sql in objects:
        if kind in ("index", "trigger", "view") and name not in shadows:
            yield sql + ";\n"
    yield "COMMIT;\n"


def chunks(conn: apsw.Connection, size: int = CHUNK) -> Generator[bytes, None, None]:
    """`statements`, UTF-8 encoded, in pieces of about `size` characters (one row's statement
    may make a piece larger: a value is at most the connection's SQLITE_LIMIT_LENGTH)."""
    pending: list[str] = []
    held = 0
    for statement in statements(conn):
        pending.append(statement)
        held += len(statement)
        if held >= size:
            yield "".join(pending).encode()
            pending, held = [], 0
    if pending:
        yield "".join(pending).encode()


class Reader:
    """The dump of the database file at `path` (a private copy: nothing else writes it), read
    piece by piece. Not thread-safe; its calls may come from different threads one at a time."""

    def __init__(self, path: Path) -> None:
        self._conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        self._conn.config(apsw.SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0)
        self._conn.execute("PRAGMA cache_size=-2048")
        self._pieces = chunks(self._conn)

    def next_piece(self) -> bytes:
        """The next piece of the dump; b"" once it is all read."""
        return next(self._pieces, b"")

    def close(self) -> None:
        self._pieces.close()
        self._conn.close()
