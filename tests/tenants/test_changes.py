"""The change feed's tenant side (tenants/changes.py, change_ring.py, change_recorder.py): a real
Fleet, its hooks, events read straight from a Subscription."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from tenants.change_events import TOO_LARGE, Commit, End, Resync
from tenants.change_recorder import UNREADABLE, Recorder
from tenants.changes import ChangeFeed, FeedConfig, Subscription, TooManySubscribers
from tenants.execute import Statement
from tenants.fleet import Fleet
from tests.support.tenants import TEST_CONFIG, TEST_POOL, TEST_SETTINGS

CONFIG = dataclasses.replace(TEST_SETTINGS.feed_config(), linger=0.2)
MakeFeed = Callable[..., tuple[ChangeFeed, Fleet]]


def _encode(event: Commit | Resync) -> bytes:
    if isinstance(event, Resync):
        return json.dumps({"position": event.position, "resync": event.reason}).encode()
    changes = [{k: v for k, v in dataclasses.asdict(c).items() if v is not None} for c in event.changes]
    return json.dumps({"position": event.position, "changes": changes}).encode()


@pytest.fixture
def make_feed(tmp_path: Path) -> Iterator[MakeFeed]:
    """A Fleet whose hooks are a ChangeFeed of `config`, tenant "acme" with a table t(x)."""
    fleets: list[Fleet] = []

    def make(config: FeedConfig = CONFIG, capacity: int = 8) -> tuple[ChangeFeed, Fleet]:
        feeds: list[ChangeFeed] = []

        def hooks(fleet: Fleet) -> list[ChangeFeed]:
            feeds.append(ChangeFeed(config, fleet.pool, _encode))
            return feeds

        pool = dataclasses.replace(TEST_POOL, capacity=capacity)
        fleet = Fleet(tmp_path / f"data{len(fleets)}", TEST_CONFIG, pool, hooks)
        fleets.append(fleet)
        fleet.create("acme")
        fleet.execute("acme", Statement("CREATE TABLE t(x)"))
        return feeds[0], fleet

    yield make
    for fleet in fleets:
        fleet.close()


@pytest.fixture
def feed_fleet(make_feed: MakeFeed) -> tuple[ChangeFeed, Fleet]:
    return make_feed()


def _events(sub: Subscription) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        frames, notice = sub.read(1 << 20)
        if isinstance(notice, Resync):
            out.append({"notice": "resync", "reason": notice.reason})
        elif isinstance(notice, End):
            out.append({"notice": "end", "reason": notice.reason})
            return out
        elif not frames:
            return out
        out += [json.loads(f) for f in frames]


def _sql(fleet: Fleet, *sqls: str) -> None:
    fleet.batch("acme", [Statement(s) for s in sqls])


def test_undone_statements_and_rollbacks_give_no_changes(feed_fleet: tuple[ChangeFeed, Fleet]) -> None:
    feed, fleet = feed_fleet
    sub = feed.subscribe("acme", None, lambda: None)
    with fleet.lease("acme") as handle:  # as a Hrana stream runs an interactive transaction
        assert handle.conn is not None
        handle.conn.execute("BEGIN; INSERT INTO t VALUES (1); ROLLBACK")
        handle.conn.execute("SAVEPOINT s; INSERT INTO t VALUES (2); ROLLBACK TO s")
        handle.conn.execute("INSERT INTO t VALUES (3); RELEASE s")
    with pytest.raises(Exception, match="nope"):
        _sql(fleet, "INSERT INTO t VALUES (4)", "INSERT INTO nope VALUES (1)")
    assert [e["changes"] for e in _events(sub)] == [
        [{"op": "insert", "table": "t", "rowid": 1, "row": {"x": 3}}]
    ]
    sub.close()


def test_commits_are_published_in_commit_order(feed_fleet: tuple[ChangeFeed, Fleet]) -> None:
    feed, fleet = feed_fleet
    _sql(fleet, "CREATE TABLE n(v)", "INSERT INTO n VALUES (0)")
    sub = feed.subscribe("acme", None, lambda: None)

    def write() -> None:
        for _ in range(30):  # each transaction takes the next number: commit order is its order
            _sql(fleet, "UPDATE n SET v = v + 1", "INSERT INTO t SELECT v FROM n")

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = _events(sub)
    numbers = [e["changes"][1]["row"]["x"] for e in events]
    assert numbers == list(range(1, 121))
    assert [int(e["position"].rpartition("-")[2]) for e in events] == list(range(1, 121))
    sub.close()


def test_a_subscriber_further_behind_than_the_ring_gets_a_resync(make_feed: MakeFeed) -> None:
    config = dataclasses.replace(CONFIG, buffer_bytes=4096, max_txn_bytes=2048)
    feed, fleet = make_feed(config)
    slow = feed.subscribe("acme", None, lambda: None)
    for i in range(100):  # ~100 bytes each: 10 KB, more than the ring keeps
        fleet.execute("acme", Statement("INSERT INTO t VALUES (?)", (f"row {i:04}" * 8,)))
    frames, notice = slow.read(1 << 20)
    assert frames == [], frames[:2]
    assert isinstance(notice, Resync) and "fell further behind" in notice.reason
    assert notice.position.endswith("-100")  # reload from an export, go on from the newest
    assert _events(slow) == []
    fleet.execute("acme", Statement("INSERT INTO t VALUES (1)"))
    assert [e["position"].rpartition("-")[2] for e in _events(slow)] == ["101"]
    slow.close()


def test_a_transaction_past_max_txn_bytes_is_a_resync(make_feed: MakeFeed) -> None:
    config = dataclasses.replace(CONFIG, buffer_bytes=1 << 20, max_txn_bytes=1000)
    feed, fleet = make_feed(config)
    sub = feed.subscribe("acme", None, lambda: None)
    fleet.execute("acme", Statement("INSERT INTO t VALUES (?)", ("x" * 2000,)))
    fleet.execute(
        "acme",
        Statement(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500) "
            "INSERT INTO t SELECT i FROM n"
        ),
    )
    fleet.execute("acme", Statement("INSERT INTO t VALUES (1)"))
    events = _events(sub)
    assert [e.get("resync") for e in events] == [TOO_LARGE, TOO_LARGE, None]
    sub.close()


def test_resume_from_a_position_and_an_unknown_one(feed_fleet: tuple[ChangeFeed, Fleet]) -> None:
    feed, fleet = feed_fleet
    sub = feed.subscribe("acme", None, lambda: None)
    fleet.execute("acme", Statement("INSERT INTO t VALUES (1)"))
    (first,) = _events(sub)
    sub.close()
    fleet.execute("acme", Statement("INSERT INTO t VALUES (2)"))
    again = feed.subscribe("acme", first["position"], lambda: None)
    assert [e["changes"][0]["row"]["x"] for e in _events(again)] == [2]
    again.close()
    time.sleep(0.3)  # past linger: the ring is dropped, its positions forgotten
    late = feed.subscribe("acme", first["position"], lambda: None)
    assert _events(late)[0]["notice"] == "resync"
    late.close()


@contextlib.contextmanager
def _held(fleet: Fleet, tenant: str) -> Iterator[None]:
    """`tenant`'s lock held by another thread meanwhile."""
    taken, done = threading.Event(), threading.Event()

    def hold() -> None:
        with fleet.lease(tenant):
            taken.set()
            done.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    taken.wait(10)
    try:
        yield
    finally:
        done.set()
        holder.join()


def test_a_busy_tenant_is_hooked_by_its_next_request(feed_fleet: tuple[ChangeFeed, Fleet]) -> None:
    feed, fleet = feed_fleet
    with _held(fleet, "acme"):
        sub = feed.subscribe("acme", None, lambda: None)  # waits ~0.5 s for the lock, then leaves it
        assert not sub.ready
        started = time.monotonic()
        second = feed.subscribe("acme", None, lambda: None)  # the tenant is known busy: no wait
        assert time.monotonic() - started < 0.25 and not second.ready
        second.close()
    fleet.execute("acme", Statement("SELECT 1"))
    assert sub.ready
    fleet.execute("acme", Statement("INSERT INTO t VALUES (7)"))
    assert [e["changes"][0]["row"] for e in _events(sub)] == [{"x": 7}]
    sub.close()


def test_the_per_tenant_limit(make_feed: MakeFeed) -> None:
    feed, _ = make_feed(dataclasses.replace(CONFIG, max_subscribers_per_tenant=1))
    sub = feed.subscribe("acme", None, lambda: None)
    with pytest.raises(TooManySubscribers):
        feed.subscribe("acme", None, lambda: None)
    sub.close()
    sub.close()  # idempotent
    feed.subscribe("acme", None, lambda: None).close()
    assert feed.subscribers() == 0


def test_deleting_the_tenant_ends_its_subscriptions(feed_fleet: tuple[ChangeFeed, Fleet]) -> None:
    feed, fleet = feed_fleet
    woken = threading.Event()
    sub = feed.subscribe("acme", None, woken.set)
    fleet.delete("acme")
    assert woken.is_set()
    assert _events(sub) == [{"notice": "end", "reason": "the tenant was deleted"}]
    sub.close()


def test_without_subscribers_no_hook_stays(feed_fleet: tuple[ChangeFeed, Fleet]) -> None:
    feed, fleet = feed_fleet
    feed.subscribe("acme", None, lambda: None).close()
    assert feed._recorders  # hooked while the ring lingers
    time.sleep(0.3)
    feed.sweep()
    fleet.execute("acme", Statement("INSERT INTO t VALUES (1)"))  # the next request unhooks
    assert not feed._recorders


def test_rows_changed_by_triggers_are_carried_and_virtual_tables_are_a_resync(
    feed_fleet: tuple[ChangeFeed, Fleet],
) -> None:
    feed, fleet = feed_fleet
    _sql(
        fleet,
        "CREATE TABLE log(what)",
        "CREATE TRIGGER logged AFTER INSERT ON t BEGIN INSERT INTO log VALUES ('t ' || new.x); END",
        "CREATE VIRTUAL TABLE docs USING fts5(body)",
    )
    sub = feed.subscribe("acme", None, lambda: None)
    fleet.execute("acme", Statement("INSERT INTO t VALUES (5)"))
    fleet.execute("acme", Statement("INSERT INTO docs VALUES ('hello')"))
    first, second = (e["changes"] for e in _events(sub))
    assert first == [
        {"op": "insert", "table": "t", "rowid": 1, "row": {"x": 5}},
        {"op": "insert", "table": "log", "rowid": 1, "row": {"what": "t 5"}},
    ]
    assert second == [{"op": "resync", "table": "docs", "reason": "a virtual table: its rows are not seen"}]
    sub.close()


def test_an_evicted_tenant_is_hooked_again_when_it_reopens(make_feed: MakeFeed) -> None:
    feed, fleet = make_feed(capacity=2)
    sub = feed.subscribe("acme", None, lambda: None)
    for i in range(2):  # open others until acme is evicted
        fleet.create(f"other{i}")
        fleet.execute(f"other{i}", Statement("SELECT 1"))
    assert not fleet.pool.is_open("acme")
    fleet.execute("acme", Statement("INSERT INTO t VALUES (9)"))
    assert [e["changes"][0]["row"] for e in _events(sub)] == [{"x": 9}]
    sub.close()


def test_a_busy_tenant_evicted_before_its_next_request_is_complete_once_closed(
    make_feed: MakeFeed,
) -> None:
    feed, fleet = make_feed(capacity=1)
    with _held(fleet, "acme"):
        sub = feed.subscribe("acme", None, lambda: None)
        assert not sub.ready
    fleet.create("other")
    fleet.execute("other", Statement("SELECT 1"))  # evicts acme
    assert not fleet.pool.is_open("acme") and sub.ready
    fleet.execute("acme", Statement("INSERT INTO t VALUES (3)"))
    assert [e["changes"][0]["row"] for e in _events(sub)] == [{"x": 3}]
    sub.close()


def test_a_delete_first_after_subscribing_or_a_schema_change_is_a_delete(
    feed_fleet: tuple[ChangeFeed, Fleet],
) -> None:
    feed, fleet = feed_fleet
    _sql(fleet, "CREATE TABLE n(v, w AS (v * 2))", "INSERT INTO n(v) VALUES (1), (2), (3)")
    sub = feed.subscribe("acme", None, lambda: None)
    _sql(fleet, "DELETE FROM n WHERE v = 1")
    _sql(fleet, "CREATE TABLE other(x)")  # a schema change: the feed reads its tables again
    _sql(fleet, "DELETE FROM n WHERE v = 2")
    _sql(fleet, "UPDATE n SET v = 30 WHERE v = 3")
    assert [e.get("changes") for e in _events(sub)] == [
        [{"op": "delete", "table": "n", "rowid": 1}],
        [{"op": "schema"}],
        [{"op": "delete", "table": "n", "rowid": 2}],
        [{"op": "update", "table": "n", "rowid": 3, "row": {"v": 30, "w": 60}}],
    ]
    sub.close()


def test_a_view_or_trigger_the_sandbox_refuses_when_used_does_not_stop_the_feed(
    feed_fleet: tuple[ChangeFeed, Fleet],
) -> None:
    feed, fleet = feed_fleet
    _sql(
        fleet,
        "CREATE VIEW refused AS SELECT load_extension('x') AS y FROM t",
        "CREATE VIEW dangling AS SELECT a FROM gone",
    )
    sub = feed.subscribe("acme", None, lambda: None)
    _sql(fleet, "INSERT INTO t VALUES (7)")
    assert [e.get("changes") for e in _events(sub)] == [
        [{"op": "insert", "table": "t", "rowid": 1, "row": {"x": 7}}]
    ]
    sub.close()


def test_a_commit_that_cannot_be_read_back_is_a_resync_in_the_servers_words(
    feed_fleet: tuple[ChangeFeed, Fleet], monkeypatch: pytest.MonkeyPatch
) -> None:
    feed, fleet = feed_fleet
    sub = feed.subscribe("acme", None, lambda: None)

    def broken(*_: object) -> None:  # fault injection: SQLite failing while reading back
        raise apsw.ExecutionCompleteError("SQL execution never started, or has completed")

    monkeypatch.setattr(Recorder, "_collect", broken)
    _sql(fleet, "INSERT INTO t VALUES (1)")
    (event,) = _events(sub)
    assert event["resync"] == UNREADABLE and "SQL execution" not in event["resync"]
    sub.close()
