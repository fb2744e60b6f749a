"""Schema work on one open connection: internal statements, migration scripts, template ATTACH.

Internal statements (bookkeeping, pragmas, ATTACH of a template) run with the sandbox's
`trusted` flag and are never cached, so tenant SQL can neither run nor replay them; they name
what they read by schema (`main.`), so no TEMP object of the tenant's can stand in for it.
Migration SQL runs under the tenant's own sandbox rules. Every statement, internal or not, is
bounded by the session's deadline (`timeout` seconds each, the migration_timeout setting). A
session is used by one thread at a time: the caller holds the tenant's lease.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import apsw

from schema_sync.errors import InternalTimeout, MigrationFailed
from tenants.errors import TenantBusy
from tenants.sandbox import Sandbox
from tenants.sqllex import TRANSACTION_CONTROL, is_trivia, leading_keyword

_REFUSED = TRANSACTION_CONTROL | {"VACUUM"}  # VACUUM cannot run inside the caller's transaction


class SchemaSession:
    """Schema work on `conn` (a tenant's or a template's): `internal` statements, migration
    `script`s bounded by `timeout` seconds, template `attached`, one `schema_transaction`."""

    def __init__(self, conn: apsw.Connection, sandbox: Sandbox | None = None, timeout: float = 60.0) -> None:
        self.conn = conn
        self.sandbox = sandbox
        self.timeout = timeout
        self._attached = 0

    def internal(self, sql: str, bindings: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run server-owned SQL with the sandbox lifted, within the deadline; all rows of all
        statements. Raises InternalTimeout past the deadline, apsw.Error as SQLite reports."""
        # The sandbox lets a `trusted` statement through whatever it does, so its authorizer is
        # off meanwhile and the cursor a plain one: each authorizer call is a Python callback
        # from inside SQLite (GIL and all), dozens per tenant in a rollout or a catch-up check.
        # (Setting the authorizer back marks cached statements for a re-prepare, which passes
        # it again: nothing prepared meanwhile escapes it; internal SQL is never cached.)
        cursor = apsw.Cursor(self.conn)
        authorizer = self.conn.authorizer
        with self._deadline():
            if self.sandbox is not None:
                self.sandbox.trusted = True
            self.conn.authorizer = None
            try:
                return list(cursor.execute(sql, tuple(bindings), can_cache=False))
            except apsw.InterruptError:
                if self._timed_out():
                    raise InternalTimeout(
                        f"a server-internal statement took longer than {self.timeout:g} s"
                    ) from None
                raise
            finally:
                self.conn.authorizer = authorizer
                if self.sandbox is not None:
                    self.sandbox.trusted = False
                cursor.close(force=True)

    def query(self, sql: str, bindings: Sequence[Any]) -> list[tuple[Any, ...]]:
        """`internal`, in the shape `schema.read_schema` wants."""
        return self.internal(sql, bindings)

    def script(self, sql: str, where: str) -> None:
        """Run a migration's statements, sandboxed and within the deadline. Transaction control
        is refused: the caller owns the transaction. Raises MigrationFailed naming `where`."""
        if is_trivia(sql):
            return
        cursor = self.conn.cursor()
        rejected: list[str] = []

        def trace(_cursor: apsw.Cursor, statement: str, _bindings: object) -> bool:
            if leading_keyword(statement) in _REFUSED:
                rejected.append(statement.strip()[:60])
                return False
            return True

        cursor.exec_trace = trace
        try:
            with self._deadline():
                for _ in cursor.execute(sql, can_cache=False):
                    pass  # a statement returning rows pauses there: drain it so the rest runs
        except apsw.ExecTraceAbort:
            raise MigrationFailed(f"{where}: transaction control is not allowed ({rejected[0]})") from None
        except apsw.Error as exc:
            raise MigrationFailed(f"{where}: {self._describe(exc)}") from None
        finally:
            cursor.close(force=True)

    @contextmanager
    def scratch_names(self, prefix: str) -> Iterator[None]:
        """Let migration statements use bookkeeping names starting with `prefix` meanwhile (a
        table rebuild's scratch table): tenant SQL never may (see tenants.sandbox)."""
        if self.sandbox is None:
            yield
            return
        with self.sandbox.permit(prefix):
            yield

    @contextmanager
    def _deadline(self) -> Iterator[None]:
        if self.sandbox is None:
            yield
            return
        self.sandbox.start_statement(self.timeout)
        try:
            yield
        finally:
            self.sandbox.end_statement()

    def _timed_out(self) -> bool:
        return self.sandbox is not None and self.sandbox.timed_out

    def _describe(self, exc: apsw.Error) -> str:
        message = str(exc).removeprefix(f"{type(exc).__name__}: ")
        if isinstance(exc, apsw.InterruptError) and self._timed_out():
            return f"took longer than {self.timeout:g} s"
        return message

    @contextmanager
    def attached(self, path: Path, alias: str) -> Iterator[str]:
        """ATTACH `path` read-only (and immutable: templates are replaced, never written in
        place) as `alias`, lifting SQLITE_LIMIT_ATTACHED just for it; DETACH on the way out.
        The caller must not hold a transaction open across the exit (SQLite cannot detach
        a database a transaction has read)."""
        uri = "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=ro&immutable=1"
        self._attached += 1
        self.conn.limit(apsw.SQLITE_LIMIT_ATTACHED, self._attached)
        try:
            self.internal("ATTACH ? AS " + _ident(alias), (uri,))
            try:
                yield alias
            finally:
                self.internal("DETACH " + _ident(alias))
        finally:
            self._attached -= 1
            self.conn.limit(apsw.SQLITE_LIMIT_ATTACHED, self._attached)

    @property
    def in_transaction(self) -> bool:
        return not self.conn.get_autocommit()

    @contextmanager
    def schema_transaction(self, dry_run: bool = False, rebuilds: bool = True) -> Iterator[None]:
        """One transaction for a schema change. With `rebuilds` (the change may drop or rebuild
        tables), as lang_altertable.html prescribes: foreign keys off around it (the pragma
        cannot change inside a transaction, and with them on a DROP TABLE would cascade), then
        `PRAGMA foreign_key_check` before the commit. Without, foreign keys stay enforced as
        each statement runs. Rolled back on any error, and always when `dry_run`.
        Raises TenantBusy if a transaction is already open (an interactive stream),
        MigrationFailed on foreign key violations."""
        if self.in_transaction:
            raise TenantBusy("the tenant has a transaction open: try again when it ends")
        lifted = rebuilds and bool(self.internal("PRAGMA foreign_keys")[0][0])
        if lifted:
            self.internal("PRAGMA foreign_keys=OFF")
        try:
            self.internal("BEGIN IMMEDIATE")
            try:
                yield
                if lifted:
                    self._check_foreign_keys()
                self._end(dry_run)
            except BaseException:
                if self.in_transaction:
                    self.internal("ROLLBACK")
                raise
        finally:
            if lifted:
                self.internal("PRAGMA foreign_keys=ON")

    def _end(self, dry_run: bool) -> None:
        try:
            self.internal("ROLLBACK" if dry_run else "COMMIT")
        except apsw.ConstraintError as exc:  # a deferred foreign key, checked at commit
            raise MigrationFailed(f"commit refused: {self._describe(exc)}") from None

    def _check_foreign_keys(self) -> None:
        violations = self.internal("PRAGMA foreign_key_check")
        if violations:
            shown = "; ".join(f"{t} row {r} -> {p}" for t, r, p, _ in violations[:5])
            raise MigrationFailed(f"{len(violations)} foreign key violation(s): {shown}")


def _ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"bad alias {name!r}")
    return name
