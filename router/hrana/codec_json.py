"""Hrana's JSON encoding (HRANA_3_SPEC.md, HTTP_V2_SPEC.md): bytes <-> router.hrana.protocol.

The same functions as router.hrana.codec_protobuf, for HTTP (`v2|v3/pipeline`, `v3/cursor`,
and the JSON-only HTTP v1 bodies) and for WebSocket (subprotocols hrana1/2/3: text frames).
Decoding is strict about what it needs and, as the spec asks, ignores fields it does not know.
Every decoder raises ProtocolError (InvalidMessage when the input is not JSON or not an object
at all; InvalidRequest for a WebSocket request whose `request_id` is known), never anything
else. Encoders take what the executor produced and cannot fail. Thread-safe, no state.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from router.codec import parse_json_object
from router.hrana import protocol as p
from router.hrana.errors import ProtocolError
from router.hrana.values import decode_value, dumps_infinity_safe, encode_value
from tenants.errors import BadRequest
from tenants.execute import Value

MEDIA_TYPE = "application/json"
CURSOR_MEDIA_TYPE = "text/plain"  # one JSON object per line


# -- decoding ------------------------------------------------------------------------------------


def decode_pipeline_request(body: bytes, max_statements: int) -> p.PipelineRequest:
    """A pipeline body `{"baton", "requests"}`. A request that does not decode is the
    ProtocolError in its slot; a malformed body as a whole raises."""
    obj = _load(body)
    raw = obj.get("requests")
    if not isinstance(raw, list):
        raise ProtocolError("requests must be an array")
    p.request_count(len(raw), max_statements)
    requests: list[p.Request | ProtocolError] = []
    for index, item in enumerate(raw):
        try:
            requests.append(decode_request(item, f"requests[{index}]", max_statements))
        except ProtocolError as exc:
            requests.append(exc)
    return p.PipelineRequest(_baton(obj), requests)


def decode_cursor_request(body: bytes, max_statements: int) -> p.CursorRequest:
    """A cursor body `{"baton", "batch"}`."""
    obj = _load(body)
    return p.CursorRequest(_baton(obj), decode_batch(obj.get("batch"), "batch", max_statements))


def decode_v1_execute(body: bytes) -> p.Stmt:
    """HTTP v1 `execute`: `{"stmt"}`."""
    return decode_stmt(_load(body).get("stmt"), "stmt")


def decode_v1_batch(body: bytes, max_statements: int) -> p.Batch:
    """HTTP v1 `batch`: `{"batch"}`."""
    return decode_batch(_load(body).get("batch"), "batch", max_statements)


def decode_ws_client_msg(data: str | bytes, max_statements: int) -> p.ClientMsg:
    """One text frame: `{"type": "hello", "jwt"}` or `{"type": "request", "request_id",
    "request"}`. Raises InvalidMessage (not a JSON object), ProtocolError (no such message
    type, bad request_id), InvalidRequest (the request itself is malformed)."""
    obj = _load(data)
    kind = obj.get("type")
    if kind == "hello":
        jwt = obj.get("jwt")
        if jwt is not None and not isinstance(jwt, str):
            raise ProtocolError("hello.jwt must be a string or null")
        return p.Hello(jwt)
    if kind != "request":
        raise ProtocolError(f"unknown message type {kind!r}")
    request_id = _int32(obj.get("request_id"), "request_id")
    try:
        return _ws_request(request_id, obj.get("request"), max_statements)
    except p.InvalidRequest:
        raise
    except ProtocolError as exc:
        raise p.InvalidRequest(exc.message, request_id) from None


def _ws_request(request_id: int, raw: Any, max_statements: int) -> p.WsRequest:
    where = "request"
    obj = _object(raw, where)
    kind = obj.get("type")
    if kind not in p.WS_REQUEST_KINDS:
        raise ProtocolError(f"{where}: unknown request type {kind!r}")
    assert isinstance(kind, str)

    def stream_id() -> int:
        return _int32(obj.get("stream_id"), f"{where}.stream_id")

    def cursor_id() -> int:
        return _int32(obj.get("cursor_id"), f"{where}.cursor_id")

    if kind in ("open_stream", "close_stream"):
        return p.WsRequest(request_id, kind, stream_id=stream_id())
    if kind in ("execute", "batch", "sequence", "describe", "get_autocommit"):
        request = decode_request(obj, where, max_statements)
        return p.WsRequest(request_id, kind, stream_id=stream_id(), request=request)
    if kind in ("store_sql", "close_sql"):
        return p.WsRequest(request_id, kind, request=decode_request(obj, where, max_statements))
    if kind == "open_cursor":
        batch = decode_batch(obj.get("batch"), f"{where}.batch", max_statements)
        return p.WsRequest(request_id, kind, stream_id=stream_id(), cursor_id=cursor_id(), batch=batch)
    if kind == "close_cursor":
        return p.WsRequest(request_id, kind, cursor_id=cursor_id())
    max_count = obj.get("max_count")  # fetch_cursor
    if isinstance(max_count, bool) or not isinstance(max_count, int) or not 0 <= max_count <= p.UINT32_MAX:
        raise ProtocolError(f"{where}.max_count must be a 32-bit unsigned integer")
    return p.WsRequest(request_id, kind, cursor_id=cursor_id(), max_count=max_count)


def decode_request(raw: Any, where: str, max_statements: int) -> p.Request:
    """One stream request `{"type", ...}` (the kinds of REQUEST_KINDS)."""
    obj = _object(raw, where)
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(f"{where}.type must be a string")
    if kind not in p.REQUEST_KINDS:
        raise ProtocolError(f"{where}: unknown request type {kind!r}")
    if kind == "execute":
        return p.Request(kind, stmt=decode_stmt(obj.get("stmt"), f"{where}.stmt"))
    if kind == "batch":
        return p.Request(kind, batch=decode_batch(obj.get("batch"), f"{where}.batch", max_statements))
    if kind in ("sequence", "describe"):
        sql, sql_id = _sql_or_id(obj, where)
        return p.Request(kind, sql=sql, sql_id=sql_id)
    if kind == "store_sql":
        sql = obj.get("sql")
        if not isinstance(sql, str):
            raise ProtocolError(f"{where}.sql must be a string")
        return p.Request(kind, sql=sql, sql_id=_int32(obj.get("sql_id"), f"{where}.sql_id"))
    if kind == "close_sql":
        return p.Request(kind, sql_id=_int32(obj.get("sql_id"), f"{where}.sql_id"))
    return p.Request(kind)


def decode_stmt(raw: Any, where: str) -> p.Stmt:
    obj = _object(raw, where)
    sql, sql_id = _sql_or_id(obj, where)
    args_raw = _array(obj.get("args"), where, "args")
    args = [decode_value(v, f"{where}.args[{i}]") for i, v in enumerate(args_raw)]
    named: dict[str, Value] = {}
    for i, arg in enumerate(_array(obj.get("named_args"), where, "named_args")):
        here = f"{where}.named_args[{i}]"
        arg_obj = _object(arg, here)
        name = arg_obj.get("name")
        if not isinstance(name, str):
            raise ProtocolError(f"{here}.name must be a non-empty string")
        named[p.arg_name(name, here)] = decode_value(arg_obj.get("value"), f"{here}.value")
    want_rows = obj.get("want_rows", True)
    if want_rows is None:
        want_rows = True
    if not isinstance(want_rows, bool):
        raise ProtocolError(f"{where}.want_rows must be a boolean")
    return p.Stmt(sql, sql_id, args, named, want_rows)


def decode_batch(raw: Any, where: str, max_statements: int) -> p.Batch:
    steps_raw = _object(raw, where).get("steps")
    if not isinstance(steps_raw, list):
        raise ProtocolError(f"{where}.steps must be an array")
    p.step_count(len(steps_raw), max_statements, where)
    steps = []
    for index, step_raw in enumerate(steps_raw):
        here = f"{where}.steps[{index}]"
        step = _object(step_raw, here)
        cond_raw = step.get("condition")
        cond = None if cond_raw is None else decode_cond(cond_raw, f"{here}.condition", index)
        steps.append(p.Step(decode_stmt(step.get("stmt"), f"{here}.stmt"), cond))
    p.statement_count(steps, max_statements, where)
    return p.Batch(steps)


def decode_cond(raw: Any, where: str, index: int, depth: int = 0) -> p.Cond:
    """A condition of step `index`: it may only look at earlier steps."""
    p.cond_depth(depth, where)
    obj = _object(raw, where)
    kind = obj.get("type")
    if kind in ("ok", "error"):
        step = obj.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            raise ProtocolError(f"{where}.step must be the index of an earlier step (0..{index - 1})")
        return p.Cond(kind, step=p.cond_step(step, index, where))
    if kind == "not":
        return p.Cond(kind, conds=(decode_cond(obj.get("cond"), f"{where}.cond", index, depth + 1),))
    if kind in ("and", "or"):
        conds = _array(obj.get("conds"), where, "conds", required=True)
        parsed = (decode_cond(c, f"{where}.conds[{i}]", index, depth + 1) for i, c in enumerate(conds))
        return p.Cond(kind, conds=tuple(parsed))
    if kind == "is_autocommit":
        return p.Cond(kind)
    raise ProtocolError(f"{where}: unknown condition type {kind!r}")


def _load(data: bytes | str) -> dict[str, Any]:
    try:
        return parse_json_object(data)
    except BadRequest as exc:
        raise p.InvalidMessage(exc.message) from None


def _baton(obj: dict[str, Any]) -> str | None:
    baton = obj.get("baton")
    if baton is not None and not isinstance(baton, str):
        raise ProtocolError("baton must be a string or null")
    return baton


def _sql_or_id(obj: dict[str, Any], where: str) -> tuple[str | None, int | None]:
    sql, sql_id = obj.get("sql"), obj.get("sql_id")
    if sql is not None and not isinstance(sql, str):
        raise ProtocolError(f"{where}.sql must be a string")
    if sql_id is not None:
        sql_id = _int32(sql_id, f"{where}.sql_id")
    return p.sql_or_id(sql, sql_id, where)


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
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ProtocolError(f"{where} must be a 32-bit integer")
    return p.int32(raw, where)


# -- encoding ------------------------------------------------------------------------------------


def encode_pipeline_response(response: p.PipelineResponse) -> bytes:
    return _dumps(
        {
            "baton": response.baton,
            "base_url": response.base_url,
            "results": [stream_result(r) for r in response.results],
        }
    )


def encode_cursor_header(header: p.CursorHeader) -> bytes:
    """The cursor body's first line."""
    return _dumps({"baton": header.baton, "base_url": header.base_url}) + b"\n"


def encode_cursor_entry(entry: p.CursorEntry) -> bytes:
    """One line of a cursor body."""
    return _dumps(cursor_entry(entry)) + b"\n"


def encode_error(error: p.Error) -> bytes:
    """An HTTP error body."""
    return _dumps(error_obj(error))


def encode_v1_execute(outcome: p.Outcome) -> bytes:
    return _dumps({"result": stmt_result(outcome)})


def encode_v1_batch(outcomes: list[p.Outcome | None]) -> bytes:
    return _dumps({"result": batch_result(outcomes)})


def encode_ws_server_msg(msg: p.ServerMsg) -> str:
    """One text frame."""
    return dumps(server_msg(msg))


def server_msg(msg: p.ServerMsg) -> dict[str, Any]:
    if isinstance(msg, p.HelloOk):
        return {"type": "hello_ok"}
    if isinstance(msg, p.HelloError):
        return {"type": "hello_error", "error": error_obj(msg.error)}
    if isinstance(msg, p.ResponseOk):
        return {"type": "response_ok", "request_id": msg.request_id, "response": response_obj(msg.response)}
    return {"type": "response_error", "request_id": msg.request_id, "error": error_obj(msg.error)}


def stream_result(result: p.StreamResult) -> dict[str, Any]:
    if isinstance(result, p.Error):
        return {"type": "error", "error": error_obj(result)}
    return {"type": "ok", "response": response_obj(result)}


def response_obj(response: p.Response) -> dict[str, Any]:
    kind = response.kind
    if kind == "execute":
        assert response.result is not None
        return {"type": kind, "result": stmt_result(response.result)}
    if kind == "batch":
        assert response.batch is not None
        return {"type": kind, "result": batch_result(response.batch)}
    if kind == "describe":
        assert response.describe is not None
        return {"type": kind, "result": describe_result(response.describe)}
    if kind == "get_autocommit":
        return {"type": kind, "is_autocommit": response.is_autocommit}
    if kind == "fetch_cursor":
        return {"type": kind, "entries": [cursor_entry(e) for e in response.entries], "done": response.done}
    return {"type": kind}


def error_obj(error: p.Error) -> dict[str, Any]:
    return {"message": error.message, "code": error.code}


def stmt_result(outcome: p.Outcome) -> dict[str, Any]:
    """The protocol's StmtResult. `rows_read` counts the rows returned (SQLite exposes no
    per-statement count of rows scanned); `rows_written` the rows changed."""
    result = outcome.result
    assert result is not None
    rows = [[encode_value(v) for v in row] for row in result.rows] if outcome.want_rows else []
    return {
        "cols": [col(c) for c in p.cols_of(result)],
        "rows": rows,
        "affected_row_count": result.rows_affected,
        "last_insert_rowid": _rowid(result.last_insert_rowid),
        "replication_index": None,
        "rows_read": len(result.rows),
        "rows_written": result.rows_affected,
        "query_duration_ms": round(outcome.duration_ms, 3),
    }


def batch_result(outcomes: list[p.Outcome | None]) -> dict[str, Any]:
    return {
        "step_results": [
            stmt_result(o) if o is not None and o.result is not None else None for o in outcomes
        ],
        "step_errors": [
            error_obj(o.error) if o is not None and o.error is not None else None for o in outcomes
        ],
        "replication_index": None,
    }


def describe_result(result: p.DescribeResult) -> dict[str, Any]:
    return {
        "params": [{"name": name} for name in result.params],
        "cols": [col(c) for c in result.cols],
        "is_explain": result.is_explain,
        "is_readonly": result.is_readonly,
    }


def cursor_entry(entry: p.CursorEntry) -> dict[str, Any]:
    if isinstance(entry, p.RowEntry):
        return {"type": "row", "row": [encode_value(v) for v in entry.values]}
    if isinstance(entry, p.StepBegin):
        return {"type": "step_begin", "step": entry.step, "cols": [col(c) for c in entry.cols]}
    if isinstance(entry, p.StepEnd):
        return {
            "type": "step_end",
            "affected_row_count": entry.affected_row_count,
            "last_insert_rowid": _rowid(entry.last_insert_rowid),
        }
    if isinstance(entry, p.StepError):
        return {"type": "step_error", "step": entry.step, "error": error_obj(entry.error)}
    return {"type": "error", "error": error_obj(entry.error)}


def col(c: p.Col) -> dict[str, Any]:
    return {"name": c.name, "decltype": c.decltype}


def _rowid(rowid: int | None) -> str | None:
    return None if rowid is None else str(rowid)


def dumps(body: Any) -> str:
    """Compact JSON text, infinite floats as `1e999` (router.hrana.values)."""
    return _dumps(body).decode()


# What orjson writes for an infinite float value (JSON has none). Inside a JSON string a quote
# is always escaped, so only a value's own `"value":null` can match: a float (a NULL is
# {"type": "null"}), or a field that is null anyway, which only costs the slower path.
_NULL_VALUE = b'"value":null'


def _dumps(body: Any) -> bytes:
    # orjson for speed (a WebSocket answer's encoding was a tenth of its server time); the
    # stdlib where it cannot say the same: infinities, lone surrogates (which orjson refuses)
    try:
        raw = orjson.dumps(body)
    except orjson.JSONEncodeError:
        raw = None
    if raw is not None and _NULL_VALUE not in raw:
        return raw
    try:
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        data = text.encode()
    except UnicodeEncodeError:  # a lone surrogate quoted back in a message: escape everything
        text = json.dumps(body, separators=(",", ":"))
        data = text.encode()
    return dumps_infinity_safe(text).encode() if b"Infinity" in data else data
