"""Hrana over WebSocket, message by message, against the real app behind the real uvicorn: the
handshake, hello and re-hello, expiry of the token, every way a connection can go wrong (each a
clean Hrana error or close code), and that however it ends no stream is left behind."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from router.hrana.proto import hrana_ws_pb2
from router.hrana.ws.stored_sql import MAX_STORED_SQL
from router.hrana.ws.versions import negotiate
from tenants.execute import Statement
from tests.support.app import ADMIN_KEY, bearer
from tests.support.waiting import wait_until
from tests.support.websocket import HranaSocket, Live, execute, hrana_socket, integer, live_server

MAX_STREAMS = 4  # per tenant
MAX_BODY = 64 << 10
MAX_SOCKETS = 6
IDLE = 2.0


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    data = tmp_path_factory.mktemp("ws") / "data"
    with live_server(
        data,
        backups=False,
        max_streams_per_tenant=MAX_STREAMS,
        max_body_bytes=MAX_BODY,
        max_websockets=MAX_SOCKETS,
        stream_idle_timeout=IDLE,
        busy_timeout=1.0,
        preempt_wait=0.3,
    ) as running:
        yield running


@pytest.fixture
def tenant(live: Live, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh tenant per test; afterwards no stream and no connection may be left open."""
    name = "ws-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.removeprefix("test_").lower())[:55]
    live.create(name)
    yield name
    wait_until(lambda: live.streams_open() == 0 and live.server.context.websockets == 0, timeout=30)


def _open(s: HranaSocket, stream_id: int) -> None:
    assert s.call({"type": "open_stream", "stream_id": stream_id})["type"] == "response_ok"


def _open_with_an_uncommitted_row(s: HranaSocket, begin: str = "BEGIN") -> None:
    """Stream 1, open, in a transaction that has inserted one row into a new table t."""
    _open(s, 1)
    for sql in ("CREATE TABLE t (x)", begin, "INSERT INTO t VALUES (1)"):
        assert s.call(execute(1, sql))["type"] == "response_ok"


def _value(msg: dict[str, Any]) -> Any:
    assert msg["type"] == "response_ok", msg
    return msg["response"]["result"]["rows"][0][0]["value"]


# -- handshake ---------------------------------------------------------------------------------


def test_negotiation_prefers_the_newest_offered_and_echoes_its_spelling() -> None:
    assert negotiate(["hrana2", "hrana1", "hrana3"]) == "hrana3"
    assert negotiate(["hrana3", "hrana3-protobuf"]) == "hrana3-protobuf"
    assert negotiate([" HRANA2 "]) == "HRANA2"
    assert negotiate([]) == ""  # no header at all: hrana1, and no header back
    assert negotiate(["graphql-ws", "hrana4"]) is None


def test_each_subprotocol_is_served_at_both_url_forms(live: Live, tenant: str) -> None:
    token = live.token(tenant)
    for url in (live.ws_url, f"{live.ws_url}/v1/tenants/{tenant}", f"{live.ws_url}/v1/tenants/{tenant}/"):
        for offered, chosen in (
            (["hrana2", "hrana3"], "hrana3"),
            (["hrana2"], "hrana2"),
            (["hrana1"], "hrana1"),
        ):
            with hrana_socket(url, offered) as s:
                assert s.subprotocol == chosen
                assert s.hello(token) == {"type": "hello_ok"}
                _open(s, 1)
                assert _value(s.call(execute(1, "SELECT ?", [integer(1 << 62)]))) == str(1 << 62)


def test_no_subprotocol_means_hrana1(live: Live, tenant: str) -> None:
    with hrana_socket(live.ws_url, []) as s:
        assert s.subprotocol is None
        assert s.hello(live.token(tenant)) == {"type": "hello_ok"}
        s.request({"type": "store_sql", "sql_id": 1, "sql": "SELECT 1"})
        code, reason = s.closed_with()
    assert code == 1008 and reason is not None and "hrana2 and higher" in reason


def test_an_unsupported_subprotocol_is_refused_with_400(live: Live) -> None:
    with pytest.raises(InvalidStatus) as refused, hrana_socket(live.ws_url, ["graphql-ws"]):
        pass
    assert refused.value.response.status_code == 400
    assert b"hrana3-protobuf hrana3 hrana2 hrana1" in refused.value.response.body


def test_past_max_websockets_the_upgrade_gets_503(live: Live, tenant: str) -> None:
    wait_until(lambda: live.server.context.websockets == 0)
    sockets = [hrana_socket(live.ws_url) for _ in range(MAX_SOCKETS)]
    opened = [cm.__enter__() for cm in sockets]
    try:
        with pytest.raises(InvalidStatus) as refused, hrana_socket(live.ws_url):
            pass
        assert refused.value.response.status_code == 503
        assert refused.value.response.headers["Retry-After"] == "1"
    finally:
        for cm in sockets:
            cm.__exit__(None, None, None)
    assert len(opened) == MAX_SOCKETS
    wait_until(lambda: live.server.context.websockets == 0)
    with hrana_socket(live.ws_url) as s:  # room again
        assert s.hello(live.token(tenant)) == {"type": "hello_ok"}


# -- hello -------------------------------------------------------------------------------------


@pytest.mark.parametrize("jwt", [None, "", "not-a-token"])
def test_a_bad_hello_is_a_hello_error_then_close(live: Live, tenant: str, jwt: str | None) -> None:
    with hrana_socket(live.ws_url) as s:
        s.send({"type": "hello", "jwt": jwt})
        # pipelined: must be ignored (the server may have answered and closed already)
        with contextlib.suppress(ConnectionClosed):
            s.request({"type": "open_stream", "stream_id": 1})
        answer = s.recv()
        code, _ = s.closed_with()
    assert answer["type"] == "hello_error", answer
    assert answer["error"]["message"].startswith("Authentication failed")
    assert answer["error"]["code"] == "UNAUTHORIZED"
    assert code == 1000


def test_hello_for_another_tenant_or_none_is_refused(live: Live, tenant: str) -> None:
    live.create(tenant + "-b")
    other = live.token(tenant + "-b")
    cases = [
        (f"{live.ws_url}/v1/tenants/{tenant}", other, "FORBIDDEN"),  # another tenant's token
        (live.ws_url, ADMIN_KEY, "TENANT_REQUIRED"),  # the admin key names no tenant at the root
        (f"{live.ws_url}/v1/tenants/nope", ADMIN_KEY, "TENANT_NOT_FOUND"),
    ]
    for url, token, code in cases:
        with hrana_socket(url) as s:
            answer = s.hello(token)
            assert (answer["type"], answer["error"]["code"]) == ("hello_error", code), answer
            assert s.closed_with()[0] == 1000
    with hrana_socket(f"{live.ws_url}/v1/tenants/{tenant}") as s:  # the admin key at the path form
        assert s.hello(ADMIN_KEY) == {"type": "hello_ok"}


def test_a_request_before_hello_closes_1008(live: Live, tenant: str) -> None:
    with hrana_socket(live.ws_url) as s:
        s.request({"type": "open_stream", "stream_id": 1})
        assert s.closed_with() == (1008, "PROTOCOL_ERROR: Received a request before hello message")


def test_rehello_switches_access_but_not_the_tenant(live: Live, tenant: str) -> None:
    with hrana_socket(live.ws_url) as s:
        assert s.hello(live.token(tenant)) == {"type": "hello_ok"}
        _open(s, 1)
        assert s.call(execute(1, "CREATE TABLE t (x)"))["type"] == "response_ok"
        assert s.hello(live.token(tenant, "ro")) == {"type": "hello_ok"}
        refused = s.call(execute(1, "INSERT INTO t VALUES (1)"))
        assert refused["error"]["code"] == "SQLITE_READONLY", refused
        live.create(tenant + "-b")
        answer = s.hello(live.token(tenant + "-b"))
        assert (answer["type"], answer["error"]["code"]) == ("hello_error", "FORBIDDEN")
        assert s.closed_with()[0] == 1000


def _short_lived(live: Live, tenant: str) -> tuple[str, float]:
    """A token that expires in a few seconds, and when."""
    token = live.token(tenant, expires_in=3)
    return token, float(jwt.decode(token, options={"verify_signature": False})["exp"])


def _sleep_past(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()) + 0.2)


def test_an_expired_token_closes_the_connection_and_rolls_back(live: Live, tenant: str) -> None:
    token, expires = _short_lived(live, tenant)
    with hrana_socket(live.ws_url) as s:
        assert s.hello(token) == {"type": "hello_ok"}
        _open_with_an_uncommitted_row(s)
        _sleep_past(expires)
        s.request(execute(1, "COMMIT"))
        code, reason = s.closed_with()
    assert code == 1008 and reason is not None and reason.startswith("AUTH_JWT_EXPIRED"), reason
    wait_until(lambda: live.streams_open() == 0)
    _assert_rows_now(live, tenant, [])


def test_a_fresh_hello_keeps_a_connection_past_its_first_token(live: Live, tenant: str) -> None:
    token, expires = _short_lived(live, tenant)
    with hrana_socket(live.ws_url) as s:
        assert s.hello(token) == {"type": "hello_ok"}
        assert s.hello(live.token(tenant)) == {"type": "hello_ok"}
        _sleep_past(expires)
        _open(s, 1)
        assert _value(s.call(execute(1, "SELECT 1"))) == "1"


def test_a_revoked_token_closes_the_connection(live: Live, tenant: str) -> None:
    with hrana_socket(live.ws_url) as s:
        assert s.hello(live.token(tenant)) == {"type": "hello_ok"}
        _open(s, 1)
        r = live.client.post(f"/v1/admin/tenants/{tenant}/tokens/revoke", headers=bearer(ADMIN_KEY))
        assert r.status_code in (200, 204), r.text
        s.request(execute(1, "SELECT 1"))
        code, reason = s.closed_with()
    assert code == 1008 and reason is not None and reason.startswith("AUTH_FAILED"), reason


# -- malformed messages ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", 1007),
        ("[1, 2]", 1007),
        ('{"type": "bogus"}', 1008),
        (b"\x00\x01", 1003),  # a binary frame on a JSON subprotocol
    ],
)
def test_a_message_that_is_not_one_closes(live: Live, tenant: str, frame: str | bytes, code: int) -> None:
    with hrana_socket(live.ws_url) as s:
        assert s.hello(live.token(tenant)) == {"type": "hello_ok"}
        _open(s, 1)
        assert s.call(execute(1, "BEGIN"))["type"] == "response_ok"  # rolled back with the socket
        s.send(frame)
        assert s.closed_with()[0] == code


@pytest.mark.parametrize(
    ("frame", "code"),
    [("{not json", 1007), ('{"type": "bogus"}', 1008), (b"\x00\x01", 1003)],
)
def test_bad_message_after_requests_answers_them_first(
    live: Live, tenant: str, frame: str | bytes, code: int
) -> None:
    """A connection that ends for a bad message still answers what the client sent before it
    (each request within its own bounds), then closes: its close does not cut them off."""
    with hrana_socket(live.ws_url) as s:
        assert s.hello(live.token(tenant)) == {"type": "hello_ok"}
        _open(s, 1)
        slow = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300000)"
        slow += " SELECT count(*) FROM n"
        first = s.request(execute(1, "SELECT 41 + 1"))
        second = s.request(execute(1, slow))
        s.send(frame)  # at once: both requests are still in flight
        answers = {msg["request_id"]: msg for msg in (s.recv(), s.recv())}
        assert answers[first]["type"] == "response_ok" and _value(answers[first]) == "42"
        assert answers[second]["type"] == "response_ok" and _value(answers[second]) == "300000"
        assert s.closed_with()[0] == code


def test_protobuf_frames_are_binary_only(live: Live, tenant: str) -> None:
    hello = _protobuf_hello(live.token(tenant))
    with hrana_socket(live.ws_url, ["hrana3-protobuf"]) as s:
        assert s.subprotocol == "hrana3-protobuf"
        s.send(hello)
        assert s.conn.recv(30) == b"\x0a\x00"  # ServerMsg{hello_ok: {}}
        s.send('{"type": "hello", "jwt": null}')
        assert s.closed_with()[0] == 1003
    with hrana_socket(live.ws_url, ["hrana3-protobuf"]) as s:
        s.send(b"\xff\xff\xff")
        assert s.closed_with()[0] == 1007


def _protobuf_hello(jwt: str) -> bytes:
    msg = hrana_ws_pb2.ClientMsg()
    msg.hello.jwt = jwt
    return msg.SerializeToString()


def test_a_malformed_or_unknown_request_is_its_error(live: Live, tenant: str) -> None:
    with hrana_socket(live.ws_url) as s:
        assert s.hello(live.token(tenant)) == {"type": "hello_ok"}
        _open(s, 1)
        for request in (
            {"type": "frobnicate", "stream_id": 1},
            {"type": "execute", "stream_id": 1, "stmt": {"sql": "SELECT 1", "args": [{"type": "integer"}]}},
            {"type": "execute", "stream_id": 1, "stmt": {"sql": "SELECT 1", "sql_id": 4}},
            {"type": "execute", "stream_id": 1, "stmt": {"sql_id": 99}},  # never stored
        ):
            answer = s.call(request)
            assert answer["type"] == "response_error", answer
            assert answer["error"]["code"] in ("PROTOCOL_ERROR", "SQL_NOT_FOUND"), answer
        assert _value(s.call(execute(1, "SELECT 2"))) == "2"  # still going


@pytest.mark.parametrize(
    ("requests", "reason"),
    [
        ([{"type": "open_stream", "stream_id": 1}, {"type": "open_stream", "stream_id": 1}], "already open"),
        ([execute(7, "SELECT 1")], "stream 7 is not open"),
        ([{"type": "store_sql", "sql_id": 1, "sql": "SELECT 1"}] * 2, "already stored"),
        ([{"type": "fetch_cursor", "cursor_id": 3, "max_count": 1}], "cursor 3 is not open"),
    ],
)
def test_a_protocol_violation_closes_1008(
    live: Live, tenant: str, requests: list[dict[str, object]], reason: str
) -> None:
    with hrana_socket(live.ws_url) as s:
        assert s.hello(live.token(tenant)) == {"type": "hello_ok"}
        for request in requests:
            s.request(request)
        code, said = s.closed_with()
    assert code == 1008 and said is not None and reason in said, said


def test_an_oversized_message_closes_1009_and_rolls_back(live: Live, tenant: str) -> None:
    with hrana_socket(live.ws_url) as s:
        assert s.hello(live.token(tenant)) == {"type": "hello_ok"}
        _open_with_an_uncommitted_row(s)
        s.request(execute(1, "SELECT '" + "x" * MAX_BODY + "'"))
        assert s.closed_with()[0] == 1009
    wait_until(lambda: live.streams_open() == 0)
    _assert_rows_now(live, tenant, [])


# -- streams -----------------------------------------------------------------------------------


def test_a_socket_closed_inside_a_transaction_rolls_back_and_frees_the_tenant(
    live: Live, tenant: str
) -> None:
    with hrana_socket(live.ws_url) as s:
        assert s.hello(live.token(tenant)) == {"type": "hello_ok"}
        _open_with_an_uncommitted_row(s, "BEGIN IMMEDIATE")
        assert live.streams_open() == 1
    wait_until(lambda: live.streams_open() == 0)
    _assert_rows_now(live, tenant, [])  # the lock went with the stream: no 503 after busy_timeout


def test_too_many_streams_is_an_error_per_stream(live: Live, tenant: str) -> None:
    with hrana_socket(live.ws_url) as s:
        assert s.hello(live.token(tenant)) == {"type": "hello_ok"}
        for stream_id in range(MAX_STREAMS):
            _open(s, stream_id)
        refused = s.call({"type": "open_stream", "stream_id": MAX_STREAMS})
        assert (refused["type"], refused["error"]["code"]) == ("response_error", "TOO_MANY_STREAMS")
        again = s.call(execute(MAX_STREAMS, "SELECT 1"))  # its requests hear the same
        assert again["error"]["code"] == "TOO_MANY_STREAMS"
        assert s.call({"type": "close_stream", "stream_id": MAX_STREAMS})["type"] == "response_ok"
        assert s.call({"type": "close_stream", "stream_id": 0})["type"] == "response_ok"
        _open(s, MAX_STREAMS)  # room for one again; the id is free again
        assert live.streams_open() == MAX_STREAMS


def test_requests_of_one_stream_run_in_order_while_others_go_on(live: Live, tenant: str) -> None:
    with hrana_socket(live.ws_url) as s:
        assert s.hello(live.token(tenant)) == {"type": "hello_ok"}
        # all pipelined, none awaited: open, write, read and close on two streams
        ids = [
            s.request({"type": "open_stream", "stream_id": 1}),
            s.request({"type": "open_stream", "stream_id": 2}),
            s.request(execute(1, "CREATE TABLE t (x)")),
            s.request({"type": "store_sql", "sql_id": 9, "sql": "INSERT INTO t VALUES (?)"}),
            s.request({"type": "execute", "stream_id": 1, "stmt": {"sql_id": 9, "args": [integer(1)]}}),
            s.request({"type": "close_sql", "sql_id": 9}),  # after the request that uses it was read
            s.request(execute(1, "SELECT count(*) FROM t")),
            s.request(execute(2, "SELECT 42")),
            s.request({"type": "close_stream", "stream_id": 1}),
            s.request({"type": "close_stream", "stream_id": 2}),
        ]
        answers = {msg["request_id"]: msg for msg in (s.recv() for _ in ids)}
        assert all(answers[i]["type"] == "response_ok" for i in ids), answers
        assert _value(answers[ids[6]]) == "1"
        assert _value(answers[ids[7]]) == "42"


def test_a_connection_stores_more_sql_than_a_client_caches(live: Live, tenant: str) -> None:
    with hrana_socket(live.ws_url) as s:
        assert s.hello(live.token(tenant)) == {"type": "hello_ok"}
        for sql_id in range(MAX_STORED_SQL):
            assert (
                s.call({"type": "store_sql", "sql_id": sql_id, "sql": f"SELECT {sql_id}"})["type"]
                == "response_ok"
            )
        refused = s.call({"type": "store_sql", "sql_id": -1, "sql": "SELECT 1"})
        assert refused["error"]["code"] == "SQL_STORE_TOO_MANY"
        _open(s, 1)
        assert _value(s.call({"type": "execute", "stream_id": 1, "stmt": {"sql_id": 120}})) == "120"


def test_an_idle_stream_expires_and_says_so(live: Live, tenant: str) -> None:
    with hrana_socket(live.ws_url) as s:
        assert s.hello(live.token(tenant)) == {"type": "hello_ok"}
        _open(s, 1)
        assert s.call(execute(1, "BEGIN"))["type"] == "response_ok"
        wait_until(lambda: live.streams_open() == 0, timeout=IDLE * 10)
        expired = s.call(execute(1, "COMMIT"))
        assert expired["error"]["code"] == "STREAM_EXPIRED", expired
        assert "rolled back" in expired["error"]["message"]
        assert s.call({"type": "close_stream", "stream_id": 1})["type"] == "response_ok"


def test_a_preempted_stream_errs_and_the_socket_goes_on(live: Live, tenant: str) -> None:
    with hrana_socket(live.ws_url) as s:
        assert s.hello(live.token(tenant)) == {"type": "hello_ok"}
        _open_with_an_uncommitted_row(s, "BEGIN IMMEDIATE")
        with live.server.fleet.pool.lease(tenant, preempt="an operator needs the tenant"):
            pass
        ended = s.call(execute(1, "COMMIT"))
        assert ended["error"]["code"] == "STREAM_EXPIRED", ended
        assert "an operator needs the tenant" in ended["error"]["message"]
        assert s.call(execute(1, "SELECT 1"))["error"]["code"] == "STREAM_EXPIRED"  # for good
        _open(s, 2)
        assert _value(s.call(execute(2, "SELECT count(*) FROM t"))) == "0"
        assert s.call({"type": "close_stream", "stream_id": 1})["type"] == "response_ok"


def test_a_cursor_streams_and_closes(live: Live, tenant: str) -> None:
    with hrana_socket(live.ws_url) as s:
        assert s.hello(live.token(tenant)) == {"type": "hello_ok"}
        _open(s, 1)
        count = 1000
        many = f"WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < {count}) "
        many += "SELECT x FROM n"
        batch = {"steps": [{"stmt": {"sql": many}}, {"stmt": {"sql": "SELECT * FROM nowhere"}}]}
        assert (
            s.call({"type": "open_cursor", "stream_id": 1, "cursor_id": 5, "batch": batch})["type"]
            == "response_ok"
        )
        entries: list[dict[str, object]] = []
        done = False
        while not done:
            answer = s.call({"type": "fetch_cursor", "cursor_id": 5, "max_count": 300})
            response = answer["response"]
            assert len(response["entries"]) <= 300
            entries += response["entries"]
            done = response["done"]
        kinds = [e["type"] for e in entries]
        assert kinds == ["step_begin", *["row"] * count, "step_end", "step_error"], kinds[-3:]
        assert s.call({"type": "close_cursor", "cursor_id": 5})["type"] == "response_ok"
        # closed early: the batch stops, the stream is free for the next request
        assert (
            s.call({"type": "open_cursor", "stream_id": 1, "cursor_id": 5, "batch": batch})["type"]
            == "response_ok"
        )
        assert s.call({"type": "fetch_cursor", "cursor_id": 5, "max_count": 2})["type"] == "response_ok"
        assert s.call({"type": "close_cursor", "cursor_id": 5})["type"] == "response_ok"
        assert _value(s.call(execute(1, "SELECT 3"))) == "3"


def _assert_rows_now(live: Live, tenant: str, rows: list[list[object]]) -> None:
    r = live.client.post(
        f"/v1/tenants/{tenant}/query", json={"sql": "SELECT x FROM t"}, headers=bearer(ADMIN_KEY)
    )
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == rows


def test_shutdown_closes_open_sockets_with_1012_and_rolls_back(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        other = stack.enter_context(live_server(tmp_path / "data", backups=False))
        other.create("acme")
        s = stack.enter_context(hrana_socket(other.ws_url))  # exits first: after the server stops
        assert s.hello(other.token("acme")) == {"type": "hello_ok"}
        _open_with_an_uncommitted_row(s)
        other.stop()  # uvicorn's shutdown: open sockets get 1012
        assert s.closed_with()[0] == 1012
    with live_server(tmp_path / "data", backups=False) as again:
        _assert_rows_now(again, "acme", [])


def test_a_client_that_stops_reading_is_dropped(tmp_path: Path) -> None:
    # each answer ~0.7 MB of JSON; the client library holds one message and then stops reading,
    # so once the socket buffers are full the server's next send waits: for request_timeout
    with live_server(tmp_path / "data", backups=False, request_timeout=1.0) as other:
        other.create("acme")
        with hrana_socket(other.ws_url, max_queue=1, close_timeout=1) as s:
            assert s.hello(other.token("acme")) == {"type": "hello_ok"}
            _open(s, 1)
            for _ in range(60):
                s.request(execute(1, "SELECT zeroblob(500000)"))
            wait_until(lambda: other.server.context.websockets == 0, timeout=60)
        assert other.streams_open() == 0
        assert other.server.context.results.held == 0  # every answer's result memory let go


def test_point_reads_run_inline_once_judged_but_never_inside_a_transaction(live: Live, tenant: str) -> None:
    read = "SELECT x FROM t WHERE rowid = ?"
    with hrana_socket(live.ws_url) as s:
        assert s.hello(live.token(tenant)) == {"type": "hello_ok"}
        _open(s, 1)
        assert s.call(execute(1, "CREATE TABLE t (x)"))["type"] == "response_ok"
        assert s.call(execute(1, "INSERT INTO t VALUES ('committed')"))["type"] == "response_ok"
        for _ in range(3):  # the second run in a worker thread judges it; the third runs inline
            assert _value(s.call(execute(1, read, [integer(1)]))) == "committed"
        assert live.server.fleet.try_inline(tenant, Statement(read, (1,))) is not None
        assert s.call(execute(1, "BEGIN"))["type"] == "response_ok"
        assert s.call(execute(1, "UPDATE t SET x = 'uncommitted'"))["type"] == "response_ok"
        assert _value(s.call(execute(1, read, [integer(1)]))) == "uncommitted"  # its own transaction
        _open(s, 2)  # another stream waits for the tenant (busy_timeout), never reads around it
        assert s.call(execute(2, read, [integer(1)]))["error"]["code"] == "TENANT_BUSY"
        assert s.call(execute(1, "ROLLBACK"))["type"] == "response_ok"
        assert _value(s.call(execute(2, read, [integer(1)]))) == "committed"
