"""The change feed over HTTP (router/changes_api.py), against the real app behind uvicorn."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import httpx
import pytest

from tests.support.app import ADMIN, bearer
from tests.support.sse import subscribe
from tests.support.waiting import wait_until
from tests.support.websocket import Live, live_server


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    with live_server(tmp_path / "data", changes_heartbeat=0.3) as running:
        running.create("acme")
        yield running


def _sql(live: Live, sql: str, params: list[Any] | None = None, tenant: str = "acme") -> httpx.Response:
    body: dict[str, Any] = {"sql": sql} if params is None else {"sql": sql, "params": params}
    return live.client.post(f"/v1/tenants/{tenant}/query", json=body, headers=ADMIN)


def _batch(live: Live, *sqls: str) -> httpx.Response:
    body = {"statements": [{"sql": s} for s in sqls]}
    return live.client.post("/v1/tenants/acme/batch", json=body, headers=ADMIN)


def test_commits_arrive_in_order_grouped_by_transaction_without_rollbacks(live: Live) -> None:
    assert (
        _sql(live, "CREATE TABLE t(id INTEGER PRIMARY KEY, writer INTEGER, n INTEGER, b BLOB)").status_code
        == 200
    )
    with subscribe(live.client, "acme", ADMIN) as feed:
        opened = feed.next()
        assert opened.kind == "open" and opened.id == opened.data["position"]

        def write(writer: int) -> None:
            with httpx.Client(base_url=live.url, timeout=30) as client:
                for n in range(20):
                    statements = [
                        {"sql": "INSERT INTO t(writer, n, b) VALUES (?, ?, x'00ff')", "params": [writer, n]},
                        {
                            "sql": "UPDATE t SET n = n + 1000 WHERE writer = ? AND n = ?",
                            "params": [writer, n],
                        },
                    ]
                    if n % 5 == 4:  # fails: the whole batch rolls back
                        statements.append({"sql": "INSERT INTO nope VALUES (1)"})
                    r = client.post("/v1/tenants/acme/batch", json={"statements": statements}, headers=ADMIN)
                    assert r.status_code == (400 if n % 5 == 4 else 200), r.text

        writers = [threading.Thread(target=write, args=(w,)) for w in range(3)]
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        commits = [feed.next() for _ in range(3 * 16)]
    assert {c.kind for c in commits} == {"commit"}
    sequence = [int(c.id.rpartition("-")[2]) for c in commits if c.id is not None]
    assert sequence == list(range(sequence[0], sequence[0] + 48))  # in commit order, no gaps
    for commit in commits:
        # one transaction: its insert, seen as committed (the update's value), one event
        (change,) = commit.data["changes"]
        assert change["op"] == "insert" and change["table"] == "t"
        assert change["row"]["n"] >= 1000 and change["row"]["b"] == {"base64": "AP8="}
        assert commit.data["time"].endswith("Z")
    carried = {
        (c.data["changes"][0]["row"]["writer"], c.data["changes"][0]["row"]["n"] - 1000) for c in commits
    }
    assert carried == {(w, n) for w in range(3) for n in range(20) if n % 5 != 4}
    rows = _sql(live, "SELECT count(*) FROM t").json()["rows"]
    assert rows == [[48]]


def test_updates_deletes_and_unseen_tables_say_what_they_are(live: Live) -> None:
    _batch(
        live,
        "CREATE TABLE t(x)",
        "CREATE TABLE w(k INTEGER PRIMARY KEY, v) WITHOUT ROWID",
        "INSERT INTO t VALUES (1), (2)",
    )
    with subscribe(live.client, "acme", ADMIN) as feed:
        feed.next()
        _sql(live, "UPDATE t SET x = 10 WHERE x = 1")
        _sql(live, "DELETE FROM t")  # every row, though SQLite could truncate without callbacks
        _sql(live, "INSERT INTO w VALUES (1, 'a')")
        _sql(live, "ALTER TABLE t ADD COLUMN y")
        events = [feed.next() for _ in range(4)]
    assert [e.data["changes"] for e in events] == [
        [{"op": "update", "table": "t", "rowid": 1, "row": {"x": 10}}],
        [{"op": "delete", "table": "t", "rowid": 1}, {"op": "delete", "table": "t", "rowid": 2}],
        [{"op": "resync", "table": "w", "reason": "a WITHOUT ROWID table: its rows have no rowid"}],
        [{"op": "schema"}],
    ]


def test_last_event_id_resumes_after_a_reconnect(live: Live) -> None:
    _sql(live, "CREATE TABLE t(x)")
    with subscribe(live.client, "acme", ADMIN) as feed:
        feed.next()
        _sql(live, "INSERT INTO t VALUES (1)")
        first = feed.next()
    _sql(live, "INSERT INTO t VALUES (2)")  # while disconnected
    _sql(live, "INSERT INTO t VALUES (3)")
    with subscribe(live.client, "acme", ADMIN, last_event_id=first.id) as feed:
        assert feed.next().kind == "open"
        missed = [feed.next(), feed.next()]
    assert [e.data["changes"][0]["row"]["x"] for e in missed] == [2, 3]
    with subscribe(live.client, "acme", ADMIN, last_event_id="0000-7") as feed:  # unknown: resync
        assert feed.next().kind == "open"
        notice = feed.next()
        assert notice.kind == "resync" and "is not in the feed" in notice.data["reason"]
        assert notice.id is not None


def test_a_slow_consumer_gets_a_resync_and_does_not_slow_the_writers(tmp_path: Path) -> None:
    big = "x" * (100 << 10)
    settings = {"changes_buffer_bytes": 256 << 10, "changes_max_txn_bytes": 128 << 10}
    with live_server(tmp_path / "data", **settings) as live:
        live.create("acme")
        _sql(live, "CREATE TABLE t(v)")

        def commit_times(n: int) -> list[float]:
            times = []
            for _ in range(n):
                started = time.perf_counter()
                assert _sql(live, "INSERT INTO t VALUES (?)", [big]).status_code == 200
                times.append(time.perf_counter() - started)
            return times

        alone = statistics.median(commit_times(30))
        with live.client.stream("GET", "/v1/tenants/acme/changes", headers=ADMIN) as stalled:
            assert stalled.status_code == 200  # and not read from while 30 MB are committed:
            # the socket buffers fill up (a few MB), then the server stops sending to it
            wait_until(lambda: live.server.context.feed.subscribers("acme") == 1)
            watched = statistics.median(commit_times(300))
            kinds = []
            for line in stalled.iter_lines():
                if line.startswith("event: "):
                    kinds.append(line[7:])
                    if line == "event: resync":
                        break
        assert kinds[-1] == "resync"  # said, never a silent gap
        assert len(kinds) < 300
        # the slow consumer costs the writers nothing measurable (generous for a busy machine)
        assert watched < 3 * alone + 0.02, (alone, watched)


def test_a_consumer_that_takes_nothing_is_disconnected(tmp_path: Path) -> None:
    big = "x" * (100 << 10)
    with live_server(tmp_path / "data", changes_heartbeat=0.5) as live:
        live.create("acme")
        _sql(live, "CREATE TABLE t(v)")
        with live.client.stream("GET", "/v1/tenants/acme/changes", headers=ADMIN):
            wait_until(lambda: live.server.context.feed.subscribers("acme") == 1)
            for _ in range(200):  # 20 MB: more than the socket buffers hold
                assert _sql(live, "INSERT INTO t VALUES (?)", [big]).status_code == 200
            # dropped after taking nothing for 2 x changes_heartbeat
            wait_until(lambda: live.server.context.feed.subscribers("acme") == 0, timeout=30)


def test_subscriber_limits_per_tenant_and_per_server(tmp_path: Path) -> None:
    limits = {"changes_max_subscribers": 3, "changes_max_subscribers_per_tenant": 2, "changes_heartbeat": 0.3}
    with live_server(tmp_path / "data", **limits) as live:
        live.create("a")
        live.create("b")
        with subscribe(live.client, "a", ADMIN), subscribe(live.client, "a", ADMIN):
            r = live.client.get("/v1/tenants/a/changes", headers=ADMIN)
            assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_subscribers"
            with subscribe(live.client, "b", ADMIN):
                r = live.client.get("/v1/tenants/b/changes", headers=ADMIN)
                assert r.status_code == 503 and r.json()["error"]["code"] == "server_busy"
        wait_until(lambda: live.server.context.feed.subscribers() == 0)
        with subscribe(live.client, "b", ADMIN) as feed:  # places come back
            assert feed.next().kind == "open"


def test_heartbeats_keep_a_quiet_stream_alive(live: Live) -> None:
    with subscribe(live.client, "acme", ADMIN) as feed:
        assert feed.next().kind == "open"
        beats = [feed.next(timeout=5, skip=()) for _ in range(2)]
    assert [b.kind for b in beats] == ["heartbeat", "heartbeat"]
    assert beats[0].id is None and "position" in beats[0].data


def test_a_read_only_token_may_subscribe_another_tenants_may_not(live: Live) -> None:
    live.create("other")
    with subscribe(live.client, "acme", bearer(live.token("acme", "ro"))) as feed:
        assert feed.next().kind == "open"
    r = live.client.get("/v1/tenants/acme/changes", headers=bearer(live.token("other", "ro")))
    assert r.status_code == 403
    assert live.client.get("/v1/tenants/acme/changes").status_code == 401
    assert live.client.get("/v1/tenants/nobody/changes", headers=ADMIN).status_code == 404


def test_the_stream_ends_with_an_event_when_the_tenant_is_deleted(live: Live) -> None:
    with subscribe(live.client, "acme", ADMIN) as feed:
        feed.next()
        assert live.client.delete("/v1/admin/tenants/acme", headers=ADMIN).status_code == 204
        end = feed.next()
        assert end.kind == "end" and end.data == {"reason": "the tenant was deleted"}
        assert feed.ended()


def test_a_revoked_token_ends_the_stream(live: Live) -> None:
    with subscribe(live.client, "acme", bearer(live.token("acme", "ro"))) as feed:
        feed.next()
        assert live.client.post("/v1/admin/tenants/acme/tokens/revoke", headers=ADMIN).status_code == 200
        end = feed.next()
        assert end.kind == "end" and "revoked" in end.data["reason"]


def test_a_tenant_replaced_in_place_gives_a_resync_and_the_feed_goes_on(live: Live, tmp_path: Path) -> None:
    _sql(live, "CREATE TABLE t(x)")
    source = tmp_path / "restored.db"
    conn = apsw.Connection(str(source))
    conn.execute("CREATE TABLE t(x); INSERT INTO t VALUES (42)")
    conn.close()
    with subscribe(live.client, "acme", ADMIN) as feed:
        feed.next()
        live.server.fleet.replace("acme", source)  # as a restore or an import in place does
        notice = feed.next()
        assert notice.kind == "resync" and "replaced" in notice.data["reason"]
        _sql(live, "INSERT INTO t VALUES (43)")
        assert feed.next().data["changes"][0]["row"] == {"x": 43}


def test_stopping_the_server_ends_every_stream(live: Live) -> None:
    with subscribe(live.client, "acme", ADMIN) as feed:
        feed.next()
        live.server.stop_accepting()
        end = feed.next()
        assert end.kind == "end" and "stopping" in end.data["reason"]
        assert feed.ended()


def test_streams_of_one_tenant_share_one_wake_and_each_gets_every_commit(live: Live) -> None:
    _sql(live, "CREATE TABLE t(x)")
    with (
        subscribe(live.client, "acme", ADMIN) as a,
        subscribe(live.client, "acme", ADMIN) as b,
        subscribe(live.client, "acme", ADMIN) as c,
    ):
        for feed in (a, b, c):
            assert feed.next().kind == "open"
        # the writer wakes this loop once per commit, not once per stream
        assert len(live.server.context.feed._rings["acme"]._wakes) == 1
        _sql(live, "INSERT INTO t VALUES (1)")
        assert [feed.next().data["changes"][0]["row"] for feed in (a, b, c)] == [{"x": 1}] * 3
