"""The SQL sandbox: what tenant SQL may touch, decided inside SQLite by the authorizer.

Everything that reaches outside the tenant's own file or takes control of it away from the
server is refused: ATTACH/DETACH (and so VACUUM and VACUUM INTO, which attach), load_extension,
and every pragma not on the allow-lists below. The server's own statements run with `trusted`
set and are never cached, so a tenant cannot replay a cached trusted statement.
"""

from __future__ import annotations

import time

import apsw

# Pragmas a tenant may run with or without an argument: introspection and per-transaction knobs.
_PRAGMAS_ANY_ARG = frozenset(
    {
        "analysis_limit",
        "application_id",
        "collation_list",
        "compile_options",
        "database_list",
        "defer_foreign_keys",
        "foreign_key_check",
        "foreign_key_list",
        "function_list",
        "incremental_vacuum",
        "index_info",
        "index_list",
        "index_xinfo",
        "integrity_check",
        "module_list",
        "optimize",
        "pragma_list",
        "quick_check",
        "table_info",
        "table_list",
        "table_xinfo",
        "user_version",
    }
)
# Pragmas a tenant may read but never set: the server owns these.
_PRAGMAS_READ_ONLY = frozenset(
    {
        "auto_vacuum",
        "cache_size",
        "data_version",
        "encoding",
        "foreign_keys",
        "freelist_count",
        "journal_mode",
        "locking_mode",
        "max_page_count",
        "page_count",
        "page_size",
        "query_only",
        "schema_version",
        "synchronous",
        "wal_autocheckpoint",
    }
)
_DENIED_FUNCTIONS = frozenset({"load_extension", "fts3_tokenizer"})

PROGRESS_STEPS = 10_000


class Sandbox:
    """Authorizer and progress handler of one tenant connection. Not thread-safe: the pool
    serializes all use of a connection, and with it its sandbox."""

    def __init__(self, statement_timeout: float) -> None:
        self.statement_timeout = statement_timeout
        self.trusted = False
        self.deadline = float("inf")
        self.timed_out = False

    def install(self, conn: apsw.Connection) -> None:
        conn.authorizer = self.authorize
        conn.set_progress_handler(self.progress, PROGRESS_STEPS)

    def start_statement(self, limit: float | None = None) -> None:
        self.timed_out = False
        self.deadline = time.monotonic() + (self.statement_timeout if limit is None else limit)

    def end_statement(self) -> None:
        self.deadline = float("inf")

    def progress(self) -> bool:
        """Return True to interrupt the running statement (SQLite then raises InterruptError)."""
        if time.monotonic() > self.deadline:
            self.timed_out = True
            return True
        return False

    def authorize(
        self, action: int, arg1: str | None, arg2: str | None, dbname: str | None, trigger: str | None
    ) -> int:
        if self.trusted:
            return apsw.SQLITE_OK
        if action in (apsw.SQLITE_ATTACH, apsw.SQLITE_DETACH):
            return apsw.SQLITE_DENY
        if action == apsw.SQLITE_PRAGMA:
            return _authorize_pragma((arg1 or "").lower(), arg2)
        if action == apsw.SQLITE_FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS:
            return apsw.SQLITE_DENY
        return apsw.SQLITE_OK


def _authorize_pragma(name: str, arg: str | None) -> int:
    if name in _PRAGMAS_ANY_ARG or (arg is None and name in _PRAGMAS_READ_ONLY):
        return apsw.SQLITE_OK
    return apsw.SQLITE_DENY
