"""Hrana's protobuf encoding over HTTP (`v3-protobuf/pipeline`, `v3-protobuf/cursor`), and the
codecs themselves: both encodings decode into the same typed requests, every malformed input is
a 4xx (or, for the WebSocket decoder, a ProtocolError), never a 5xx.

The messages are the generated ones (router/hrana/proto), as a client would build them."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.hrana import codec_json, codec_protobuf
from router.hrana import protocol as p
from router.hrana.errors import ProtocolError
from router.hrana.proto import generate
from router.hrana.proto import hrana_http_pb2 as http_pb
from router.hrana.proto import hrana_pb2 as pb
from router.hrana.proto import hrana_ws_pb2 as ws_pb
from router.hrana.values import encode_value
from tenants.execute import QueryResult, Value
from tests.support.app import ADMIN, InProcess, bearer, in_process

BASE = "/v1/tenants/acme"
PROTOBUF = {"content-type": "application/x-protobuf"}
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MAX = 1000  # max_batch_statements' default


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    data = tmp_path_factory.mktemp("hrana-protobuf") / "data"
    with in_process(data, busy_timeout=0.2, stream_idle_timeout=1, preempt_wait=0.2) as app:
        app.create("acme")
        yield app


# -- building messages ---------------------------------------------------------------------------


def value(v: Value) -> pb.Value:
    msg = pb.Value()
    codec_protobuf.encode_value(msg, v)
    return msg


def unvalue(msg: pb.Value) -> Any:
    kind = msg.WhichOneof("value")
    return None if kind == "null" else getattr(msg, str(kind))


def stmt(sql: str, *args: Any, want_rows: bool | None = None) -> pb.Stmt:
    msg = pb.Stmt(sql=sql, args=[value(a) for a in args])
    if want_rows is not None:
        msg.want_rows = want_rows
    return msg


def execute(sql: str, *args: Any) -> http_pb.StreamRequest:
    return http_pb.StreamRequest(execute=http_pb.ExecuteStreamReq(stmt=stmt(sql, *args)))


def batch(*steps: tuple[str, pb.BatchCond | None]) -> pb.Batch:
    out = pb.Batch()
    for sql, cond in steps:
        step = out.steps.add()
        step.stmt.CopyFrom(stmt(sql))
        if cond is not None:
            step.condition.CopyFrom(cond)
    return out


def close() -> http_pb.StreamRequest:
    msg = http_pb.StreamRequest()
    msg.close.SetInParent()
    return msg


def post(app: InProcess, path: str, body: bytes, headers: dict[str, str] | None = None) -> httpx2.Response:
    r = app.client.post(path, content=body, headers={**(headers or ADMIN), **PROTOBUF})
    assert r.status_code < 500, (path, body[:200], r.status_code, r.text[:300])
    if r.status_code >= 400:  # errors are JSON on the protobuf endpoints too (the clients read them)
        assert r.headers["content-type"] == "application/json"
        assert r.json()["message"] and r.json()["code"]
    return r


def pipeline(
    app: InProcess,
    requests: list[http_pb.StreamRequest],
    baton: str | None = None,
    path: str = f"{BASE}/v3-protobuf/pipeline",
    headers: dict[str, str] | None = None,
) -> http_pb.PipelineRespBody:
    body = http_pb.PipelineReqBody(requests=requests)
    if baton is not None:
        body.baton = baton
    r = post(app, path, body.SerializeToString(), headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-protobuf"
    out = http_pb.PipelineRespBody()
    out.ParseFromString(r.content)
    return out


def delimited(data: bytes) -> Iterator[bytes]:
    """The items of a varint length-delimited stream."""
    at = 0
    while at < len(data):
        size = shift = 0
        while True:
            byte = data[at]
            at += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        assert at + size <= len(data), "the stream ends mid-item"
        yield data[at : at + size]
        at += size


def ok_response(result: http_pb.StreamResult) -> http_pb.StreamResponse:
    assert result.WhichOneof("result") == "ok", result
    return result.ok


# -- the generated modules -----------------------------------------------------------------------


def test_the_generated_modules_match_the_proto_files() -> None:
    assert generate.differences() == [], "run: python -m router.hrana.proto.generate"


# -- pipelines -----------------------------------------------------------------------------------


def test_every_value_type_round_trips(acme: InProcess) -> None:
    blob = bytes(range(256))
    values = [2**63 - 1, -(2**63), 0, 1.5, -0.0, float("inf"), "héllo ✓ \x00 end", b"", blob, None]
    out = pipeline(
        acme,
        [
            execute("CREATE TABLE vals (v)"),
            *(execute("INSERT INTO vals VALUES (?)", v) for v in values),
            execute("SELECT v, typeof(v) FROM vals ORDER BY rowid"),
        ],
    )
    inserted = ok_response(out.results[1]).execute.result
    assert (inserted.affected_row_count, inserted.last_insert_rowid, inserted.rows_written) == (1, 1, 1)
    selected = ok_response(out.results[-1]).execute.result
    assert [c.name for c in selected.cols] == ["v", "typeof(v)"]
    assert [unvalue(row.values[0]) for row in selected.rows] == values
    assert selected.rows_read == len(values)
    assert out.HasField("baton") and not out.HasField("base_url")
    pipeline(acme, [close()], out.baton)


def test_a_batch_with_conditions_reports_results_and_errors_by_step(acme: InProcess) -> None:
    ok0 = pb.BatchCond(step_ok=0)
    error1 = pb.BatchCond(step_error=1)
    is_autocommit = pb.BatchCond()
    is_autocommit.is_autocommit.SetInParent()
    request = http_pb.StreamRequest(
        batch=http_pb.BatchStreamReq(
            batch=batch(
                ("SELECT 1", None),
                ("SELECT * FROM nowhere", ok0),
                ("SELECT 3", pb.BatchCond(step_ok=1)),  # skipped: step 1 failed
                ("SELECT 4", error1),
                ("SELECT 5", is_autocommit),
            )
        )
    )
    out = pipeline(acme, [request, close()])
    result = ok_response(out.results[0]).batch.result
    assert sorted(result.step_results) == [0, 3, 4]
    assert sorted(result.step_errors) == [1]
    assert result.step_errors[1].code == "SQLITE_ERROR"
    assert unvalue(result.step_results[3].rows[0].values[0]) == 4
    assert ok_response(out.results[1]).WhichOneof("response") == "close"
    assert not out.HasField("baton")


def test_a_stream_spans_requests_with_its_transaction_and_stored_sql(acme: InProcess) -> None:
    store = http_pb.StreamRequest(store_sql=http_pb.StoreSqlStreamReq(sql_id=7, sql="SELECT count(*) FROM s"))
    by_id = http_pb.StreamRequest(execute=http_pb.ExecuteStreamReq(stmt=pb.Stmt(sql_id=7)))
    autocommit = http_pb.StreamRequest()
    autocommit.get_autocommit.SetInParent()
    out = pipeline(
        acme,
        [
            execute("CREATE TABLE s (x)"),
            store,
            execute("BEGIN"),
            execute("INSERT INTO s VALUES (1)"),
            autocommit,
            by_id,
        ],
    )
    assert [r.WhichOneof("result") for r in out.results] == ["ok"] * 6
    assert ok_response(out.results[4]).get_autocommit.is_autocommit is False
    assert unvalue(ok_response(out.results[5]).execute.result.rows[0].values[0]) == 1
    describe = http_pb.StreamRequest(
        describe=http_pb.DescribeStreamReq(sql="SELECT x AS y FROM s WHERE x = :a")
    )
    sequence = http_pb.StreamRequest(sequence=http_pb.SequenceStreamReq(sql="ROLLBACK; SELECT 1"))
    close_sql = http_pb.StreamRequest(close_sql=http_pb.CloseSqlStreamReq(sql_id=7))
    out = pipeline(acme, [describe, sequence, by_id, close_sql, by_id, close()], out.baton)
    described = ok_response(out.results[0]).describe.result
    assert [prm.name for prm in described.params] == [":a"]
    assert [c.name for c in described.cols] == ["y"] and described.is_readonly
    assert ok_response(out.results[1]).WhichOneof("response") == "sequence"
    assert unvalue(ok_response(out.results[2]).execute.result.rows[0].values[0]) == 0  # rolled back
    assert out.results[4].error.code == "SQL_NOT_FOUND"


def test_want_rows_false_returns_no_rows(acme: InProcess) -> None:
    request = http_pb.StreamRequest(
        execute=http_pb.ExecuteStreamReq(stmt=stmt("SELECT 1 UNION ALL SELECT 2", want_rows=False))
    )
    result = ok_response(pipeline(acme, [request, close()]).results[0]).execute.result
    assert len(result.rows) == 0 and [c.name for c in result.cols] == ["1"]


def test_the_root_form_takes_the_tenant_from_the_token(acme: InProcess) -> None:
    token = acme.token("acme")
    out = pipeline(acme, [execute("SELECT 42"), close()], path="/v3-protobuf/pipeline", headers=bearer(token))
    assert unvalue(ok_response(out.results[0]).execute.result.rows[0].values[0]) == 42
    r = acme.client.post("/v3-protobuf/pipeline", content=b"", headers=PROTOBUF)
    assert r.status_code == 401 and r.headers["content-type"] == "application/json"


def test_a_read_only_token_cannot_write(acme: InProcess) -> None:
    ro = bearer(acme.token("acme", "ro"))
    out = pipeline(acme, [execute("CREATE TABLE ro_t (x)"), close()], headers=ro)
    assert out.results[0].WhichOneof("result") == "error"


# -- cursors -------------------------------------------------------------------------------------


def cursor(app: InProcess, body: http_pb.CursorReqBody, path: str = f"{BASE}/v3-protobuf/cursor") -> Any:
    r = post(app, path, body.SerializeToString())
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    items = list(delimited(r.content))
    header = http_pb.CursorRespBody()
    header.ParseFromString(items[0])
    entries = []
    for item in items[1:]:
        entry = pb.CursorEntry()
        entry.ParseFromString(item)
        entries.append(entry)
    return header, entries


def test_a_cursor_streams_length_delimited_entries(acme: InProcess) -> None:
    body = http_pb.CursorReqBody(
        batch=batch(
            ("CREATE TABLE c (x)", None),
            ("INSERT INTO c VALUES (1), (2), (3)", None),
            ("SELECT x FROM c ORDER BY x", None),
            ("SELECT * FROM nowhere", None),
        )
    )
    header, entries = cursor(acme, body)
    kinds = [e.WhichOneof("entry") for e in entries]
    assert kinds == [
        *("step_begin", "step_end"),
        *("step_begin", "step_end"),
        *("step_begin", "row", "row", "row", "step_end"),
        "step_error",
    ]
    assert entries[3].step_end.affected_row_count == 3 and entries[3].step_end.last_insert_rowid == 3
    assert [c.name for c in entries[4].step_begin.cols] == ["x"] and entries[4].step_begin.step == 2
    assert [unvalue(e.row.values[0]) for e in entries[5:8]] == [1, 2, 3]
    assert entries[9].step_error.step == 3 and entries[9].step_error.error.code == "SQLITE_ERROR"
    pipeline(acme, [close()], header.baton)


def test_a_cursor_continues_a_pipeline_stream(acme: InProcess) -> None:
    out = pipeline(
        acme, [execute("CREATE TABLE cc (x)"), execute("BEGIN"), execute("INSERT INTO cc VALUES (9)")]
    )
    header, entries = cursor(
        acme, http_pb.CursorReqBody(baton=out.baton, batch=batch(("SELECT x FROM cc", None)))
    )
    assert [unvalue(e.row.values[0]) for e in entries if e.WhichOneof("entry") == "row"] == [9]
    pipeline(acme, [execute("ROLLBACK"), close()], header.baton)


# -- bad input -----------------------------------------------------------------------------------


def _slot_error(app: InProcess, request: http_pb.StreamRequest) -> str:
    """The error code the pipeline answers `request` with, in its slot (the request after it
    still runs)."""
    out = pipeline(app, [request, execute("SELECT 1"), close()])
    assert out.results[0].WhichOneof("result") == "error", out.results[0]
    assert out.results[1].WhichOneof("result") == "ok"
    return out.results[0].error.code


def test_malformed_requests_are_answered_in_their_slot(acme: InProcess) -> None:
    assert _slot_error(acme, http_pb.StreamRequest()) == "PROTOCOL_ERROR"  # nothing set
    both = http_pb.StreamRequest(execute=http_pb.ExecuteStreamReq(stmt=pb.Stmt(sql="SELECT 1", sql_id=1)))
    assert _slot_error(acme, both) == "PROTOCOL_ERROR"
    neither = http_pb.StreamRequest(execute=http_pb.ExecuteStreamReq(stmt=pb.Stmt()))
    assert _slot_error(acme, neither) == "PROTOCOL_ERROR"
    no_stmt = http_pb.StreamRequest(execute=http_pb.ExecuteStreamReq())
    assert _slot_error(acme, no_stmt) == "PROTOCOL_ERROR"
    unset_value = http_pb.StreamRequest(
        execute=http_pb.ExecuteStreamReq(stmt=pb.Stmt(sql="SELECT ?", args=[pb.Value()]))
    )
    assert _slot_error(acme, unset_value) == "PROTOCOL_ERROR"
    later = http_pb.StreamRequest(
        batch=http_pb.BatchStreamReq(batch=batch(("SELECT 1", pb.BatchCond(step_ok=0))))
    )
    assert _slot_error(acme, later) == "PROTOCOL_ERROR"
    empty_cond = http_pb.StreamRequest(batch=http_pb.BatchStreamReq(batch=batch(("SELECT 1", None))))
    empty_cond.batch.batch.steps.add().condition.SetInParent()
    empty_cond.batch.batch.steps[1].stmt.sql = "SELECT 2"
    assert _slot_error(acme, empty_cond) == "PROTOCOL_ERROR"
    unnamed = http_pb.StreamRequest(
        execute=http_pb.ExecuteStreamReq(
            stmt=pb.Stmt(sql="SELECT :a", named_args=[pb.NamedArg(name="", value=value(1))])
        )
    )
    assert _slot_error(acme, unnamed) == "PROTOCOL_ERROR"
    too_many = http_pb.StreamRequest(
        batch=http_pb.BatchStreamReq(batch=batch(*[("SELECT 1", None)] * (MAX + p.WRAPPER_STEPS + 1)))
    )
    assert _slot_error(acme, too_many) == "PROTOCOL_ERROR"


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xff\xff",  # a truncated varint
        b"\x12\x05\x0a",  # requests: a length past the end
        b"\x0a\x02\xc3\x28",  # baton: invalid UTF-8
        b"\x13",  # a start-group wire type
        http_pb.PipelineReqBody(baton="not a baton").SerializeToString(),
        http_pb.PipelineReqBody(requests=[close()] * (MAX + 1)).SerializeToString(),
    ],
    ids=["varint", "length", "utf8", "group", "baton", "requests"],
)
def test_a_malformed_pipeline_body_is_a_400(acme: InProcess, body: bytes) -> None:
    assert post(acme, f"{BASE}/v3-protobuf/pipeline", body).status_code == 400


def test_a_malformed_cursor_body_is_a_400(acme: InProcess) -> None:
    path = f"{BASE}/v3-protobuf/cursor"
    assert post(acme, path, b"").status_code == 400  # no batch
    assert post(acme, path, b"\x12\x03\x0a").status_code == 400
    later = http_pb.CursorReqBody(batch=batch(("SELECT 1", pb.BatchCond(step_error=5))))
    assert post(acme, path, later.SerializeToString()).status_code == 400


def _valid_messages() -> list[bytes]:
    """Well-formed bodies to mutate: every request kind, conditions, values."""
    not_ok = pb.BatchCond()
    getattr(not_ok, "not").CopyFrom(pb.BatchCond(step_ok=0))
    both = pb.BatchCond()
    getattr(both, "and").conds.extend([pb.BatchCond(step_ok=0), not_ok])
    named = pb.Stmt(sql="SELECT :a, :b", named_args=[pb.NamedArg(name=":a", value=value(1.5))])
    named.named_args.add(name=":b", value=value(b"\x00"))
    requests = [
        execute("SELECT ?, ?, ?, ?, ?", None, -5, 2.5, "t", b"b"),
        http_pb.StreamRequest(execute=http_pb.ExecuteStreamReq(stmt=named)),
        http_pb.StreamRequest(
            batch=http_pb.BatchStreamReq(
                batch=batch(("SELECT 1", None), ("SELECT 2", both), ("SELECT 3", not_ok))
            )
        ),
        http_pb.StreamRequest(sequence=http_pb.SequenceStreamReq(sql="SELECT 1; SELECT 2")),
        http_pb.StreamRequest(describe=http_pb.DescribeStreamReq(sql="SELECT ?")),
        http_pb.StreamRequest(store_sql=http_pb.StoreSqlStreamReq(sql_id=3, sql="SELECT 3")),
        http_pb.StreamRequest(close_sql=http_pb.CloseSqlStreamReq(sql_id=3)),
        close(),
    ]
    return [
        http_pb.PipelineReqBody(requests=requests).SerializeToString(),
        http_pb.CursorReqBody(batch=batch(("SELECT 1", None), ("SELECT 2", both))).SerializeToString(),
    ]


def _close_stream(app: InProcess, r: httpx2.Response, endpoint: str) -> None:
    """End a stream a fuzzed body left open (it may hold a transaction, and the tenant)."""
    if r.status_code != 200:
        return
    if endpoint == "pipeline":
        out = http_pb.PipelineRespBody()
        out.ParseFromString(r.content)
        baton = out.baton if out.HasField("baton") else None
    else:
        header = http_pb.CursorRespBody()
        header.ParseFromString(next(delimited(r.content)))
        baton = header.baton if header.HasField("baton") else None
    if baton:
        pipeline(app, [close()], baton)


@pytest.mark.parametrize("endpoint", ["pipeline", "cursor"])
def test_random_bytes_never_get_a_5xx(acme: InProcess, endpoint: str) -> None:
    @FUZZ
    @given(body=st.binary(max_size=200))
    def check(body: bytes) -> None:
        _close_stream(acme, post(acme, f"{BASE}/v3-protobuf/{endpoint}", body), endpoint)

    check()


@pytest.mark.parametrize("endpoint", ["pipeline", "cursor"])
def test_mutated_messages_never_get_a_5xx(acme: InProcess, endpoint: str) -> None:
    """Well-formed messages cut, spliced or with bytes swapped in: mostly still parseable
    protobuf, with other wire types, lengths, oneofs and out-of-range numbers."""
    valid = _valid_messages()[0 if endpoint == "pipeline" else 1]

    @FUZZ
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        raw = bytearray(_mutate(data, valid))
        _close_stream(acme, post(acme, f"{BASE}/v3-protobuf/{endpoint}", bytes(raw)), endpoint)

    check()


def _mutate(data: st.DataObject, valid: bytes) -> bytes:
    raw = bytearray(valid)
    for _ in range(data.draw(st.integers(min_value=1, max_value=4), label="mutations")):
        at = data.draw(st.integers(min_value=0, max_value=len(raw)), label="at")
        kind = data.draw(st.sampled_from(["cut", "insert", "replace", "flip"]), label="kind")
        piece = data.draw(st.binary(min_size=1, max_size=4), label="piece")
        if kind == "cut":
            del raw[at:]
        elif kind == "insert":
            raw[at:at] = piece
        elif kind == "replace":
            raw[at : at + len(piece)] = piece
        elif at < len(raw):
            raw[at] ^= 1 << data.draw(st.integers(min_value=0, max_value=7), label="bit")
    return bytes(raw)


def test_the_tenant_still_answers_after_the_fuzzing(acme: InProcess) -> None:
    assert acme.query("acme", "select 1").json()["rows"] == [[1]]


# -- the WebSocket messages ----------------------------------------------------------------------


def _ws_client_msgs() -> list[bytes]:
    hello = ws_pb.ClientMsg(hello=ws_pb.HelloMsg(jwt="x.y.z"))
    msgs = [hello]
    requests: list[dict[str, Any]] = [
        {"open_stream": ws_pb.OpenStreamReq(stream_id=1)},
        {"execute": ws_pb.ExecuteReq(stream_id=1, stmt=stmt("SELECT ?", 1))},
        {"batch": ws_pb.BatchReq(stream_id=1, batch=batch(("SELECT 1", None)))},
        {"open_cursor": ws_pb.OpenCursorReq(stream_id=1, cursor_id=2, batch=batch(("SELECT 1", None)))},
        {"fetch_cursor": ws_pb.FetchCursorReq(cursor_id=2, max_count=10)},
        {"close_cursor": ws_pb.CloseCursorReq(cursor_id=2)},
        {"sequence": ws_pb.SequenceReq(stream_id=1, sql_id=4)},
        {"describe": ws_pb.DescribeReq(stream_id=1, sql="SELECT 1")},
        {"store_sql": ws_pb.StoreSqlReq(sql_id=4, sql="SELECT 4")},
        {"close_sql": ws_pb.CloseSqlReq(sql_id=4)},
        {"get_autocommit": ws_pb.GetAutocommitReq(stream_id=1)},
        {"close_stream": ws_pb.CloseStreamReq(stream_id=1)},
    ]
    for index, fields in enumerate(requests):
        msgs.append(ws_pb.ClientMsg(request=ws_pb.RequestMsg(request_id=index, **fields)))
    return [m.SerializeToString() for m in msgs]


def test_every_websocket_client_message_decodes() -> None:
    decoded = [codec_protobuf.decode_ws_client_msg(m, MAX) for m in _ws_client_msgs()]
    assert decoded[0] == p.Hello("x.y.z")
    requests = [d for d in decoded[1:] if isinstance(d, p.WsRequest)]
    assert [r.kind for r in requests] == [
        *("open_stream", "execute", "batch", "open_cursor", "fetch_cursor", "close_cursor"),
        *("sequence", "describe", "store_sql", "close_sql", "get_autocommit", "close_stream"),
    ]
    assert requests[1].request == p.Request("execute", stmt=p.Stmt("SELECT ?", None, [1], {}))
    assert (requests[3].stream_id, requests[3].cursor_id, requests[4].max_count) == (1, 2, 10)
    assert requests[6].request == p.Request("sequence", sql_id=4)
    assert codec_protobuf.decode_ws_client_msg(
        ws_pb.ClientMsg(hello=ws_pb.HelloMsg()).SerializeToString(), MAX
    ) == (p.Hello(None))
    with pytest.raises(ProtocolError):
        codec_protobuf.decode_ws_client_msg(b"", MAX)  # nothing set
    bad = ws_pb.ClientMsg(request=ws_pb.RequestMsg(request_id=9, execute=ws_pb.ExecuteReq(stream_id=1)))
    with pytest.raises(p.InvalidRequest) as raised:
        codec_protobuf.decode_ws_client_msg(bad.SerializeToString(), MAX)
    assert raised.value.request_id == 9
    with pytest.raises(p.InvalidMessage):
        codec_protobuf.decode_ws_client_msg(b"\xff", MAX)


def test_websocket_decoders_raise_only_protocol_errors() -> None:
    valid = _ws_client_msgs()

    @FUZZ
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        raw = _mutate(data, data.draw(st.sampled_from(valid), label="message"))
        with contextlib.suppress(ProtocolError):
            codec_protobuf.decode_ws_client_msg(raw, MAX)
        with contextlib.suppress(ProtocolError):
            codec_json.decode_ws_client_msg(raw, MAX)

    check()


def test_server_messages_mark_empty_responses_present() -> None:
    outcome = p.Outcome(_result(), want_rows=True)
    messages: list[p.ServerMsg] = [
        p.HelloOk(),
        p.HelloError(p.Error("no", "AUTH_JWT_INVALID")),
        *(p.ResponseOk(1, p.Response(kind)) for kind in ("open_stream", "close_stream", "open_cursor")),
        p.ResponseOk(2, p.Response("execute", result=outcome)),
        p.ResponseOk(3, p.Response("batch", batch=[outcome, None, p.Outcome(error=p.Error("bad", "X"))])),
        p.ResponseOk(
            4, p.Response("fetch_cursor", entries=[p.RowEntry((1, None)), p.StepEnd(0, None)], done=True)
        ),
        p.ResponseOk(5, p.Response("get_autocommit", is_autocommit=False)),
        p.ResponseError(6, p.Error("\ud800 lone surrogate", None)),
    ]
    parsed = []
    for msg in messages:
        out = ws_pb.ServerMsg()
        out.ParseFromString(codec_protobuf.encode_ws_server_msg(msg))
        parsed.append(out)
    assert [m.WhichOneof("msg") for m in parsed] == [
        "hello_ok",
        "hello_error",
        *["response_ok"] * 7,
        "response_error",
    ]
    assert [m.response_ok.WhichOneof("response") for m in parsed[2:5]] == [
        "open_stream",
        "close_stream",
        "open_cursor",
    ]
    assert unvalue(parsed[5].response_ok.execute.result.rows[0].values[0]) == 7
    assert sorted(parsed[6].response_ok.batch.result.step_results) == [0]
    assert sorted(parsed[6].response_ok.batch.result.step_errors) == [2]
    fetched = parsed[7].response_ok.fetch_cursor
    assert fetched.done and [e.WhichOneof("entry") for e in fetched.entries] == ["row", "step_end"]
    assert parsed[8].response_ok.WhichOneof("response") == "get_autocommit"
    assert codec_json.encode_ws_server_msg(messages[0]) == '{"type":"hello_ok"}'


def _result() -> QueryResult:
    return QueryResult(["x"], [None], [(7,)])


# -- one model, two encodings --------------------------------------------------------------------

VALUES = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),  # JSON has neither
    st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=8),
    st.binary(max_size=8),
)
INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
STMTS = st.builds(
    lambda text, sql_id, use_id, args, named, want_rows: p.Stmt(
        None if use_id else text, sql_id if use_id else None, [] if named else args, named, want_rows
    ),
    st.text(max_size=10),
    INT32,
    st.booleans(),
    st.lists(VALUES, max_size=3),
    st.dictionaries(st.text(min_size=1, max_size=4), VALUES, max_size=3),
    st.booleans(),
)


def _conds(index: int) -> st.SearchStrategy[p.Cond]:
    leaves: st.SearchStrategy[p.Cond] = st.just(p.Cond("is_autocommit"))
    if index:
        leaves = st.one_of(
            leaves, st.builds(p.Cond, st.sampled_from(["ok", "error"]), st.integers(0, index - 1))
        )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.builds(lambda c: p.Cond("not", conds=(c,)), inner),
            st.builds(
                lambda k, cs: p.Cond(k, conds=tuple(cs)),
                st.sampled_from(["and", "or"]),
                st.lists(inner, max_size=3),
            ),
        ),
        max_leaves=6,
    )


@st.composite
def batches(draw: st.DrawFn) -> p.Batch:
    steps = []
    for index in range(draw(st.integers(0, 4))):
        cond = draw(st.one_of(st.none(), _conds(index)))
        steps.append(p.Step(draw(STMTS), cond))
    return p.Batch(steps)


REQUESTS = st.one_of(
    st.builds(lambda s: p.Request("execute", stmt=s), STMTS),
    st.builds(lambda b: p.Request("batch", batch=b), batches()),
    st.builds(
        lambda kind, sql, sql_id, use_id: p.Request(
            kind, sql=None if use_id else sql, sql_id=sql_id if use_id else None
        ),
        st.sampled_from(["sequence", "describe"]),
        st.text(max_size=10),
        INT32,
        st.booleans(),
    ),
    st.builds(
        lambda sql_id, sql: p.Request("store_sql", sql=sql, sql_id=sql_id), INT32, st.text(max_size=10)
    ),
    st.builds(lambda sql_id: p.Request("close_sql", sql_id=sql_id), INT32),
    st.sampled_from([p.Request("close"), p.Request("get_autocommit")]),
)


def _json_stmt(s: p.Stmt) -> dict[str, Any]:
    out: dict[str, Any] = {"args": [encode_value(a) for a in s.args], "want_rows": s.want_rows}
    out["named_args"] = [{"name": k, "value": encode_value(v)} for k, v in s.named_args.items()]
    out |= {"sql": s.sql} if s.sql is not None else {"sql_id": s.sql_id}
    return out


def _json_cond(c: p.Cond) -> dict[str, Any]:
    if c.kind in ("ok", "error"):
        return {"type": c.kind, "step": c.step}
    if c.kind == "not":
        return {"type": "not", "cond": _json_cond(c.conds[0])}
    if c.kind in ("and", "or"):
        return {"type": c.kind, "conds": [_json_cond(x) for x in c.conds]}
    return {"type": c.kind}


def _json_request(r: p.Request) -> dict[str, Any]:
    out: dict[str, Any] = {"type": r.kind}
    if r.stmt is not None:
        out["stmt"] = _json_stmt(r.stmt)
    if r.batch is not None:
        out["batch"] = {
            "steps": [
                {
                    "stmt": _json_stmt(s.stmt),
                    **({"condition": _json_cond(s.condition)} if s.condition else {}),
                }
                for s in r.batch.steps
            ]
        }
    if r.sql is not None:
        out["sql"] = r.sql
    if r.sql_id is not None:
        out["sql_id"] = r.sql_id
    return out


def _pb_stmt(s: p.Stmt) -> pb.Stmt:
    out = pb.Stmt(args=[value(a) for a in s.args], want_rows=s.want_rows)
    for name, v in s.named_args.items():
        out.named_args.add(name=name, value=value(v))
    if s.sql is not None:
        out.sql = s.sql
    else:
        out.sql_id = s.sql_id or 0
    return out


def _pb_cond(c: p.Cond) -> pb.BatchCond:
    out = pb.BatchCond()
    if c.kind == "ok":
        out.step_ok = c.step
    elif c.kind == "error":
        out.step_error = c.step
    elif c.kind == "not":
        getattr(out, "not").CopyFrom(_pb_cond(c.conds[0]))
    elif c.kind in ("and", "or"):
        getattr(out, c.kind).SetInParent()
        getattr(out, c.kind).conds.extend([_pb_cond(x) for x in c.conds])
    else:
        out.is_autocommit.SetInParent()
    return out


def _pb_request(r: p.Request) -> http_pb.StreamRequest:
    out = http_pb.StreamRequest()
    sub = getattr(out, r.kind)
    sub.SetInParent()
    if r.stmt is not None:
        sub.stmt.CopyFrom(_pb_stmt(r.stmt))
    if r.batch is not None:
        sub.batch.SetInParent()
        for s in r.batch.steps:
            step = sub.batch.steps.add()
            step.stmt.CopyFrom(_pb_stmt(s.stmt))
            if s.condition is not None:
                step.condition.CopyFrom(_pb_cond(s.condition))
    if r.sql is not None:
        sub.sql = r.sql
    if r.sql_id is not None:
        sub.sql_id = r.sql_id
    return out


def test_json_and_protobuf_decode_to_the_same_requests() -> None:
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(requests=st.lists(REQUESTS, max_size=4), baton=st.one_of(st.none(), st.text(max_size=5)))
    def check(requests: list[p.Request], baton: str | None) -> None:
        as_json = json.dumps({"baton": baton, "requests": [_json_request(r) for r in requests]}).encode()
        as_pb = http_pb.PipelineReqBody(requests=[_pb_request(r) for r in requests])
        if baton is not None:
            as_pb.baton = baton
        from_json = codec_json.decode_pipeline_request(as_json, MAX)
        from_pb = codec_protobuf.decode_pipeline_request(as_pb.SerializeToString(), MAX)
        assert from_json == from_pb == p.PipelineRequest(baton, list(requests))

    check()
