"""Executing Hrana requests: one StreamExecutor per HTTP request, on a stream whose tenant handle
the caller has attached (pinned and locked). It takes and gives router.hrana.protocol's typed
values, whatever the encoding (router.hrana.codec_json, router.hrana.codec_protobuf).

Statements run through tenants.execute.run_statement with `allow_tx=True`, so the sandbox,
limits and error mapping are the REST API's; transaction control is what streams are for.
libSQL's `BEGIN [TRANSACTION] READONLY` becomes `BEGIN DEFERRED` with SQLite's query_only on
until the transaction ends. Blocking: call from a worker thread. The request's Budget bounds
the time of its statements together and the bytes of the rows they keep (tenants.budget).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from typing import TypeVar

import apsw
import apsw.ext

from router.hrana import protocol
from router.hrana.errors import (
    ArgsBothPositionalAndNamed,
    SqlExists,
    SqlManyStatements,
    SqlNoStatement,
    SqlNotFound,
    SqlStoreTooLarge,
    SqlStoreTooMany,
    StreamClosed,
)
from router.hrana.protocol import (
    Batch,
    Col,
    Cond,
    CursorEntry,
    DescribeResult,
    Error,
    Outcome,
    Request,
    Response,
    RowEntry,
    StepBegin,
    StepError,
    Stmt,
    StreamResult,
)
from router.hrana.sqltext import is_begin_readonly
from router.hrana.streams import Stream
from tenants.budget import Budget, Encoding, drain
from tenants.config import DbConfig
from tenants.errors import NotAuthorizedSql, SqlfleetError, TenantUnavailable
from tenants.execute import (
    Params,
    RowSink,
    Statement,
    Value,
    check_sql_length,
    map_sqlite_error,
    run_statement,
)
from tenants.sqllex import split_statements, tokens

MAX_STORED_SQL = 50
T = TypeVar("T")


# What Hrana's JSON adds to a value ({"type":"integer","value":"..."}, a comma) and to a row
# (its brackets, or a cursor's {"type":"row","row":[...]} line): see tenants.budget.
HRANA = Encoding(per_value=32, per_row=24)

Steps = Generator[None, None, T]
_RUNS_SQL = frozenset({"execute", "batch", "sequence", "describe"})


class StreamExecutor:
    """The requests of one pipeline on `stream`. `readonly` is the caller's access level;
    `frozen` means the tenant takes no writes for now (a write is TenantUnavailable, as in REST);
    `budget` is the HTTP request's (its deadline and result bytes span all its requests).

    The `*_steps` methods are generators that yield between statements (router.scheduler may
    move the work to another thread there) and return what the plain method returns."""

    def __init__(
        self,
        stream: Stream,
        config: DbConfig,
        readonly: bool,
        frozen: bool = False,
        budget: Budget | None = None,
    ) -> None:
        handle = stream.handle
        assert handle is not None and handle.conn is not None and handle.sandbox is not None
        self.stream = stream
        self.handle = handle
        self.conn: apsw.Connection = handle.conn
        self.config = config
        self.readonly = readonly
        self.frozen = frozen
        self.budget = budget

    def results(self, requests: Sequence[Request | SqlfleetError]) -> Steps[list[StreamResult]]:
        """The StreamResult of each request of a pipeline. Once the budget's time is up, the
        requests that would run SQL get an error result (REQUEST_TIME_LIMIT) and do not run;
        the others (close, store_sql, ...) still do, so the stream's state stays as the client
        expects."""
        out = []
        for index, request in enumerate(requests):
            if index:
                yield
            out.append((yield from self.result_steps(request)))
        return out

    def result(self, request: Request | SqlfleetError) -> StreamResult:
        """The StreamResult of one request: its response, or its error."""
        return drain(self.result_steps(request))

    def result_steps(self, request: Request | SqlfleetError) -> Steps[StreamResult]:
        try:
            if isinstance(request, SqlfleetError):
                raise request
            return (yield from self.respond_steps(request))
        except SqlfleetError as exc:
            return Error.of(exc)

    def respond(self, request: Request) -> Response:
        """The StreamResponse of one request. Raises SqlfleetError."""
        return drain(self.respond_steps(request))

    def respond_steps(self, request: Request) -> Steps[Response]:
        kind = request.kind
        if self.stream.closed:
            raise StreamClosed("the stream was closed by an earlier request")
        if kind in _RUNS_SQL and self.budget is not None:
            self.budget.check_time()
        if kind == "close":
            self.stream.closed = True
            return Response(kind)
        if kind == "execute":
            assert request.stmt is not None
            return Response(kind, result=self.execute(request.stmt))
        if kind == "batch":
            assert request.batch is not None
            return Response(kind, batch=(yield from self.batch_steps(request.batch)))
        if kind == "sequence":
            yield from self.sequence_steps(self.sql_text(request.sql, request.sql_id))
            return Response(kind)
        if kind == "describe":
            return Response(kind, describe=self.describe(self.sql_text(request.sql, request.sql_id)))
        if kind == "store_sql":
            assert request.sql is not None and request.sql_id is not None
            self.store_sql(request.sql_id, request.sql)
            return Response(kind)
        if kind == "close_sql":
            self.stream.sqls.pop(request.sql_id or 0, None)
            return Response(kind)
        return Response(kind, is_autocommit=bool(self.conn.get_autocommit()))  # get_autocommit

    # -- statements ------------------------------------------------------------------------------

    def execute(self, stmt: Stmt, sink: RowSink | None = None) -> Outcome:
        """Run one statement (its rows to `sink`, if given). Raises SqlfleetError (SQL errors
        included)."""
        pieces = split_statements(self.sql_text(stmt.sql, stmt.sql_id))
        if not pieces:
            raise SqlNoStatement("the SQL text contains no statement")
        if len(pieces) > 1:
            raise SqlManyStatements("the SQL text contains more than one statement: use `sequence`")
        return self._run(pieces[0], _params(stmt), stmt.want_rows, sink)  # trailing comments dropped

    def batch(self, batch: Batch) -> list[Outcome | None]:
        return drain(self.batch_steps(batch))

    def batch_steps(self, batch: Batch) -> Steps[list[Outcome | None]]:
        """Run the steps whose conditions hold; a failed step does not stop the batch. Once
        the budget's time is up, every remaining step fails with REQUEST_TIME_LIMIT unrun."""
        return self._steps(batch, None)

    def cursor_steps(self, batch: Batch, emit: Callable[[CursorEntry], None]) -> Steps[None]:
        """`batch_steps`, its results as the cursor's entries handed to `emit` as they come
        (rows one by one, never all at once). A step that fails after its step_begin ends with
        a step_error instead of a step_end, as the protocol allows."""
        yield from self._steps(batch, emit)

    def _steps(self, batch: Batch, emit: Callable[[CursorEntry], None] | None) -> Steps[list[Outcome | None]]:
        outcomes: list[Outcome | None] = []
        for index, step in enumerate(batch.steps):
            if index:
                yield
            if step.condition is not None and not self._holds(step.condition, outcomes):
                outcomes.append(None)
                continue
            sink = None if emit is None else _CursorSink(emit, index, step.stmt.want_rows)
            try:
                if self.budget is not None:
                    self.budget.check_time()
                outcome = self.execute(step.stmt, sink)
            except SqlfleetError as exc:
                error = Error.of(exc)
                outcome = Outcome(error=error)
                if emit is not None:
                    emit(StepError(index, error))
            else:
                if emit is not None:
                    assert outcome.result is not None
                    emit(protocol.step_end(outcome.result))
            outcomes.append(outcome)
        return outcomes

    def sequence(self, sql: str) -> None:
        drain(self.sequence_steps(sql))

    def sequence_steps(self, sql: str) -> Steps[None]:
        """Run every statement of `sql`, ignoring rows; stop at the first error (raised)."""
        for index, piece in enumerate(split_statements(sql)):
            if index:
                yield
            self._run(piece, (), want_rows=False)

    def describe(self, sql: str) -> DescribeResult:
        """Parse one statement without running it (the sandbox still judges it)."""
        count = len(split_statements(sql))
        if count != 1:
            error = SqlNoStatement if count == 0 else SqlManyStatements
            raise error(f"describe needs exactly one statement, got {count}")
        sandbox = self.handle.sandbox
        assert sandbox is not None
        # Preparing is bounded by the statement's time limit too: SQLite looks up each named
        # parameter among the earlier ones, so 32k of them take seconds.
        timeout = sandbox.statement_timeout
        sandbox.start_statement(self.budget.statement_limit(timeout) if self.budget is not None else None)
        try:
            info = apsw.ext.query_info(self.conn, sql)
        except apsw.Error as exc:
            raise map_sqlite_error(exc, sandbox) from None
        finally:
            sandbox.end_statement()
        names = info.bindings_names or ()
        return DescribeResult(
            params=_param_names(sql, names),
            cols=[Col(name, decltype) for name, decltype in info.description or ()],
            is_explain=bool(info.is_explain),
            is_readonly=bool(info.is_readonly),
        )

    def store_sql(self, sql_id: int, sql: str) -> None:
        sqls = self.stream.sqls
        if sql_id in sqls:
            raise SqlExists(f"SQL text {sql_id} is already stored: close_sql it first")
        if len(sqls) >= MAX_STORED_SQL:
            raise SqlStoreTooMany(f"a stream stores at most {MAX_STORED_SQL} SQL texts")
        if len(sql) > self.config.max_sql_length:
            raise SqlStoreTooLarge(f"SQL text longer than {self.config.max_sql_length} characters")
        sqls[sql_id] = sql

    def sql_text(self, sql: str | None, sql_id: int | None) -> str:
        if sql is not None:
            check_sql_length(sql, self.config)  # before anything parses it
            return sql
        stored = self.stream.sqls.get(sql_id or 0)
        if stored is None:
            raise SqlNotFound(f"no SQL text stored as {sql_id}")
        return stored

    def _run(self, sql: str, params: Params, want_rows: bool, sink: RowSink | None = None) -> Outcome:
        begins_readonly = is_begin_readonly(sql)
        if begins_readonly:
            sql = "BEGIN DEFERRED"
        started = time.perf_counter()
        assert self.handle.sandbox is not None
        try:
            result = run_statement(
                self.conn,
                self.handle.sandbox,
                self.config,
                Statement(sql, params),
                allow_tx=True,
                budget=self.budget,
                keep_rows=want_rows,
                sink=sink,
            )
        except NotAuthorizedSql as exc:
            if self.frozen and exc.read_only and not self.stream.readonly_tx:
                raise TenantUnavailable(
                    f"tenant {self.handle.tenant_id!r} accepts no writes until its backup catches up"
                ) from None
            raise
        finally:
            self._track_readonly_transaction(begins_readonly)
        return Outcome(result, want_rows=want_rows, duration_ms=(time.perf_counter() - started) * 1000)

    def _track_readonly_transaction(self, began: bool) -> None:
        """query_only on from a successful BEGIN READONLY until the transaction ends, however
        it ends (COMMIT, ROLLBACK, or an error that rolled it back)."""
        in_transaction = not self.conn.get_autocommit()
        if began and in_transaction and not self.stream.readonly_tx:
            self.stream.readonly_tx = True
            self.handle.set_query_only(True)
        elif self.stream.readonly_tx and not in_transaction:
            self.stream.readonly_tx = False
            self.handle.set_query_only(self.readonly or self.frozen)

    def _holds(self, cond: Cond, outcomes: list[Outcome | None]) -> bool:
        kind = cond.kind
        if kind in ("ok", "error"):
            outcome = outcomes[cond.step]
            return outcome is not None and (outcome.error is None) == (kind == "ok")
        if kind == "not":
            return not self._holds(cond.conds[0], outcomes)
        if kind == "and":
            return all(self._holds(c, outcomes) for c in cond.conds)
        if kind == "or":
            return any(self._holds(c, outcomes) for c in cond.conds)
        return bool(self.conn.get_autocommit())  # is_autocommit


class _CursorSink:
    """A cursor step's columns and rows, as entries, to `emit` (rows only if wanted)."""

    def __init__(self, emit: Callable[[CursorEntry], None], step: int, want_rows: bool) -> None:
        self.emit, self.step, self.want_rows = emit, step, want_rows

    def columns(self, names: list[str], decltypes: list[str | None]) -> None:
        self.emit(StepBegin(self.step, [Col(n, d) for n, d in zip(names, decltypes, strict=True)]))

    def row(self, values: tuple[Value, ...]) -> None:
        if self.want_rows:
            self.emit(RowEntry(values))


def _params(stmt: Stmt) -> Params:
    if stmt.args and stmt.named_args:
        raise ArgsBothPositionalAndNamed("send either positional or named arguments, not both")
    return stmt.named_args if stmt.named_args else stmt.args


def _param_names(sql: str, names: Sequence[str | None]) -> list[str | None]:
    """APSW reports parameter names without their prefix; the protocol wants it back. Read
    off the statement's tokens in one pass (a search per name would be |names| x |sql|)."""
    prefixes: dict[str, str] = {}
    for token in tokens(sql):
        if token.kind == "param" and token.text[0] in ":@$":
            prefixes.setdefault(token.text[1:], token.text[0])
    return [None if n is None else f"?{n}" if n.isdigit() else f"{prefixes.get(n, ':')}{n}" for n in names]
