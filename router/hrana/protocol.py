"""The protocol's structures (HRANA_3_SPEC.md, JSON encoding): parsing requests into typed
values, and rendering results.

Parsing is strict about what it needs and, as the spec asks, ignores fields it does not know.
Every malformation raises ProtocolError with a path to the bad part (`requests[2].stmt.args[0]`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from router.hrana.errors import ProtocolError
from router.hrana.values import decode_value, encode_value
from tenants.execute import QueryResult, Value

_INT32 = (-(1 << 31), (1 << 31) - 1)
MAX_COND_DEPTH = 64


@dataclass(frozen=True)
class Stmt:
    sql: str | None
    sql_id: int | None
    args: list[Value]
    named_args: dict[str, Value]
    want_rows: bool = True


@dataclass(frozen=True)
class Cond:
    """A batch condition: `ok`/`error` look at `step`, `not`/`and`/`or` combine `conds`."""

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
    """One stream request. `kind` is the protocol's `type`; the other fields are set for the
    kinds that carry them (execute: stmt; batch: batch; sequence/describe: sql or sql_id;
    store_sql: sql_id and sql; close_sql: sql_id)."""

    kind: str
    stmt: Stmt | None = None
    batch: Batch | None = None
    sql: str | None = None
    sql_id: int | None = None


@dataclass
class Outcome:
    """What one statement produced: a result or an error (as a Hrana Error), and its timing."""

    result: QueryResult | None = None
    error: dict[str, Any] | None = None
    want_rows: bool = True
    duration_ms: float = 0.0


REQUEST_KINDS = frozenset(
    {"close", "execute", "batch", "sequence", "describe", "store_sql", "close_sql", "get_autocommit"}
)


def parse_request(raw: Any, where: str, max_steps: int) -> Request:
    obj = _object(raw, where)
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(f"{where}.type must be a string")
    if kind not in REQUEST_KINDS:
        raise ProtocolError(f"{where}: unknown request type {kind!r}")
    if kind == "execute":
        return Request(kind, stmt=parse_stmt(obj.get("stmt"), f"{where}.stmt"))
    if kind == "batch":
        return Request(kind, batch=parse_batch(obj.get("batch"), f"{where}.batch", max_steps))
    if kind in ("sequence", "describe"):
        sql, sql_id = _sql_or_id(obj, where)
        return Request(kind, sql=sql, sql_id=sql_id)
    if kind == "store_sql":
        sql = obj.get("sql")
        if not isinstance(sql, str):
            raise ProtocolError(f"{where}.sql must be a string")
        return Request(kind, sql=sql, sql_id=_int32(obj.get("sql_id"), f"{where}.sql_id"))
    if kind == "close_sql":
        return Request(kind, sql_id=_int32(obj.get("sql_id"), f"{where}.sql_id"))
    return Request(kind)


def parse_stmt(raw: Any, where: str) -> Stmt:
    obj = _object(raw, where)
    sql, sql_id = _sql_or_id(obj, where)
    args_raw = _array(obj.get("args"), where, "args")
    args = [decode_value(v, f"{where}.args[{i}]") for i, v in enumerate(args_raw)]
    named: dict[str, Value] = {}
    for i, arg in enumerate(_array(obj.get("named_args"), where, "named_args")):
        arg_obj = _object(arg, f"{where}.named_args[{i}]")
        name = arg_obj.get("name")
        if not isinstance(name, str) or not name:
            raise ProtocolError(f"{where}.named_args[{i}].name must be a non-empty string")
        named[name] = decode_value(arg_obj.get("value"), f"{where}.named_args[{i}].value")
    want_rows = obj.get("want_rows", True)
    if want_rows is None:
        want_rows = True
    if not isinstance(want_rows, bool):
        raise ProtocolError(f"{where}.want_rows must be a boolean")
    return Stmt(sql, sql_id, args, named, want_rows)


def parse_batch(raw: Any, where: str, max_steps: int) -> Batch:
    steps_raw = _object(raw, where).get("steps")
    if not isinstance(steps_raw, list):
        raise ProtocolError(f"{where}.steps must be an array")
    if len(steps_raw) > max_steps:
        raise ProtocolError(f"{where}: at most {max_steps} steps per batch")
    steps = []
    for index, step_raw in enumerate(steps_raw):
        here = f"{where}.steps[{index}]"
        step = _object(step_raw, here)
        cond_raw = step.get("condition")
        cond = None if cond_raw is None else parse_cond(cond_raw, f"{here}.condition", index)
        steps.append(Step(parse_stmt(step.get("stmt"), f"{here}.stmt"), cond))
    return Batch(steps)


def parse_cond(raw: Any, where: str, index: int, depth: int = 0) -> Cond:
    """A condition of step `index`: it may only look at earlier steps."""
    if depth > MAX_COND_DEPTH:
        raise ProtocolError(f"{where}: conditions nested deeper than {MAX_COND_DEPTH}")
    obj = _object(raw, where)
    kind = obj.get("type")
    if kind in ("ok", "error"):
        step = obj.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < index:
            raise ProtocolError(f"{where}.step must be the index of an earlier step (0..{index - 1})")
        return Cond(kind, step=step)
    if kind == "not":
        return Cond(kind, conds=(parse_cond(obj.get("cond"), f"{where}.cond", index, depth + 1),))
    if kind in ("and", "or"):
        conds = _array(obj.get("conds"), where, "conds", required=True)
        parsed = (parse_cond(c, f"{where}.conds[{i}]", index, depth + 1) for i, c in enumerate(conds))
        return Cond(kind, conds=tuple(parsed))
    if kind == "is_autocommit":
        return Cond(kind)
    raise ProtocolError(f"{where}: unknown condition type {kind!r}")


def _sql_or_id(obj: dict[str, Any], where: str) -> tuple[str | None, int | None]:
    sql, sql_id = obj.get("sql"), obj.get("sql_id")
    if sql is not None and not isinstance(sql, str):
        raise ProtocolError(f"{where}.sql must be a string")
    if sql_id is not None:
        sql_id = _int32(sql_id, f"{where}.sql_id")
    if (sql is None) == (sql_id is None):
        raise ProtocolError(f"{where}: exactly one of 'sql' and 'sql_id' is required")
    return sql, sql_id


def _object(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ProtocolError(f"{where} must be an object")
    return raw


def _array(raw: Any, where: str, name: str, required: bool = False) -> list[Any]:
    if raw is None and not required:
        return []
    if not isinstance(raw, list):
        raise ProtocolError(f"{where}.{name} must be an array")
    return raw


def _int32(raw: Any, where: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not _INT32[0] <= raw <= _INT32[1]:
        raise ProtocolError(f"{where} must be a 32-bit integer")
    return raw


# -- rendering ---------------------------------------------------------------------------------


def cols(result: QueryResult) -> list[dict[str, Any]]:
    return [{"name": n, "decltype": d} for n, d in zip(result.columns, result.decltypes, strict=True)]


def stmt_result(outcome: Outcome) -> dict[str, Any]:
    """The protocol's StmtResult. `rows_read` counts the rows returned (SQLite exposes no
    per-statement count of rows scanned); `rows_written` the rows changed."""
    result = outcome.result
    assert result is not None
    rows = [[encode_value(v) for v in row] for row in result.rows] if outcome.want_rows else []
    return {
        "cols": cols(result),
        "rows": rows,
        "affected_row_count": result.rows_affected,
        "last_insert_rowid": _rowid(result),
        "replication_index": None,
        "rows_read": len(result.rows),
        "rows_written": result.rows_affected,
        "query_duration_ms": round(outcome.duration_ms, 3),
    }


def batch_result(outcomes: list[Outcome | None]) -> dict[str, Any]:
    return {
        "step_results": [
            stmt_result(o) if o is not None and o.result is not None else None for o in outcomes
        ],
        "step_errors": [o.error if o is not None else None for o in outcomes],
        "replication_index": None,
    }


def step_end(result: QueryResult) -> dict[str, Any]:
    """The cursor entry that ends a step that ran."""
    return {
        "type": "step_end",
        "affected_row_count": result.rows_affected,
        "last_insert_rowid": _rowid(result),
    }


def _rowid(result: QueryResult) -> str | None:
    return None if result.last_insert_rowid is None else str(result.last_insert_rowid)
