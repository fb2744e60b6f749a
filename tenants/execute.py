"""Running tenant statements on a leased connection: bindings, limits, results, error mapping.

Values cross this boundary as plain Python (None, int, float, str, bytes); the router owns
their JSON encodings. Every function here expects the caller to hold the connection's lease.
A request's Budget (tenants.budget), when given, bounds the time of each statement by the
request's deadline and charges the rows kept against the request's result bytes.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import apsw

from metrics.instruments import DISK_FULL, LIMIT_REFUSALS, STATEMENT_SECONDS
from tenants.budget import Budget, drain
from tenants.config import DbConfig
from tenants.errors import (
    DISK_FULL_ERRNOS,
    BadRequest,
    InsufficientStorage,
    NotAuthorizedSql,
    NotInline,
    SqlError,
    SqlfleetError,
    SqlTooLong,
    StatementTimeout,
    TenantCorrupt,
    TenantUnavailable,
    TooLarge,
    storage_full,
)
from tenants.sandbox import Sandbox
from tenants.sqllex import TRANSACTION_CONTROL, is_trivia, leading_keyword, skip_trivia

Value = None | int | float | str | bytes
_SIZED = (str, bytes)  # values a result's size counts by their length (a number counts 8)
Params = Sequence[Value] | Mapping[str, Value]


@dataclass(frozen=True)
class Statement:
    sql: str
    params: Params = ()


@dataclass
class QueryResult:
    columns: list[str]
    decltypes: list[str | None]
    rows: list[tuple[Value, ...]] = field(default_factory=list)
    rows_affected: int = 0
    last_insert_rowid: int | None = None
    size: int = 0  # the rows' bytes, roughly (strings and blobs by length, 8 a number)


class RowSink(Protocol):
    """Where a statement's rows go when they are not kept in its QueryResult (a stream)."""

    def columns(self, names: list[str], decltypes: list[str | None]) -> None: ...

    def row(self, values: tuple[Value, ...]) -> None: ...


def check_sql_length(sql: str, config: DbConfig) -> None:
    """Raise SqlTooLong if `sql` is longer than `config.max_sql_length` characters. Call it
    before lexing tenant SQL: SQLite's own limit (in bytes) applies only once it prepares."""
    if len(sql) > config.max_sql_length:
        raise SqlTooLong(f"SQL text is longer than {config.max_sql_length} characters")


def run_statement(
    conn: apsw.Connection,
    sandbox: Sandbox,
    config: DbConfig,
    stmt: Statement,
    *,
    allow_tx: bool = False,
    inline_budget: float | None = None,
    budget: Budget | None = None,
    keep_rows: bool = True,
    sink: RowSink | None = None,
    in_batch: bool = False,
) -> QueryResult:
    """Run exactly one statement. Raises BadRequest for empty or multi-statement SQL and for
    transaction control unless `allow_tx` (a protocol with transactions of its own: Hrana),
    saying what to do instead where the statement came from (/query, or with `in_batch` an
    entry of a REST batch, or a Hrana step); SqlError, NotAuthorizedSql, StatementTimeout,
    TooLarge or TenantCorrupt as SQLite reports; SqlTooLong (a TooLarge) before any parsing;
    with a `budget`, RequestTimeLimit when its deadline stops the statement, ResultsTooLarge or
    ServerBusy when the rows do not fit. Rows go to `sink` if given, else into the result
    unless not `keep_rows` (then they are read and dropped, and never charged).
    `inline_budget`: run on the caller's thread for at most that long, read-only, else raise
    NotInline having changed nothing (tenants.inline decides what may try: `run_inline`)."""
    if inline_budget is not None and keep_rows and sink is None and budget is None:
        return run_inline(conn, sandbox, config, stmt, inline_budget)
    check_sql_length(stmt.sql, config)
    if is_trivia(stmt.sql):
        raise BadRequest("empty SQL: send exactly one statement")
    limit = inline_budget
    request_bound = False
    if budget is not None and inline_budget is None:
        limit = budget.statement_limit(sandbox.statement_timeout)
        request_bound = limit < sandbox.statement_timeout
    before = conn.total_changes()
    charged = budget.used if budget is not None else 0
    cursor = conn.cursor()
    in_transaction = not conn.get_autocommit()
    # a transaction's end (a COMMIT; a ROLLBACK is told as one too) is a write only if the
    # transaction holds one of `main` (perhaps of an earlier request on the same stream)
    held_write = in_transaction and conn.txn_state("main") == apsw.SQLITE_TXN_WRITE
    # inside a transaction, whether a statement wrote `main` is known once it ran (a TEMP-only
    # write is none) unless its rows may leave while it runs (a sink): then, like a statement
    # in autocommit, it is marked before it runs when it may write at all
    deferred = in_transaction and sink is None
    tracer = _Tracer(
        stmt.sql, allow_tx, readonly_only=inline_budget is not None, budget=None if deferred else budget
    )
    cursor.exec_trace = tracer
    sandbox.start_statement(limit, inline=inline_budget is not None)
    try:
        started = time.perf_counter()
        cursor.execute(stmt.sql, bindings(stmt.params))
        columns, decltypes = _describe(cursor)
        if sink is not None:
            sink.columns(columns, decltypes)
        rows, size = _fetch(cursor, config, budget if keep_rows else None, sink, keep_rows)
        STATEMENT_SECONDS.observe(time.perf_counter() - started)
    except apsw.ExecTraceAbort:
        if tracer.wrote:
            raise NotInline from None
        raise _rejection(stmt.sql, allow_tx, in_batch) from None
    except apsw.InterruptError as exc:
        if inline_budget is not None and sandbox.timed_out:
            raise NotInline from None
        if request_bound and budget is not None and sandbox.timed_out:
            raise budget.expired() from None
        raise map_sqlite_error(exc, sandbox, conn) from None
    except apsw.Error as exc:
        raise map_sqlite_error(exc, sandbox, conn) from None
    except (KeyError, ValueError, OverflowError, TypeError) as exc:
        raise _value_error(exc) from None
    finally:
        sandbox.end_statement()
        cursor.close(force=True)
        if budget is not None and _wrote_main(conn, held_write, deferred and tracer.may_write):
            budget.wrote = True
        if budget is not None and sys.exc_info()[0] is not None:
            budget.rewind(charged)  # failed: its rows are not kept
    changed = conn.total_changes() != before
    return QueryResult(
        columns=columns,
        decltypes=decltypes,
        rows=rows,
        rows_affected=conn.changes() if changed else 0,
        last_insert_rowid=conn.last_insert_rowid() if changed else None,
        size=size,
    )


def run_inline(
    conn: apsw.Connection, sandbox: Sandbox, config: DbConfig, stmt: Statement, seconds: float
) -> QueryResult:
    """`run_statement(..., inline_budget=seconds)` for a text the connection's InlinePlans
    allow (tenants.inline), on the event loop's hot path, so without what that verdict makes
    moot: the text already ran once through `run_statement`'s checks (one statement, no
    transaction control, not empty) and was judged from its program (only bounded opcodes; no
    AutoCommit or Savepoint, so no transaction control either). A plain APSW cursor, not the
    sandbox's: what that one notes is for ALTER TABLE and pragma texts, never judged safe.
    What the verdict cannot vouch for is still checked as it runs: read-only (refused before
    it writes: the exec tracer), one statement, the time budget, the result limits. Raises
    NotInline having changed nothing when any of those fails or time runs out; SqlError and
    the like for what SQLite reports (the caller may just run it in a worker thread)."""
    check_sql_length(stmt.sql, config)
    cursor = apsw.Cursor(conn)
    cursor.exec_trace = _InlineTracer(stmt.sql)
    sandbox.start_statement(seconds, inline=True)
    try:
        started = time.perf_counter()
        cursor.execute(stmt.sql, bindings(stmt.params))
        columns, decltypes = _describe(cursor)
        rows, size = _fetch(cursor, config, None, None, True)
        STATEMENT_SECONDS.observe(time.perf_counter() - started)
    except apsw.ExecTraceAbort:
        raise NotInline from None
    except apsw.InterruptError as exc:
        if sandbox.timed_out:
            raise NotInline from None
        raise map_sqlite_error(exc, sandbox, conn) from None
    except apsw.Error as exc:
        raise map_sqlite_error(exc, sandbox, conn) from None
    except (KeyError, ValueError, OverflowError, TypeError) as exc:
        raise _value_error(exc) from None
    finally:
        sandbox.end_statement()
        cursor.close(force=True)
    return QueryResult(columns, decltypes, rows, 0, None, size)  # read-only: nothing changed


def run_batch(
    conn: apsw.Connection,
    sandbox: Sandbox,
    config: DbConfig,
    stmts: Sequence[Statement],
    budget: Budget | None = None,
) -> list[QueryResult]:
    """`batch_steps` run to its end."""
    return drain(batch_steps(conn, sandbox, config, stmts, budget))


def batch_steps(
    conn: apsw.Connection,
    sandbox: Sandbox,
    config: DbConfig,
    stmts: Sequence[Statement],
    budget: Budget | None = None,
) -> Generator[None, None, list[QueryResult]]:
    """Run all statements in one transaction: all commit or none does. A failure is re-raised
    with `index` naming the failing statement; a failed COMMIT (a deferred foreign key, say)
    is a SqlfleetError without an index; a `budget` out of time is RequestTimeLimit. Yields
    between statements (the caller may pause there, even move to another thread); closing
    the generator rolls back."""
    _control(conn, sandbox, "BEGIN")
    results: list[QueryResult] = []
    try:
        for index, stmt in enumerate(stmts):
            if index:
                yield
            try:
                if budget is not None:
                    budget.check_time()
                results.append(run_statement(conn, sandbox, config, stmt, budget=budget, in_batch=True))
            except SqlfleetError as exc:
                exc.detail["index"] = index
                exc.message = f"statement {index}: {exc.message}"
                raise
        _control(conn, sandbox, "COMMIT")
    except BaseException:
        if not conn.get_autocommit():
            conn.execute("ROLLBACK")
        raise
    return results


def _wrote_main(conn: apsw.Connection, held_write: bool, may_have_written: bool) -> bool:
    """Whether a statement just run wrote or committed `main`: it ended a transaction that
    held a write, or it may write (inside a transaction, its mark deferred) and the transaction
    now holds one."""
    if conn.get_autocommit():
        return held_write
    return may_have_written and conn.txn_state("main") == apsw.SQLITE_TXN_WRITE


def _control(conn: apsw.Connection, sandbox: Sandbox, sql: str) -> None:
    try:
        conn.execute(sql)
    except apsw.Error as exc:
        error = map_sqlite_error(exc, sandbox, conn)
        error.message = f"{sql.lower()} failed: {error.message}"
        raise error from None


class _Tracer:
    """APSW's exec tracer for one run: refuses a second statement, transaction control unless
    allowed, and, for an inline run, any statement that would write (noted in `wrote`). A
    statement that may write (noted in `may_write`) marks the request's `budget`, if given,
    before it runs (its rows may be sent while it still runs)."""

    def __init__(self, sql: str, allow_tx: bool, readonly_only: bool, budget: Budget | None = None) -> None:
        self.sql, self.allow_tx, self.readonly_only = sql, allow_tx, readonly_only
        self.budget = budget
        self.calls = 0
        self.wrote = False
        self.may_write = False

    def __call__(self, cursor: apsw.Cursor, first: str, bindings: object) -> bool:
        self.calls += 1
        if not cursor.is_readonly:
            self.may_write = True
            if self.budget is not None:
                self.budget.wrote = True
        if self.readonly_only and not cursor.is_readonly:
            self.wrote = True
            return False
        if self.calls > 1:
            # APSW traces a trailing comment as a statement of its own; the first call already
            # refused anything after the first statement that is not trivia.
            return is_trivia(first)
        # APSW hands us the first statement of `sql`; anything after it must be trivia.
        sql = self.sql
        if len(first) < len(sql) and skip_trivia(sql, len(first)) < len(sql):
            return False
        return self.allow_tx or leading_keyword(first) not in TRANSACTION_CONTROL


class _InlineTracer:
    """`_Tracer` for `run_inline`: one statement, read-only."""

    __slots__ = ("calls", "sql")

    def __init__(self, sql: str) -> None:
        self.sql = sql
        self.calls = 0

    def __call__(self, cursor: apsw.Cursor, first: str, bindings: object) -> bool:
        self.calls += 1
        if not cursor.is_readonly:
            return False
        if self.calls > 1:
            return is_trivia(first)  # a trailing comment is traced as a statement of its own
        sql = self.sql
        return len(first) >= len(sql) or skip_trivia(sql, len(first)) >= len(sql)


def _rejection(sql: str, allow_tx: bool, in_batch: bool) -> BadRequest:
    """What the exec tracer refused, and what to do instead where the statement came from."""
    keyword = leading_keyword(sql)
    if not allow_tx and keyword in TRANSACTION_CONTROL:
        if in_batch:
            return BadRequest(
                f"{keyword} is not allowed in a batch: its statements already run in one "
                "transaction (all or nothing), so leave out transaction control (BEGIN, COMMIT, "
                "ROLLBACK, SAVEPOINT, RELEASE)"
            )
        return BadRequest(
            f"{keyword} is not allowed in /query: send the statements together to /batch (one "
            "transaction, all or nothing), or use Hrana (a libSQL client) for an interactive "
            "transaction"
        )
    if in_batch:
        return BadRequest("exactly one statement per entry of a batch: give each statement its own entry")
    if allow_tx:
        return BadRequest("exactly one statement per step: send each statement as a step of its own")
    return BadRequest("exactly one statement per query: use /batch for several")


def bindings(params: Params) -> Any:
    """`params` as APSW takes them (named ones without their ':', '@' or '$')."""
    if isinstance(params, Mapping):
        return {k.lstrip(":@$"): v for k, v in params.items()}
    return tuple(params)


def _describe(cursor: apsw.Cursor) -> tuple[list[str], list[str | None]]:
    try:
        description = cursor.get_description()
    except apsw.ExecutionCompleteError:
        return [], []
    return [d[0] for d in description], [d[1] for d in description]


def _fetch(
    cursor: apsw.Cursor, config: DbConfig, budget: Budget | None, sink: RowSink | None, keep: bool
) -> tuple[list[tuple[Value, ...]], int]:
    rows: list[tuple[Value, ...]] = []
    size = 0
    for count, row in enumerate(cursor, 1):
        for v in row:
            size += len(v) if isinstance(v, _SIZED) else 8
        if count > config.max_result_rows:
            raise TooLarge(f"result has more than {config.max_result_rows} rows: add a LIMIT")
        if size > config.max_result_bytes:
            raise TooLarge(f"result is larger than {config.max_result_bytes} bytes: add a LIMIT")
        if budget is not None:
            budget.charge(row)
        if sink is not None:
            sink.row(row)
        elif keep:
            rows.append(row)
    return rows, size


def _disk_full(exc: apsw.Error, conn: apsw.Connection) -> bool:
    """SQLITE_FULL while the data or temporary file system has no room (SQLite says the same
    for a database at its max_page_count: then there is room, and it is TooLarge), or an I/O
    error whose errno is ENOSPC or EDQUOT."""
    if isinstance(exc, apsw.FullError):
        return storage_full(Path(conn.filename).parent, Path(tempfile.gettempdir()))
    return isinstance(exc, apsw.IOError) and conn.system_errno in DISK_FULL_ERRNOS


def _value_error(exc: Exception) -> SqlfleetError:
    """What APSW reports as Python errors: a named parameter without a value (KeyError), an
    int beyond 64 bits (OverflowError), a NUL or lone surrogate in SQL or text (ValueError),
    a parameter of a type SQLite cannot store (TypeError), and stored text that is not UTF-8
    (UnicodeDecodeError, while reading rows)."""
    if isinstance(exc, KeyError):
        return BadRequest(f"bad params: no value for named parameter {exc.args[0]!r}")
    if isinstance(exc, UnicodeDecodeError):
        return SqlError("a text value is not valid UTF-8: select it as CAST(... AS BLOB)")
    return BadRequest(f"bad SQL or params: {exc}")


def map_sqlite_error(exc: apsw.Error, sandbox: Sandbox, conn: apsw.Connection | None = None) -> SqlfleetError:
    """The client-facing error for what SQLite raised on `conn` (given, a full disk is told from
    the database's own size limit)."""
    message = str(exc).removeprefix(f"{type(exc).__name__}: ")
    if conn is not None and _disk_full(exc, conn):
        DISK_FULL.labels("request").inc()
        return InsufficientStorage(
            "the server's disk is full: nothing was written; retry once an operator has freed space"
        )
    if isinstance(exc, apsw.InterruptError) and sandbox.timed_out:
        LIMIT_REFUSALS.labels("statement_time").inc()
        return StatementTimeout(f"statement exceeded the {sandbox.statement_timeout:g} s time limit")
    if isinstance(exc, apsw.AuthError) or message.startswith("not authorized"):
        # the sandbox's refusals say what and why after SQLite's own "not authorized: "
        return NotAuthorizedSql(f"not allowed by the sandbox: {message.removeprefix('not authorized: ')}")
    if isinstance(exc, apsw.ReadOnlyError):
        refusal = NotAuthorizedSql("read-only access: this token cannot write")
        refusal.read_only = True
        return refusal
    if isinstance(exc, apsw.FullError):
        return TooLarge("database size limit reached")
    if isinstance(exc, apsw.TooBigError):
        return TooLarge(f"too big: {message}")
    if isinstance(exc, apsw.CorruptError | apsw.NotADBError):
        return TenantCorrupt(f"tenant database is corrupt: {message}")
    if isinstance(exc, apsw.IOError | apsw.CantOpenError | apsw.NoMemError):
        return TenantUnavailable(f"tenant database unavailable: {message}")
    if isinstance(exc, apsw.BindingsError):
        return BadRequest(f"bad params: {message}")
    return SqlError(message)
