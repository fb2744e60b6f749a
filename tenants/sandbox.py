"""The SQL sandbox: what tenant SQL may touch, decided inside SQLite by the authorizer.

Everything that reaches outside the tenant's own file or takes control of it away from the
server is refused: ATTACH/DETACH (and so VACUUM and VACUUM INTO, which attach), load_extension,
and every pragma not on the allow-lists below; each refusal is a SandboxRefused that says what
was refused and why. The server's own statements run with `trusted` set and are never cached,
so a tenant cannot replay a cached trusted statement.

A few connection-scoped pragmas the client libraries send may be set (SESSION_PRAGMAS): the
sandbox notes each one set (`pragmas_set`), and whoever lets go of the connection puts them
back (tenants.pool.Handle.reset_session), so a setting never outlives its request or stream.
Statements that mention a pragma are never cached, so each run of one passes the authorizer.
TEMP objects likewise (`temp_created`): the connection is shared by all of the tenant's requests,
streams and tokens, so a TEMP table, view or trigger is dropped when its request (or stream)
lets go, never seen by another. (A cached CREATE TEMP statement passes the authorizer again: the
drop changed the temp schema, so SQLite prepares it anew.)

Server bookkeeping inside a tenant file (`_sqlfleet_*`: the migration record, a rebuild's scratch
table) may be read by tenant SQL, never written, dropped, altered, renamed (to or from),
replaced, shadowed (a TEMP object of that name), indexed or given triggers: such a statement
fails with apsw.AuthError naming what was refused.
"""

from __future__ import annotations

import contextlib
import re
import time
import weakref
from collections.abc import Iterator
from functools import partial
from typing import Any

import apsw

from tenants import functions
from tenants.inline import InlinePlans
from tenants.sqllex import tokens
from tenants.watchdog import Alarm, Watchdog, shared_watchdog

# Pragmas a tenant may run with or without an argument: introspection and per-transaction knobs.
_PRAGMAS_ANY_ARG = frozenset(
    {
        "analysis_limit",
        "application_id",
        "collation_list",
        "compile_options",
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
# Connection-scoped pragmas a tenant may also set, with the value every connection has (the
# server's, tenants.connection, for foreign_keys; SQLite's for the others). They change only how
# this connection treats the tenant's own data, and are put back when a request or stream lets
# go of the connection. Sent by the client libraries: foreign_keys by @libsql/client's
# migrate() (so drizzle's migrator), prisma's and drizzle-kit's table rebuilds;
# defer_foreign_keys by prisma's; recursive_triggers by ORMs that rely on REPLACE firing delete
# triggers. Not allowed, as not needed or not safe: case_sensitive_like (it replaces the LIKE
# function, and cannot be read back), legacy_alter_table and writable_schema (the server's own
# schema work runs on this connection), ignore_check_constraints (nothing sends it), trusted_schema.
SESSION_PRAGMAS: dict[str, int] = {"foreign_keys": 1, "defer_foreign_keys": 0, "recursive_triggers": 0}
# Why some refused pragmas are refused; the rest get the general reason (_PRAGMA_RULE).
_PRAGMA_REASONS = {
    "temp_store_directory": "it names a directory outside the tenant's database",
    "data_store_directory": "it names a directory outside the tenant's database",
    "writable_schema": "it would let SQL rewrite the schema table itself",
    "wal_checkpoint": "the server checkpoints, once the WAL is in the backups",
    "query_only": "a read-only token sets it",
}
_PRAGMA_RULE = (
    "tenant SQL may use the pragmas that inspect or check its own database (table_info, "
    "integrity_check, ...), user_version, application_id and the per-connection "
    f"{', '.join(sorted(SESSION_PRAGMAS))}; the server owns the others"
)
_DENIED_FUNCTIONS = {
    "load_extension": "load_extension() is not allowed: tenant SQL may not load native code into the server",
    "fts3_tokenizer": "fts3_tokenizer() is not allowed: it can hand SQLite a native pointer",
}
_MENTIONS_PRAGMA = re.compile("pragma", re.IGNORECASE)
_MENTIONS_TEMP = re.compile("temp", re.IGNORECASE)

BOOKKEEPING_PREFIX = "_sqlfleet_"
_MENTIONS_BOOKKEEPING = re.compile(re.escape(BOOKKEEPING_PREFIX), re.IGNORECASE)
# What each action would do to the object its first argument names ...
_TO_NAMED = {
    apsw.SQLITE_INSERT: "insert into",
    apsw.SQLITE_UPDATE: "update",
    apsw.SQLITE_DELETE: "delete from",
    apsw.SQLITE_DROP_TABLE: "drop",
    apsw.SQLITE_DROP_TEMP_TABLE: "drop",
    apsw.SQLITE_DROP_VIEW: "drop",
    apsw.SQLITE_DROP_TEMP_VIEW: "drop",
    apsw.SQLITE_DROP_VTABLE: "drop",
    apsw.SQLITE_DROP_INDEX: "drop",
    apsw.SQLITE_DROP_TEMP_INDEX: "drop",
    apsw.SQLITE_DROP_TRIGGER: "drop",
    apsw.SQLITE_DROP_TEMP_TRIGGER: "drop",
}
# ... what it would create under the name (a TEMP object shadows `main` for unqualified names) ...
_CREATES = {
    apsw.SQLITE_CREATE_TABLE: "a table",
    apsw.SQLITE_CREATE_TEMP_TABLE: "a TEMP table",
    apsw.SQLITE_CREATE_VIEW: "a view",
    apsw.SQLITE_CREATE_TEMP_VIEW: "a TEMP view",
    apsw.SQLITE_CREATE_VTABLE: "a virtual table",
    apsw.SQLITE_CREATE_INDEX: "an index",
    apsw.SQLITE_CREATE_TEMP_INDEX: "an index",
    apsw.SQLITE_CREATE_TRIGGER: "a trigger",
    apsw.SQLITE_CREATE_TEMP_TRIGGER: "a TEMP trigger",
}
_CREATES_TEMP = {
    apsw.SQLITE_CREATE_TEMP_TABLE,
    apsw.SQLITE_CREATE_TEMP_VIEW,
    apsw.SQLITE_CREATE_TEMP_INDEX,
    apsw.SQLITE_CREATE_TEMP_TRIGGER,
}
# ... and to the table its second argument names (SQLITE_ALTER_TABLE: the database, the table).
# Dropping a tenant's own index or trigger from bookkeeping stays allowed: a file from before
# these rules may carry one, and removing it only repairs.
_TO_TABLE = {
    apsw.SQLITE_CREATE_INDEX: "index",
    apsw.SQLITE_CREATE_TEMP_INDEX: "index",
    apsw.SQLITE_CREATE_TRIGGER: "attach a trigger to",
    apsw.SQLITE_CREATE_TEMP_TRIGGER: "attach a trigger to",
    apsw.SQLITE_ALTER_TABLE: "alter or rename",
}

# An inline statement (run on the event loop, see tenants.inline) checks its budget this often:
# each step it may run is short, so it stops within a few steps of running out.
INLINE_STEPS = 8


class SandboxRefused(apsw.AuthError):
    """The sandbox refused a statement: raised by the authorizer (APSW passes it on where SQLite
    would only say `not authorized`), so its message says what was refused and why. Carries
    SQLITE_AUTH as SQLite's own refusals do."""

    result: int
    extendedresult: int

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.result = self.extendedresult = apsw.SQLITE_AUTH


class BookkeepingRefused(SandboxRefused):
    """Tenant SQL touched server bookkeeping."""


class Sandbox:
    """Authorizer, time limits and function stand-ins of one tenant connection. Not
    thread-safe: the pool serializes all use of a connection, and with it its sandbox.

    Time: `start_statement` arms the watchdog (tenants.watchdog), which at the deadline sets
    `timed_out` and interrupts the connection from its own thread, so even a statement stuck in
    one long step stops; `tenants.functions` replaces the built-ins that never look at an
    interrupt. An inline statement (`inline=True`) is instead watched by the progress handler
    every INLINE_STEPS steps, on its own thread, without waking the watchdog. Other statements
    have no progress handler: it would take the GIL thousands of times a second while they run,
    and each time the event loop (every other tenant) would have to hand it over."""

    def __init__(self, statement_timeout: float, watchdog: Watchdog | None = None) -> None:
        self.statement_timeout = statement_timeout
        self.trusted = False
        self.deadline = float("inf")
        self.timed_out = False
        self.inline = InlinePlans()
        self._watchdog = watchdog if watchdog is not None else shared_watchdog()
        self._alarm: Alarm | None = None
        self._inline_run = False
        self._conn: weakref.ref[apsw.Connection] | None = None
        self.permitted: str | None = None  # a bookkeeping name prefix the server's own work may use
        self.sql: str | None = None  # the SQL text being run, if it mentions bookkeeping names
        self.pragmas_set: set[str] = set()  # SESSION_PRAGMAS tenant SQL set since the last reset
        self.temp_created = False  # tenant SQL created a TEMP object since the last reset
        # Pragmas bounding the TEMP database, run (once) before the first statement whose text
        # can reach it: every such text says "temp" (TEMP/TEMPORARY, the temp schema,
        # sqlite_temp_master). Most connections never open it; an open saves two statements.
        self.temp_bounds: str | None = None

    def install(self, conn: apsw.Connection) -> None:
        conn.authorizer = self.authorize
        conn.cursor_factory = partial(_Cursor, sandbox=self)
        self._conn = weakref.ref(conn)
        functions.install(conn)

    def bound_temp(self, conn: apsw.Connection) -> None:
        """Run `temp_bounds` now, once (the server's own statements, past the authorizer).
        Raises what SQLite raises (e.g. an interrupt at the statement's deadline); the bounds
        then stay pending, for the next statement to run first."""
        pragmas = self.temp_bounds
        if pragmas is None:
            return
        trusted, self.trusted = self.trusted, True
        try:
            apsw.Cursor(conn).execute(pragmas, can_cache=False).fetchall()
        finally:
            self.trusted = trusted
        self.temp_bounds = None

    def start_statement(self, limit: float | None = None, *, inline: bool = False) -> None:
        """From now on the connection's statements stop after `limit` seconds (default
        `statement_timeout`), with `timed_out` set, until `end_statement`."""
        self.end_statement()
        self.timed_out = False
        self.deadline = time.monotonic() + (self.statement_timeout if limit is None else limit)
        conn = self._conn() if self._conn is not None else None
        if inline and conn is not None:
            conn.set_progress_handler(self.progress, INLINE_STEPS)
            self._inline_run = True
        else:
            self._alarm = self._watchdog.arm(self.deadline, self._expire)

    def end_statement(self) -> None:
        """No more limit (idempotent). Once it returns, no interrupt of the watchdog's comes."""
        self.deadline = float("inf")
        alarm, self._alarm = self._alarm, None
        if alarm is not None:
            self._watchdog.disarm(alarm)
        if self._inline_run:
            self._inline_run = False
            conn = self._conn() if self._conn is not None else None
            if conn is not None:
                conn.set_progress_handler(None)

    def _expire(self) -> None:
        # on the watchdog's thread: sqlite3_interrupt is the one call meant for that
        self.timed_out = True
        conn = self._conn() if self._conn is not None else None
        if conn is not None:
            with contextlib.suppress(apsw.Error):  # closed meanwhile: nothing to stop
                conn.interrupt()

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
        refusal = self._bookkeeping_refusal(action, arg1, arg2)
        if refusal is not None:
            # raised, not returned as SQLITE_DENY: APSW passes it on, so the message says what
            raise BookkeepingRefused(f"not authorized: {refusal}")
        # Every refusal is raised with its reason (SQLITE_DENY would only say `not authorized`).
        if action == apsw.SQLITE_ATTACH:
            raise SandboxRefused(f"not authorized: {_attach_refusal(arg1)}")
        if action == apsw.SQLITE_DETACH:
            raise SandboxRefused(
                "not authorized: DETACH is not allowed: tenant SQL works on its own database only"
            )
        if action == apsw.SQLITE_PRAGMA:
            name = (arg1 or "").lower()
            if name in SESSION_PRAGMAS:
                if arg2 is not None:  # a schema prefix (temp.foreign_keys) sets it all the same
                    self.pragmas_set.add(name)
                return apsw.SQLITE_OK
            verdict = _authorize_pragma(name, arg2)
            if isinstance(verdict, str):
                raise SandboxRefused(f"not authorized: {verdict}")
            return verdict
        if action in _CREATES_TEMP:
            self.temp_created = True
        if action == apsw.SQLITE_FUNCTION:
            denied = _DENIED_FUNCTIONS.get((arg2 or "").lower())
            if denied is not None:
                raise SandboxRefused(f"not authorized: {denied}")
        return apsw.SQLITE_OK

    @contextlib.contextmanager
    def permit(self, prefix: str) -> Iterator[None]:
        """Let sandboxed statements use bookkeeping names starting with `prefix` meanwhile: the
        server's own schema work (a table rebuild's scratch table), never tenant SQL."""
        if not prefix.lower().startswith(BOOKKEEPING_PREFIX):
            raise ValueError(f"{prefix!r} is not a bookkeeping name")
        self.permitted = prefix.lower()
        try:
            yield
        finally:
            self.permitted = None

    def _bookkeeping_refusal(self, action: int, arg1: str | None, arg2: str | None) -> str | None:
        verb = _TO_NAMED.get(action)
        if verb is not None and self._reserved(arg1):
            return f"{arg1} is server bookkeeping: tenant SQL may read it, not {verb} it"
        kind = _CREATES.get(action)
        if kind is not None and self._reserved(arg1):
            return f"{arg1} is a server bookkeeping name: tenant SQL may not create {kind} of that name"
        verb = _TO_TABLE.get(action)
        if verb is not None and self._reserved(arg2):
            return f"{arg2} is server bookkeeping: tenant SQL may read it, not {verb} it"
        if action == apsw.SQLITE_ALTER_TABLE and self.sql is not None:
            # SQLite names the table being altered, never its new name: read that from the text
            target = _renamed_to(self.sql)
            if target is not None and self._reserved(target):
                return f"{target} is a server bookkeeping name: tenant SQL may not rename a table to it"
        return None

    def _reserved(self, name: str | None) -> bool:
        if name is None or not is_bookkeeping(name):
            return False
        return self.permitted is None or not name.lower().startswith(self.permitted)


class _Cursor(apsw.Cursor):
    """Every cursor of a sandboxed connection: notes on the sandbox the SQL text it runs when
    that text mentions a bookkeeping name (for ALTER TABLE ... RENAME TO, see `_renamed_to`)."""

    def __init__(self, connection: apsw.Connection, sandbox: Sandbox) -> None:
        super().__init__(connection)
        self._sandbox = sandbox

    def execute(self, statements: str, *args: Any, **kwargs: Any) -> apsw.Cursor:
        self._note(statements, kwargs)
        return super().execute(statements, *args, **kwargs)

    def executemany(self, statements: str, *args: Any, **kwargs: Any) -> apsw.Cursor:
        self._note(statements, kwargs)
        return super().executemany(statements, *args, **kwargs)

    def _note(self, statements: str, kwargs: dict[str, Any]) -> None:
        if (
            self._sandbox.temp_bounds is not None
            and isinstance(statements, str)
            and _MENTIONS_TEMP.search(statements)
        ):
            self._sandbox.bound_temp(self.connection)
        # Only texts that mention the prefix can rename to it; others are not kept (memory).
        mentions = isinstance(statements, str) and _MENTIONS_BOOKKEEPING.search(statements)
        self._sandbox.sql = statements if mentions else None
        # A cached statement runs again without the authorizer, which notes SESSION_PRAGMAS set
        if isinstance(statements, str) and _MENTIONS_PRAGMA.search(statements):
            kwargs["can_cache"] = False


def is_bookkeeping(name: str) -> bool:
    """Whether `name` is reserved for server bookkeeping (SQLite compares names ignoring ASCII case)."""
    return name[: len(BOOKKEEPING_PREFIX)].lower() == BOOKKEEPING_PREFIX


def _renamed_to(sql: str) -> str | None:
    """The first name some `RENAME TO name` of `sql` gives a table that is a bookkeeping name
    (None if none does). Text-based because the authorizer is never told the new name."""
    before: tuple[str, str] = ("", "")
    for token in tokens(sql):
        if before == ("RENAME", "TO") and token.kind in ("word", "ident", "string"):
            name = token.canonical if token.kind != "string" else token.text[1:-1].replace("''", "'")
            if is_bookkeeping(name):
                return name
        before = (before[1], token.upper)
    return None


def _attach_refusal(filename: str | None) -> str:
    # VACUUM attaches a scratch database of no name, VACUUM INTO its target file
    if not filename:
        return "VACUUM (and ATTACH) is not allowed: tenant SQL works on its own database only"
    return "ATTACH (and VACUUM INTO) is not allowed: tenant SQL works on its own database only"


def _authorize_pragma(name: str, arg: str | None) -> int | str:
    """The authorizer's answer for a pragma, or why it is refused."""
    if name == "database_list":
        # Its rows name the server's file path. IGNORE, not DENY: the statement then lists
        # nothing, and `pragma_database_list` (which runs the pragma inside) still works.
        return apsw.SQLITE_IGNORE
    if name in _PRAGMAS_ANY_ARG or (arg is None and name in _PRAGMAS_READ_ONLY):
        return apsw.SQLITE_OK
    reason = _PRAGMA_REASONS.get(name)
    if name in _PRAGMAS_READ_ONLY:
        return f"PRAGMA {name} may be read, not set: {reason or 'the server manages it'}"
    return f"PRAGMA {name} is not allowed: {reason or _PRAGMA_RULE}"
