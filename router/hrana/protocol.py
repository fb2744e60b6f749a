"""Hrana's messages as typed values (HRANA_3_SPEC.md): one model, two encodings.

router.hrana.codec_json and router.hrana.codec_protobuf decode requests into these values and
encode these results; router.hrana.executor alone decides what a request means. The checks that
do not depend on the encoding live here (32-bit ids, `sql` xor `sql_id`, conditions that look
only at earlier steps, nesting depth, the number of steps), so both encodings fail alike, with a
ProtocolError whose message names the bad part (`requests[2].stmt.args[0]`).

Requests: over HTTP a pipeline carries `Request`s; over WebSocket a `ClientMsg` is a `Hello` or
a `WsRequest`, whose stream work is the same `Request`. Results: a `Response` or an `Error` per
request; `CursorEntry`s for cursors; `ServerMsg`s over WebSocket.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from router.hrana.errors import ProtocolError, hrana_code
from tenants.errors import SqlfleetError
from tenants.execute import QueryResult, Value
from tenants.sqllex import is_trivia, tokens

INT32 = (-(1 << 31), (1 << 31) - 1)
UINT32_MAX = (1 << 32) - 1
MAX_COND_DEPTH = 64
# `max_batch_statements` counts a batch's statements, not the steps the official clients wrap
# them in: `batch()` adds BEGIN / COMMIT / ROLLBACK steps, `migrate()` also a
# `PRAGMA foreign_keys=off` before and `=on` after. So a batch may hold that many of those
# wrapper steps besides its N statements, and never more than N + WRAPPER_STEPS steps in all.
WRAPPER_STEPS = 5
_TX_WORDS = {"BEGIN", "COMMIT", "END", "ROLLBACK"}
_BEGIN_MODES = {"DEFERRED", "IMMEDIATE", "EXCLUSIVE", "READONLY"}


class InvalidMessage(ProtocolError):
    """Bytes that are not a message of the encoding at all (not JSON / not protobuf, or not
    the message type expected): over WebSocket a close with 1007, not a response_error."""


class InvalidRequest(ProtocolError):
    """A WebSocket request message whose envelope decoded but whose request did not: the
    reply can be a response_error for `request_id`."""

    def __init__(self, message: str, request_id: int) -> None:
        super().__init__(message)
        self.request_id = request_id


# -- requests ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stmt:
    sql: str | None
    sql_id: int | None
    args: list[Value]
    named_args: dict[str, Value]
    want_rows: bool = True


@dataclass(frozen=True)
class Cond:
    """A batch condition: `ok`/`error` look at `step`, `not`/`and`/`or` combine `conds`,
    `is_autocommit` asks the connection."""

    kind: str
    step: int = 0
    conds: tuple[Cond, ...] = ()


@dataclass(frozen=True)
class Step:
    stmt: Stmt
    condition: Cond | None = None


@dataclass(frozen=True)
class Batch:
    steps: list[Step]


@dataclass(frozen=True)
class Request:
    """One stream request. `kind` is the protocol's `type` (REQUEST_KINDS); the other fields are
    set for the kinds that carry them (execute: stmt; batch: batch; sequence/describe: sql or
    sql_id; store_sql: sql_id and sql; close_sql: sql_id)."""

    kind: str
    stmt: Stmt | None = None
    batch: Batch | None = None
    sql: str | None = None
    sql_id: int | None = None


REQUEST_KINDS = frozenset(
    {"close", "execute", "batch", "sequence", "describe", "store_sql", "close_sql", "get_autocommit"}
)


@dataclass(frozen=True)
class PipelineRequest:
    """The body of `POST v2|v3|v3-protobuf/pipeline`. A request that did not decode is the
    ProtocolError in its slot: it is answered there, the others still run."""

    baton: str | None
    requests: list[Request | ProtocolError]


@dataclass(frozen=True)
class CursorRequest:
    """The body of `POST v3|v3-protobuf/cursor`."""

    baton: str | None
    batch: Batch


@dataclass(frozen=True)
class Hello:
    """A WebSocket `hello` (also a re-sent one): the JWT, if any."""

    jwt: str | None


WS_REQUEST_KINDS = frozenset(
    {
        "open_stream",
        "close_stream",
        "execute",
        "batch",
        "open_cursor",
        "close_cursor",
        "fetch_cursor",
        "sequence",
        "describe",
        "store_sql",
        "close_sql",
        "get_autocommit",
    }
)


@dataclass(frozen=True)
class WsRequest:
    """A WebSocket `request` message. `kind` is one of WS_REQUEST_KINDS; per kind:
    - `stream_id`: open_stream, close_stream, execute, batch, open_cursor, sequence, describe,
      get_autocommit;
    - `request`: the stream's work, the very Request an HTTP pipeline carries, of the same kind
      (execute, batch, sequence, describe, get_autocommit), or the socket's stored SQL
      (store_sql: sql_id and sql; close_sql: sql_id);
    - `cursor_id`: open_cursor, close_cursor, fetch_cursor; `batch`: open_cursor;
      `max_count`: fetch_cursor (0..2**32-1)."""

    request_id: int
    kind: str
    stream_id: int = 0
    request: Request | None = None
    cursor_id: int = 0
    batch: Batch | None = None
    max_count: int = 0


ClientMsg = Hello | WsRequest


# -- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Error:
    """The protocol's Error."""

    message: str
    code: str | None = None

    @classmethod
    def of(cls, exc: SqlfleetError) -> Error:
        return cls(exc.public().message, hrana_code(exc))


@dataclass
class Outcome:
    """What one statement produced: a result or an error, and its timing. A StmtResult when
    it has a result."""

    result: QueryResult | None = None
    error: Error | None = None
    want_rows: bool = True
    duration_ms: float = 0.0


@dataclass(frozen=True)
class Col:
    name: str | None
    decltype: str | None


@dataclass(frozen=True)
class DescribeResult:
    params: list[str | None]  # each parameter's name with its prefix (`:a`, `?1`), None if `?`
    cols: list[Col]
    is_explain: bool
    is_readonly: bool


@dataclass(frozen=True)
class StepBegin:
    step: int
    cols: list[Col]


@dataclass(frozen=True)
class StepEnd:
    affected_row_count: int
    last_insert_rowid: int | None


@dataclass(frozen=True)
class StepError:
    step: int
    error: Error


@dataclass(frozen=True)
class RowEntry:
    values: tuple[Value, ...]


@dataclass(frozen=True)
class ErrorEntry:
    """The whole cursor failed after its header was sent: the last entry."""

    error: Error


CursorEntry = StepBegin | StepEnd | StepError | RowEntry | ErrorEntry


@dataclass(frozen=True)
class Response:
    """A request's response. `kind` is the request's kind (an HTTP Request's or a WsRequest's);
    per kind: `result` (execute), `batch` (batch: one Outcome per step, None where skipped),
    `describe` (describe), `is_autocommit` (get_autocommit), `entries` and `done` (fetch_cursor).
    The other kinds carry nothing."""

    kind: str
    result: Outcome | None = None
    batch: list[Outcome | None] | None = None
    describe: DescribeResult | None = None
    is_autocommit: bool = False
    entries: list[CursorEntry] = field(default_factory=list)
    done: bool = False


StreamResult = Response | Error


@dataclass(frozen=True)
class PipelineResponse:
    baton: str | None
    base_url: str | None
    results: list[StreamResult]


@dataclass(frozen=True)
class CursorHeader:
    """The first item of a cursor's body."""

    baton: str | None
    base_url: str | None


@dataclass(frozen=True)
class HelloOk:
    pass


@dataclass(frozen=True)
class HelloError:
    error: Error


@dataclass(frozen=True)
class ResponseOk:
    request_id: int
    response: Response


@dataclass(frozen=True)
class ResponseError:
    request_id: int
    error: Error


ServerMsg = HelloOk | HelloError | ResponseOk | ResponseError


def cols_of(result: QueryResult) -> list[Col]:
    return [Col(n, d) for n, d in zip(result.columns, result.decltypes, strict=True)]


def step_end(result: QueryResult) -> StepEnd:
    """The cursor entry that ends a step that ran."""
    return StepEnd(result.rows_affected, result.last_insert_rowid)


# -- checks both encodings make ------------------------------------------------------------------


def int32(value: int, where: str) -> int:
    if not INT32[0] <= value <= INT32[1]:
        raise ProtocolError(f"{where} must be a 32-bit integer")
    return value


def sql_or_id(sql: str | None, sql_id: int | None, where: str) -> tuple[str | None, int | None]:
    if sql_id is not None:
        int32(sql_id, f"{where}.sql_id")
    if (sql is None) == (sql_id is None):
        raise ProtocolError(f"{where}: exactly one of 'sql' and 'sql_id' is required")
    return sql, sql_id


def arg_name(name: str, where: str) -> str:
    if not name:
        raise ProtocolError(f"{where}.name must be a non-empty string")
    return name


def step_count(count: int, max_statements: int, where: str) -> None:
    """A batch of `count` steps may hold `max_statements` statements (checked before decoding
    the steps; `statement_count` checks them once decoded)."""
    if count > max_statements + WRAPPER_STEPS:
        _too_many_statements(max_statements, where)


def statement_count(steps: list[Step], max_statements: int, where: str) -> None:
    """At most `max_statements` of `steps` are statements other than wrapper steps (see
    WRAPPER_STEPS). A step given by `sql_id` counts as a statement."""
    wrappers = sum(1 for s in steps if s.stmt.sql is not None and is_wrapper_step(s.stmt.sql))
    if len(steps) - wrappers > max_statements:
        _too_many_statements(max_statements, where)


def _too_many_statements(max_statements: int, where: str) -> None:
    raise ProtocolError(
        f"{where}: at most {max_statements} statements per batch (besides up to {WRAPPER_STEPS} "
        "BEGIN/COMMIT/ROLLBACK and PRAGMA foreign_keys steps)"
    )


def is_wrapper_step(sql: str) -> bool:
    """Whether `sql` is alone (but for trivia and one `;`) one of what the clients wrap a
    batch in: BEGIN [mode] [TRANSACTION], COMMIT/END/ROLLBACK [TRANSACTION], or
    PRAGMA foreign_keys = value. Reads at most five tokens."""
    words: list[str] = []
    end = 0
    for token in tokens(sql):
        if token.kind == "semi":
            end = token.end
            break
        if len(words) == 4:
            return False
        words.append(token.upper or token.canonical)
        end = token.end
    if not words or not is_trivia(sql[end:]):
        return False
    first, rest = words[0], words[1:]
    if first == "BEGIN":
        if rest and rest[0] in _BEGIN_MODES:
            rest = rest[1:]
        return rest in ([], ["TRANSACTION"]) or words in (["BEGIN", "TRANSACTION", "READONLY"],)
    if first in _TX_WORDS:
        return rest in ([], ["TRANSACTION"])
    return first == "PRAGMA" and len(rest) == 3 and rest[0].lower() == "foreign_keys" and rest[1] == "="


def request_count(count: int, max_statements: int) -> None:
    if count > max_statements:
        raise ProtocolError(f"at most {max_statements} requests per pipeline")


def cond_step(step: int, index: int, where: str) -> int:
    """`step` as what a condition of step `index` may look at: an earlier step."""
    if not 0 <= step < index:
        raise ProtocolError(f"{where}.step must be the index of an earlier step (0..{index - 1})")
    return step


def cond_depth(depth: int, where: str) -> None:
    if depth > MAX_COND_DEPTH:
        raise ProtocolError(f"{where}: conditions nested deeper than {MAX_COND_DEPTH}")
