"""Executing Hrana requests: one StreamExecutor per HTTP request, on a stream whose tenant handle
the caller has attached (pinned and locked).

Statements run through tenants.execute.run_statement with `allow_tx=True`, so the sandbox,
limits and error mapping are the REST API's; transaction control is what streams are for.
libSQL's `BEGIN [TRANSACTION] READONLY` becomes `BEGIN DEFERRED` with SQLite's query_only on
until the transaction ends. Blocking: call from a worker thread.
"""

from __future__ import annotations

import re
import time
from typing import Any

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
    hrana_error,
)
from router.hrana.protocol import Batch, Cond, Outcome, Request, Stmt
from router.hrana.sqltext import is_begin_readonly
from router.hrana.streams import Stream
from tenants.config import DbConfig
from tenants.errors import NotAuthorizedSql, SqlfleetError, TenantUnavailable
from tenants.execute import Params, Statement, check_sql_length, map_sqlite_error, run_statement
from tenants.sqllex import split_statements

MAX_STORED_SQL = 50


class StreamExecutor:
    """The requests of one pipeline on `stream`. `readonly` is the caller's access level;
    `frozen` means the tenant takes no writes for now (a write is TenantUnavailable, as in REST)."""

    def __init__(self, stream: Stream, config: DbConfig, readonly: bool, frozen: bool = False) -> None:
        handle = stream.handle
        assert handle is not None and handle.conn is not None and handle.sandbox is not None
        self.stream = stream
        self.handle = handle
        self.conn: apsw.Connection = handle.conn
        self.config = config
        self.readonly = readonly
        self.frozen = frozen

    def result(self, request: Request | SqlfleetError) -> dict[str, Any]:
        """The StreamResult of one request: its response, or its error."""
        try:
            if isinstance(request, SqlfleetError):
                raise request
            return {"type": "ok", "response": self.respond(request)}
        except SqlfleetError as exc:
            return {"type": "error", "error": hrana_error(exc)}

    def respond(self, request: Request) -> dict[str, Any]:
        """The StreamResponse of one request. Raises SqlfleetError."""
        kind = request.kind
        if self.stream.closed:
            raise StreamClosed("the stream was closed by an earlier request")
        if kind == "close":
            self.stream.closed = True
            return {"type": kind}
        if kind == "execute":
            assert request.stmt is not None
            return {"type": kind, "result": protocol.stmt_result(self.execute(request.stmt))}
        if kind == "batch":
            assert request.batch is not None
            return {"type": kind, "result": protocol.batch_result(self.batch(request.batch))}
        if kind == "sequence":
            self.sequence(self.sql_text(request.sql, request.sql_id))
            return {"type": kind}
        if kind == "describe":
            return {"type": kind, "result": self.describe(self.sql_text(request.sql, request.sql_id))}
        if kind == "store_sql":
            assert request.sql is not None and request.sql_id is not None
            self.store_sql(request.sql_id, request.sql)
            return {"type": kind}
        if kind == "close_sql":
            self.stream.sqls.pop(request.sql_id or 0, None)
            return {"type": kind}
        return {"type": kind, "is_autocommit": self.conn.get_autocommit()}  # get_autocommit

    # -- statements ------------------------------------------------------------------------------

    def execute(self, stmt: Stmt) -> Outcome:
        """Run one statement. Raises SqlfleetError (SQL errors included)."""
        pieces = split_statements(self.sql_text(stmt.sql, stmt.sql_id))
        if not pieces:
            raise SqlNoStatement("the SQL text contains no statement")
        if len(pieces) > 1:
            raise SqlManyStatements("the SQL text contains more than one statement: use `sequence`")
        return self._run(pieces[0], _params(stmt), stmt.want_rows)  # trailing comments dropped

    def batch(self, batch: Batch) -> list[Outcome | None]:
        """Run the steps whose conditions hold; a failed step does not stop the batch."""
        outcomes: list[Outcome | None] = []
        for step in batch.steps:
            if step.condition is not None and not self._holds(step.condition, outcomes):
                outcomes.append(None)
                continue
            try:
                outcomes.append(self.execute(step.stmt))
            except SqlfleetError as exc:
                outcomes.append(Outcome(error=hrana_error(exc)))
        return outcomes

    def sequence(self, sql: str) -> None:
        """Run every statement of `sql`, ignoring rows; stop at the first error (raised)."""
        for piece in split_statements(sql):
            self._run(piece, (), want_rows=False)

    def describe(self, sql: str) -> dict[str, Any]:
        """Parse one statement without running it (the sandbox still judges it)."""
        count = len(split_statements(sql))
        if count != 1:
            error = SqlNoStatement if count == 0 else SqlManyStatements
            raise error(f"describe needs exactly one statement, got {count}")
        assert self.handle.sandbox is not None
        try:
            info = apsw.ext.query_info(self.conn, sql)
        except apsw.Error as exc:
            raise map_sqlite_error(exc, self.handle.sandbox) from None
        names = info.bindings_names or ()
        return {
            "params": [{"name": _param_name(sql, name)} for name in names],
            "cols": [{"name": name, "decltype": decltype} for name, decltype in info.description or ()],
            "is_explain": bool(info.is_explain),
            "is_readonly": bool(info.is_readonly),
        }

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

    def _run(self, sql: str, params: Params, want_rows: bool) -> Outcome:
        begins_readonly = is_begin_readonly(sql)
        if begins_readonly:
            sql = "BEGIN DEFERRED"
        started = time.perf_counter()
        assert self.handle.sandbox is not None
        try:
            result = run_statement(
                self.conn, self.handle.sandbox, self.config, Statement(sql, params), allow_tx=True
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


def _params(stmt: Stmt) -> Params:
    if stmt.args and stmt.named_args:
        raise ArgsBothPositionalAndNamed("send either positional or named arguments, not both")
    return stmt.named_args if stmt.named_args else stmt.args


def _param_name(sql: str, name: str | None) -> str | None:
    """APSW reports parameter names without their prefix; the protocol wants it back."""
    if name is None:
        return None
    if name.isdigit():
        return f"?{name}"
    found = re.search(rf"([:@$]){re.escape(name)}(?![\w$])", sql)
    return f"{found.group(1) if found else ':'}{name}"
