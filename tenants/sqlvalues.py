"""Values as SQLite's own functions see them, for the functions that stand in for them
(tenants.functions): text forms, SQLite's errors, and sharing the GIL.

Functions registered from Python run in a worker thread holding the GIL, which SQLite's own did
not: a long loop of them would keep the event loop waiting (CPython hands the GIL over only
every switch interval, 5 ms, at a bytecode boundary). Loops over big inputs call `relax`, which
after about a millisecond of work sleeps a moment, so a waiting thread takes the GIL at once.
"""

from __future__ import annotations

import threading
import time

import apsw

Value = None | int | float | str | bytes
ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_PIECE_SECONDS = 0.001
_PAUSE_SECONDS = 0.0001


def sqlite_error(kind: type[apsw.Error], code: int, message: str) -> apsw.Error:
    # APSW hands an exception raised in a function back to the caller as is: give it the
    # result code SQLite's own would carry (tenants.execute and Hrana's codes read it).
    error = kind(message)
    error.result = error.extendedresult = code  # type: ignore[attr-defined]
    return error


def too_big(message: str = "string or blob too big") -> apsw.Error:
    return sqlite_error(apsw.TooBigError, apsw.SQLITE_TOOBIG, message)


def sql_error(message: str) -> apsw.Error:
    return sqlite_error(apsw.SQLError, apsw.SQLITE_ERROR, message)


_local = threading.local()


def builtin(length_limit: int) -> apsw.Connection:
    """A private in-memory connection of this thread, where the built-ins are not replaced."""
    conn: apsw.Connection | None = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = apsw.Connection(":memory:")
    conn.limit(apsw.SQLITE_LIMIT_LENGTH, length_limit)
    return conn


def real_text(value: float) -> str:
    """A REAL as SQLite renders it as text (not Python's repr: 1e20 is '1.0e+20')."""
    text = builtin(1 << 20).execute("SELECT CAST(? AS TEXT)", (value,)).fetchall()[0][0]
    assert isinstance(text, str)
    return text


def text_of(value: Value) -> str | None:
    """The value as text; a blob's bytes as UTF-8 (raises UnicodeDecodeError if they are not)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, float):
        return real_text(value)
    return str(value)


def bytes_of(value: Value) -> bytes:
    """A non-NULL value's text form as bytes (a blob as is)."""
    if isinstance(value, bytes):
        return value
    text = text_of(value)
    assert text is not None
    return text.encode()


def utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def until_nul(text: str) -> str:
    """Text up to its first NUL: where SQLite's NUL-terminated loops stop."""
    end = text.find("\0")
    return text if end < 0 else text[:end]


def relax(since: float) -> float:
    """Pause if more than _PIECE_SECONDS went by `since`; the time to measure from next."""
    now = time.perf_counter()
    if now - since < _PIECE_SECONDS:
        return since
    time.sleep(_PAUSE_SECONDS)
    return time.perf_counter()
