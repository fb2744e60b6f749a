"""Hrana's protobuf encoding (HRANA_3_SPEC.md appendix): bytes <-> router.hrana.protocol.

The same functions as router.hrana.codec_json, for HTTP (`v3-protobuf/pipeline`,
`v3-protobuf/cursor`) and for WebSocket (subprotocol hrana3-protobuf: one ClientMsg or ServerMsg
per binary frame). The messages are generated from router/hrana/proto/*.proto.

Decoders raise ProtocolError, never anything else: InvalidMessage for bytes that are not the
message (truncated, wrong wire types, invalid UTF-8 in a string), plain ProtocolError for a
message whose contents break the protocol (a oneof with nothing set, `sql` and `sql_id` both or
neither, a condition on a later step), InvalidRequest for a WebSocket request whose
`request_id` is known. Unknown fields are ignored, as the spec asks. Encoders cannot fail.
Thread-safe, no state.
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from router.hrana import protocol as p
from router.hrana.errors import ProtocolError
from router.hrana.proto import hrana_http_pb2 as http_pb
from router.hrana.proto import hrana_pb2 as pb
from router.hrana.proto import hrana_ws_pb2 as ws_pb
from tenants.execute import Value

MEDIA_TYPE = "application/x-protobuf"
CURSOR_MEDIA_TYPE = "application/octet-stream"  # as libsql-server; varint-delimited messages

M = TypeVar("M", bound=Message)
_HTTP_REQUEST_KINDS = ("close", "execute", "batch", "sequence", "describe", "store_sql", "close_sql")


# -- decoding ------------------------------------------------------------------------------------


def decode_pipeline_request(body: bytes, max_statements: int) -> p.PipelineRequest:
    """A PipelineReqBody. A request that does not decode is the ProtocolError in its slot."""
    msg = _parse(http_pb.PipelineReqBody(), body)
    p.request_count(len(msg.requests), max_statements)
    requests: list[p.Request | ProtocolError] = []
    for index, item in enumerate(msg.requests):
        try:
            requests.append(_stream_request(item, f"requests[{index}]", max_statements))
        except ProtocolError as exc:
            requests.append(exc)
    return p.PipelineRequest(msg.baton if msg.HasField("baton") else None, requests)


def decode_cursor_request(body: bytes, max_statements: int) -> p.CursorRequest:
    """A CursorReqBody."""
    msg = _parse(http_pb.CursorReqBody(), body)
    if not msg.HasField("batch"):
        raise ProtocolError("batch is required")
    batch = decode_batch(msg.batch, "batch", max_statements)
    return p.CursorRequest(msg.baton if msg.HasField("baton") else None, batch)


def decode_ws_client_msg(data: bytes, max_statements: int) -> p.ClientMsg:
    """One binary frame, a ClientMsg. Raises InvalidMessage (not a ClientMsg), ProtocolError
    (no message type set), InvalidRequest (the request itself is malformed)."""
    msg = _parse(ws_pb.ClientMsg(), data)
    which = msg.WhichOneof("msg")
    if which == "hello":
        return p.Hello(msg.hello.jwt if msg.hello.HasField("jwt") else None)
    if which != "request":
        raise ProtocolError("ClientMsg type not recognized")
    request_id = msg.request.request_id
    try:
        return _ws_request(msg.request, max_statements)
    except p.InvalidRequest:
        raise
    except ProtocolError as exc:
        raise p.InvalidRequest(exc.message, request_id) from None


def _ws_request(msg: ws_pb.RequestMsg, max_statements: int) -> p.WsRequest:
    kind = msg.WhichOneof("request")
    if kind is None:
        raise ProtocolError("Request type not recognized")
    rid, where = msg.request_id, "request"
    if kind == "open_stream":
        return p.WsRequest(rid, kind, stream_id=msg.open_stream.stream_id)
    if kind == "close_stream":
        return p.WsRequest(rid, kind, stream_id=msg.close_stream.stream_id)
    if kind == "execute":
        stmt = _required_stmt(msg.execute, f"{where}.stmt")
        request = p.Request(kind, stmt=stmt)
        return p.WsRequest(rid, kind, stream_id=msg.execute.stream_id, request=request)
    if kind == "batch":
        batch = _required_batch(msg.batch, f"{where}.batch", max_statements)
        return p.WsRequest(rid, kind, stream_id=msg.batch.stream_id, request=p.Request(kind, batch=batch))
    if kind == "open_cursor":
        cursor = msg.open_cursor
        batch = _required_batch(cursor, f"{where}.batch", max_statements)
        return p.WsRequest(rid, kind, stream_id=cursor.stream_id, cursor_id=cursor.cursor_id, batch=batch)
    if kind == "close_cursor":
        return p.WsRequest(rid, kind, cursor_id=msg.close_cursor.cursor_id)
    if kind == "fetch_cursor":
        fetch = msg.fetch_cursor
        return p.WsRequest(rid, kind, cursor_id=fetch.cursor_id, max_count=fetch.max_count)
    if kind in ("sequence", "describe"):
        sub: ws_pb.SequenceReq | ws_pb.DescribeReq = getattr(msg, kind)
        sql, sql_id = _sql_or_id(sub, where)
        request = p.Request(kind, sql=sql, sql_id=sql_id)
        return p.WsRequest(rid, kind, stream_id=sub.stream_id, request=request)
    if kind == "store_sql":
        request = p.Request(kind, sql=msg.store_sql.sql, sql_id=msg.store_sql.sql_id)
        return p.WsRequest(rid, kind, request=request)
    if kind == "close_sql":
        return p.WsRequest(rid, kind, request=p.Request(kind, sql_id=msg.close_sql.sql_id))
    return p.WsRequest(rid, kind, stream_id=msg.get_autocommit.stream_id, request=p.Request(kind))


def _stream_request(msg: http_pb.StreamRequest, where: str, max_statements: int) -> p.Request:
    kind = msg.WhichOneof("request")
    if kind is None:
        raise ProtocolError(f"{where}: request type not recognized")
    if kind == "execute":
        return p.Request(kind, stmt=_required_stmt(msg.execute, f"{where}.stmt"))
    if kind == "batch":
        return p.Request(kind, batch=_required_batch(msg.batch, f"{where}.batch", max_statements))
    if kind in ("sequence", "describe"):
        sub: http_pb.SequenceStreamReq | http_pb.DescribeStreamReq = getattr(msg, kind)
        sql, sql_id = _sql_or_id(sub, where)
        return p.Request(kind, sql=sql, sql_id=sql_id)
    if kind == "store_sql":
        return p.Request(kind, sql=msg.store_sql.sql, sql_id=msg.store_sql.sql_id)
    if kind == "close_sql":
        return p.Request(kind, sql_id=msg.close_sql.sql_id)
    return p.Request(kind)  # close, get_autocommit


def _required_stmt(holder: Message, where: str) -> p.Stmt:
    if not holder.HasField("stmt"):
        raise ProtocolError(f"{where} is required")
    return decode_stmt(holder.stmt, where)  # type: ignore[attr-defined]


def _required_batch(holder: Message, where: str, max_statements: int) -> p.Batch:
    if not holder.HasField("batch"):
        raise ProtocolError(f"{where} is required")
    return decode_batch(holder.batch, where, max_statements)  # type: ignore[attr-defined]


def decode_stmt(msg: pb.Stmt, where: str) -> p.Stmt:
    sql, sql_id = _sql_or_id(msg, where)
    args = [decode_value(v, f"{where}.args[{i}]") for i, v in enumerate(msg.args)]
    named: dict[str, Value] = {}
    for i, arg in enumerate(msg.named_args):
        here = f"{where}.named_args[{i}]"
        if not arg.HasField("value"):
            raise ProtocolError(f"{here}.value is required")
        named[p.arg_name(arg.name, here)] = decode_value(arg.value, f"{here}.value")
    want_rows = msg.want_rows if msg.HasField("want_rows") else True
    return p.Stmt(sql, sql_id, args, named, want_rows)


def decode_batch(msg: pb.Batch, where: str, max_statements: int) -> p.Batch:
    p.step_count(len(msg.steps), max_statements, where)
    steps = []
    for index, step in enumerate(msg.steps):
        here = f"{where}.steps[{index}]"
        cond = decode_cond(step.condition, f"{here}.condition", index) if step.HasField("condition") else None
        steps.append(p.Step(_required_stmt(step, f"{here}.stmt"), cond))
    p.statement_count(steps, max_statements, where)
    return p.Batch(steps)


def decode_cond(msg: pb.BatchCond, where: str, index: int, depth: int = 0) -> p.Cond:
    """A condition of step `index`: it may only look at earlier steps."""
    p.cond_depth(depth, where)
    kind = msg.WhichOneof("cond")
    if kind == "step_ok":
        return p.Cond("ok", step=p.cond_step(msg.step_ok, index, where))
    if kind == "step_error":
        return p.Cond("error", step=p.cond_step(msg.step_error, index, where))
    if kind == "not":
        inner: pb.BatchCond = getattr(msg, "not")  # a keyword in Python
        return p.Cond("not", conds=(decode_cond(inner, f"{where}.cond", index, depth + 1),))
    if kind in ("and", "or"):
        conds: pb.BatchCond.CondList = getattr(msg, kind)
        parsed = (decode_cond(c, f"{where}.conds[{i}]", index, depth + 1) for i, c in enumerate(conds.conds))
        return p.Cond(kind, conds=tuple(parsed))
    if kind == "is_autocommit":
        return p.Cond(kind)
    raise ProtocolError(f"{where}: condition type not recognized")


def decode_value(msg: pb.Value, where: str) -> Value:
    kind = msg.WhichOneof("value")
    if kind == "null":
        return None
    if kind == "integer":
        return msg.integer
    if kind == "float":
        number: float = getattr(msg, "float")  # noqa: B009  (the stub's `float` field shadows the type)
        return number
    if kind == "text":
        return msg.text
    if kind == "blob":
        return msg.blob
    raise ProtocolError(f"{where}: value type not recognized")


def _sql_or_id(
    msg: pb.Stmt
    | http_pb.SequenceStreamReq
    | http_pb.DescribeStreamReq
    | ws_pb.SequenceReq
    | ws_pb.DescribeReq,
    where: str,
) -> tuple[str | None, int | None]:
    sql = msg.sql if msg.HasField("sql") else None
    sql_id = msg.sql_id if msg.HasField("sql_id") else None
    return p.sql_or_id(sql, sql_id, where)


def _parse(msg: M, data: bytes) -> M:
    try:
        msg.ParseFromString(data)
    except (DecodeError, ValueError, RecursionError) as exc:
        name = msg.DESCRIPTOR.name
        raise p.InvalidMessage(f"could not decode the {name} protobuf message: {exc}") from None
    return msg


# -- encoding ------------------------------------------------------------------------------------


def encode_pipeline_response(response: p.PipelineResponse) -> bytes:
    msg = http_pb.PipelineRespBody()
    _stream_place(msg, response.baton, response.base_url)
    for result in response.results:
        item = msg.results.add()
        if isinstance(result, p.Error):
            _error(item.error, result)
        else:
            _stream_response(item.ok, result)
    return msg.SerializeToString()


def encode_cursor_header(header: p.CursorHeader) -> bytes:
    """The cursor body's first item, length-delimited."""
    msg = http_pb.CursorRespBody()
    _stream_place(msg, header.baton, header.base_url)
    return _delimited(msg)


def _stream_place(
    msg: http_pb.PipelineRespBody | http_pb.CursorRespBody, baton: str | None, base_url: str | None
) -> None:
    """Where the client's next request for the stream goes: its baton and base URL, if any."""
    if baton is not None:
        msg.baton = baton
    if base_url is not None:
        msg.base_url = base_url


def encode_cursor_entry(entry: p.CursorEntry) -> bytes:
    """One item of a cursor body, length-delimited."""
    msg = pb.CursorEntry()
    _cursor_entry(msg, entry)
    return _delimited(msg)


def encode_ws_server_msg(msg: p.ServerMsg) -> bytes:
    """One binary frame, a ServerMsg."""
    out = ws_pb.ServerMsg()
    if isinstance(msg, p.HelloOk):
        out.hello_ok.SetInParent()
    elif isinstance(msg, p.HelloError):
        _error(out.hello_error.error, msg.error)
    elif isinstance(msg, p.ResponseOk):
        out.response_ok.request_id = msg.request_id
        _ws_response(out.response_ok, msg.response)
    else:
        out.response_error.request_id = msg.request_id
        _error(out.response_error.error, msg.error)
    return out.SerializeToString()


def _stream_response(msg: http_pb.StreamResponse, response: p.Response) -> None:
    kind = response.kind
    if kind not in (*_HTTP_REQUEST_KINDS, "get_autocommit"):
        raise ValueError(f"no HTTP stream response {kind!r}")
    _response_body(getattr(msg, kind), response)


def _ws_response(msg: ws_pb.ResponseOkMsg, response: p.Response) -> None:
    if response.kind not in p.WS_REQUEST_KINDS:
        raise ValueError(f"no WebSocket response {response.kind!r}")
    _response_body(getattr(msg, response.kind), response)


def _response_body(msg: Message, response: p.Response) -> None:
    """Fill `msg`, the response of `response.kind` in either transport (their fields agree)."""
    msg.SetInParent()  # an empty response must still be marked present in its oneof
    kind = response.kind
    if kind == "execute":
        assert response.result is not None
        stmt_result(msg.result, response.result)  # type: ignore[attr-defined]
    elif kind == "batch":
        assert response.batch is not None
        batch_result(msg.result, response.batch)  # type: ignore[attr-defined]
    elif kind == "describe":
        assert response.describe is not None
        describe_result(msg.result, response.describe)  # type: ignore[attr-defined]
    elif kind == "get_autocommit":
        msg.is_autocommit = response.is_autocommit  # type: ignore[attr-defined]
    elif kind == "fetch_cursor":
        for entry in response.entries:
            _cursor_entry(msg.entries.add(), entry)  # type: ignore[attr-defined]
        msg.done = response.done  # type: ignore[attr-defined]


def stmt_result(msg: pb.StmtResult, outcome: p.Outcome) -> None:
    result = outcome.result
    assert result is not None
    for c in p.cols_of(result):
        _col(msg.cols.add(), c)
    if outcome.want_rows:
        for row in result.rows:
            _row(msg.rows.add(), row)
    msg.affected_row_count = result.rows_affected
    if result.last_insert_rowid is not None:
        msg.last_insert_rowid = result.last_insert_rowid
    msg.rows_read = len(result.rows)
    msg.rows_written = result.rows_affected
    msg.query_duration_ms = round(outcome.duration_ms, 3)


def batch_result(msg: pb.BatchResult, outcomes: list[p.Outcome | None]) -> None:
    """Skipped steps are absent from both maps, as libsql-server writes them."""
    msg.SetInParent()
    for index, outcome in enumerate(outcomes):
        if outcome is None:
            continue
        if outcome.result is not None:
            stmt_result(msg.step_results[index], outcome)
        elif outcome.error is not None:
            _error(msg.step_errors[index], outcome.error)


def describe_result(msg: pb.DescribeResult, result: p.DescribeResult) -> None:
    for name in result.params:
        param = msg.params.add()
        if name is not None:
            param.name = name
    for c in result.cols:
        col = msg.cols.add()
        col.name = c.name or ""
        if c.decltype is not None:
            col.decltype = c.decltype
    msg.is_explain = result.is_explain
    msg.is_readonly = result.is_readonly


def _cursor_entry(msg: pb.CursorEntry, entry: p.CursorEntry) -> None:
    if isinstance(entry, p.RowEntry):
        _row(msg.row, entry.values)
    elif isinstance(entry, p.StepBegin):
        msg.step_begin.step = entry.step
        for c in entry.cols:
            _col(msg.step_begin.cols.add(), c)
        msg.step_begin.SetInParent()
    elif isinstance(entry, p.StepEnd):
        msg.step_end.affected_row_count = entry.affected_row_count
        if entry.last_insert_rowid is not None:
            msg.step_end.last_insert_rowid = entry.last_insert_rowid
        msg.step_end.SetInParent()
    elif isinstance(entry, p.StepError):
        msg.step_error.step = entry.step
        _error(msg.step_error.error, entry.error)
    else:
        _error(msg.error, entry.error)


def _row(msg: pb.Row, values: tuple[Value, ...] | list[Value]) -> None:
    msg.SetInParent()  # a row of no columns is still a row
    for value in values:
        encode_value(msg.values.add(), value)


def encode_value(msg: pb.Value, value: Value) -> None:
    """Fill `msg` with `value`."""
    if value is None:
        msg.null.SetInParent()
    elif isinstance(value, int):
        msg.integer = value
    elif isinstance(value, float):
        setattr(msg, "float", value)  # noqa: B010  (the stub's `float` field shadows the type)
    elif isinstance(value, str):
        msg.text = value
    else:
        msg.blob = value


def _col(msg: pb.Col, col: p.Col) -> None:
    if col.name is not None:
        msg.name = col.name
    if col.decltype is not None:
        msg.decltype = col.decltype


def _error(msg: pb.Error, error: p.Error) -> None:
    msg.message = _utf8(error.message)
    if error.code is not None:
        msg.code = _utf8(error.code)


def _utf8(text: str) -> str:
    # A message may quote a lone surrogate a JSON request carried; protobuf strings are UTF-8.
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode(errors="backslashreplace").decode()
    return text


def _delimited(msg: Message) -> bytes:
    data = msg.SerializeToString()
    return _varint(len(data)) + data


def _varint(n: int) -> bytes:
    # protobuf's own helper for this (google.protobuf.internal.encoder) is not public API
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
