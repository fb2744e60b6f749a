"""SQL text as the protocol needs it: split into statements (for `sequence`), and the libSQL
`BEGIN ... READONLY` dialect, which stock SQLite does not parse."""

from __future__ import annotations

import re

import apsw

from tenants.execute import skip_trivia

_QUOTES = {"'": "'", '"': '"', "`": "`", "[": "]"}
_BEGIN_READONLY = re.compile(r"BEGIN\s+(?:TRANSACTION\s+)?READONLY\s*;?\s*", re.IGNORECASE)


def split_statements(sql: str) -> list[str]:
    """The statements of `sql`, each with its terminating ';' (empty pieces and comments
    dropped). Semicolons inside strings, quoted names and comments do not split, nor do those
    inside a CREATE TRIGGER body: `apsw.complete` (sqlite3_complete) decides where a statement
    really ends. Linear in len(sql) apart from trigger bodies."""
    if ";" not in sql:  # the common case: one statement, no scan
        return [sql] if skip_trivia(sql) < len(sql) else []
    statements: list[str] = []
    start = i = 0
    n = len(sql)
    while i < n:
        ch = sql[i]
        if ch in _QUOTES:
            end = sql.find(_QUOTES[ch], i + 1)
            while end >= 0 and ch != "[" and sql.startswith(ch, end + 1):  # '' escapes a quote
                end = sql.find(ch, end + 2)
            i = n if end < 0 else end + 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif ch == ";" and apsw.complete(sql[start : i + 1]):
            _append(statements, sql[start : i + 1])
            start = i = i + 1
        else:
            i += 1
    _append(statements, sql[start:])
    return statements


def _append(statements: list[str], piece: str) -> None:
    if skip_trivia(piece) < len(piece):
        statements.append(piece)


def is_begin_readonly(sql: str) -> bool:
    """Whether `sql` is libSQL's `BEGIN [TRANSACTION] READONLY` (what the clients send for a
    "read" transaction or batch)."""
    return _BEGIN_READONLY.fullmatch(sql, skip_trivia(sql)) is not None
