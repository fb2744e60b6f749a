"""The handle pool under load: no lost write, no use-after-close, no leak, leases respected."""

from __future__ import annotations

import os
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import apsw
import pytest

from tenants.config import PoolConfig
from tenants.connection import open_database
from tenants.errors import SqlError, SqlfleetError, TenantBusy, TenantNotFound
from tenants.execute import Statement, run_statement
from tenants.fleet import Fleet
from tenants.hooks import FleetHooks
from tenants.pool import Handle, Latch, Pool
from tenants.sandbox import Sandbox
from tenants.watchdog import shared_watchdog
from tests.support.tenants import TEST_CONFIG, MakeFleet
from tests.support.waiting import wait_until

CAPACITY = 8


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def make_tenants(fleet: Fleet, n: int) -> list[str]:
    """n tenants with a table `w`, made from a few threads (creates run concurrently too)."""

    def make(tenant: str) -> None:
        fleet.create(tenant)
        fleet.execute(tenant, Statement("CREATE TABLE w(id INTEGER PRIMARY KEY, v)"))

    tenants = [f"t{i:03d}" for i in range(n)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for future in [pool.submit(make, t) for t in tenants]:
            future.result(timeout=60)
    return tenants


class SlowClose(FleetHooks):
    """Fault injection: once armed, closing `tenant` takes a while (as a slow backup hook would)."""

    def __init__(self, tenant: str, then: Callable[[], object]) -> None:
        self.tenant, self.then = tenant, then
        self.armed, self.closing = threading.Event(), threading.Event()

    def before_close(self, tenant_id: str, conn: object) -> None:
        if tenant_id == self.tenant and self.armed.is_set():
            self.closing.set()
            time.sleep(0.3)
            self.then()


def test_hammer_many_tenants_with_a_small_pool(make_fleet: MakeFleet) -> None:
    shared_watchdog()  # the process's own, started on first use: not this fleet's thread
    fds_before, threads_before = open_fds(), threading.active_count()
    fleet = make_fleet(capacity=CAPACITY)
    tenants = make_tenants(fleet, 240)
    expected: dict[str, set[int]] = defaultdict(set)
    lock = threading.Lock()
    rng = random.Random(42)

    def work(i: int, tenant: str, kind: int) -> None:
        if kind < 70:
            fleet.execute(tenant, Statement("INSERT INTO w(id, v) VALUES (?, ?)", (i, tenant)))
            with lock:
                expected[tenant].add(i)
        elif kind < 85:
            ids = (i, i + 1_000_000)
            fleet.batch(tenant, [Statement("INSERT INTO w(id, v) VALUES (?, 'b')", (n,)) for n in ids])
            with lock:
                expected[tenant].update(ids)
        else:
            fleet.execute(tenant, Statement("SELECT count(*) FROM w"), readonly=True)

    # a few hot tenants and a long tail, so the pool both hits and evicts
    picks = [rng.choice(tenants[:6]) if rng.random() < 0.3 else rng.choice(tenants) for _ in range(3000)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        futures: list[Future[None]] = [
            pool.submit(work, i, tenant, rng.randrange(100)) for i, tenant in enumerate(picks)
        ]
        errors = [f.exception(timeout=120) for f in futures]
    assert [e for e in errors if e is not None] == []
    assert len(fleet.pool) <= CAPACITY  # back under capacity once idle

    for tenant in tenants:  # every acknowledged write is there, and nothing else
        rows = fleet.execute(tenant, Statement("SELECT id FROM w"), readonly=True).rows
        assert {r[0] for r in rows} == expected[tenant], tenant
    assert len(fleet.pool) <= CAPACITY
    # idle: one fd per open db + its WAL, plus the catalog (db, wal, shm) and the lock file
    assert open_fds() <= fds_before + 2 * CAPACITY + 4 + 2
    fleet.close()
    assert open_fds() <= fds_before + 1
    wait_until(lambda: threading.active_count() <= threads_before, interval=0.005)


class LeaseHolder(threading.Thread):
    """Holds t000's lease in a thread of its own, from `start()` (which returns once it is held)
    to `release()`; with `write`, inserts a row into `w` under the lease before letting go."""

    def __init__(self, fleet: Fleet, write: bool = False) -> None:
        super().__init__()
        self.fleet, self.write = fleet, write
        self.holding, self.released = threading.Event(), threading.Event()
        self.handle: Handle | None = None
        self.rows_affected: list[int] = []

    def start(self) -> None:
        super().start()
        assert self.holding.wait(10)

    def run(self) -> None:
        with self.fleet.lease("t000") as h:
            self.handle = h
            self.holding.set()
            self.released.wait(30)
            if self.write:
                assert h.conn is not None and h.sandbox is not None
                insert = Statement("INSERT INTO w(v) VALUES (1)")
                self.rows_affected.append(
                    run_statement(h.conn, h.sandbox, self.fleet.config, insert).rows_affected
                )

    def release(self) -> None:
        self.released.set()
        self.join(30)


def test_eviction_never_closes_a_handle_with_a_lease_in_flight(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(capacity=2)
    tenants = make_tenants(fleet, 20)
    holder = LeaseHolder(fleet, write=True)
    holder.start()
    try:

        def churn(tenant: str) -> None:  # nearly every one of these forces an eviction
            fleet.execute(tenant, Statement("SELECT 1"))
            assert fleet.pool.is_open("t000")

        with ThreadPoolExecutor(max_workers=4) as others:
            for future in [others.submit(churn, t) for t in tenants[1:] * 3]:
                future.result(timeout=60)
    finally:
        holder.release()
    assert holder.rows_affected == [1]
    assert fleet.execute("t000", Statement("SELECT count(*) FROM w")).rows == [(1,)]
    assert len(fleet.pool) <= 2


def test_discard_waits_for_the_lease_in_flight(make_fleet: MakeFleet) -> None:
    fleet = make_fleet()
    make_tenants(fleet, 1)
    holder = LeaseHolder(fleet, write=True)
    discarder = threading.Thread(target=fleet.pool.discard, args=("t000",))
    holder.start()
    discarder.start()
    time.sleep(0.2)
    assert discarder.is_alive()  # still waiting for the lease
    assert holder.handle is not None and holder.handle.conn is not None
    holder.release()
    discarder.join(30)
    assert not holder.is_alive() and not discarder.is_alive()
    assert holder.handle.conn is None  # closed after the lease ended
    assert not fleet.pool.is_open("t000")
    # the write made under the lease is durable, and the tenant reopens on demand
    assert fleet.execute("t000", Statement("SELECT count(*) FROM w")).rows == [(1,)]


def test_a_lease_queued_behind_a_discard_reopens(make_fleet: MakeFleet) -> None:
    fleet = make_fleet()
    make_tenants(fleet, 1)
    results: list[object] = []

    def queued() -> None:
        try:
            results.append(fleet.execute("t000", Statement("SELECT count(*) FROM w")).rows)
        except SqlfleetError as exc:
            results.append(exc)

    holder = LeaseHolder(fleet)
    holder.start()
    waiter = threading.Thread(target=queued)
    waiter.start()
    wait_until(lambda: fleet.pool._handles["t000"].users == 2, interval=0.005)
    discarder = threading.Thread(target=fleet.pool.discard, args=("t000",))
    discarder.start()
    wait_until(lambda: not fleet.pool.is_open("t000"), interval=0.005)
    holder.release()
    for t in (waiter, discarder):
        t.join(30)
    # the queued lease found its handle discarded and checked out a fresh one
    assert results == [[(0,)]]


def test_discard_waits_for_an_eviction_in_progress(make_fleet: MakeFleet) -> None:
    during: list[bool] = []
    fleets: list[Fleet] = []
    hook = SlowClose("t000", lambda: during.append(fleets[0].layout.tenant_path("t000").exists()))
    fleet = make_fleet(capacity=1, hooks=[hook])
    fleets.append(fleet)
    make_tenants(fleet, 2)
    fleet.execute("t000", Statement("SELECT 1"))
    hook.armed.set()
    evictor = threading.Thread(target=fleet.execute, args=("t001", Statement("SELECT 1")))
    evictor.start()
    assert hook.closing.wait(10)
    fleet.delete("t000")  # must not pull the files from under the closing connection
    evictor.join(30)
    assert during == [True]
    assert not fleet.layout.tenant_path("t000").exists()


def test_close_waits_for_an_eviction_in_progress(make_fleet: MakeFleet) -> None:
    closed = threading.Event()
    hook = SlowClose("t000", closed.set)
    fleet = make_fleet(capacity=1, hooks=[hook])
    make_tenants(fleet, 2)
    fleet.execute("t000", Statement("SELECT 1"))
    hook.armed.set()
    outcome: list[object] = []

    def evict() -> None:
        try:
            outcome.append(fleet.execute("t001", Statement("SELECT 1")).rows)
        except SqlfleetError as exc:  # shutting down: a clean error is fine
            outcome.append(type(exc))

    evictor = threading.Thread(target=evict)
    evictor.start()
    assert hook.closing.wait(10)
    fleet.close()
    assert closed.is_set()  # no connection outlives close(), so the lock really is free
    evictor.join(30)
    assert len(outcome) == 1 and not isinstance(outcome[0], BaseException)


def test_delete_and_recreate_under_load_fail_only_cleanly(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(capacity=4)
    tenants = make_tenants(fleet, 6)
    stop = threading.Event()
    unexpected: list[BaseException] = []

    def load(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            try:
                fleet.execute(rng.choice(tenants), Statement("INSERT INTO w(v) VALUES (1)"))
            except (TenantNotFound, SqlError):  # deleted, or recreated without its table yet
                pass
            except BaseException as exc:
                unexpected.append(exc)

    workers = [threading.Thread(target=load, args=(i,)) for i in range(6)]
    for w in workers:
        w.start()
    try:
        rng = random.Random(0)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            tenant = rng.choice(tenants[:3])
            fleet.delete(tenant)
            assert not any(p.exists() for p in fleet.layout.tenant_files(tenant))
            fleet.create(tenant)
            fleet.execute(tenant, Statement("CREATE TABLE IF NOT EXISTS w(id INTEGER PRIMARY KEY, v)"))
    finally:
        stop.set()
        for w in workers:
            w.join(30)
    assert unexpected == []
    assert len(fleet.pool) <= 4
    for tenant in tenants:
        assert fleet.execute(tenant, Statement("PRAGMA integrity_check")).rows == [("ok",)]


def test_pool_closes_when_the_opener_fails(make_fleet: MakeFleet, tmp_path: Path) -> None:
    fleet = make_fleet(capacity=2)
    with pytest.raises(TenantNotFound):
        fleet.execute("ghost", Statement("SELECT 1"))
    assert not fleet.pool.is_open("ghost") and len(fleet.pool) == 0


class Holder:
    """A holder of a tenant's lock across requests (as a Hrana transaction is): pins the
    handle, takes its lock, and registers `preempt`, which lets go from the caller's thread."""

    def __init__(self, fleet: Fleet, tenant: str) -> None:
        self.pool = fleet.pool
        self.pool.preempt_wait = 0.3  # the setting's default is 5 s
        self.handle = self.pool.pin(tenant)
        self.pool.acquire(self.handle)
        self.handle.preempt = self.preempt
        self.reasons: list[str] = []

    def preempt(self, reason: str) -> None:
        self.reasons.append(reason)
        self.handle.preempt = None
        self.handle.lock.release()
        self.pool.unpin(self.handle)


def test_discard_preempts_a_holder_across_requests_after_preempt_wait(make_fleet: MakeFleet) -> None:
    fleet = make_fleet()
    fleet.create("acme")
    holder = Holder(fleet, "acme")
    started = time.monotonic()
    fleet.delete("acme")  # once waited until the holder let go of its own accord: for ever here
    assert holder.reasons == ["the tenant is being deleted"]
    assert fleet.pool.preempt_wait <= time.monotonic() - started < fleet.pool.preempt_wait + 10
    assert not fleet.pool.is_open("acme")


def test_a_lease_with_a_reason_preempts_a_holder_and_one_without_does_not(make_fleet: MakeFleet) -> None:
    fleet = make_fleet()
    fleet.create("acme")
    holder = Holder(fleet, "acme")
    with pytest.raises(TenantBusy), fleet.pool.lease("acme", wait=0.2):
        pass
    assert holder.reasons == []
    with fleet.lease("acme", preempt="a schema migration is due") as handle:
        assert handle is holder.handle
    assert holder.reasons == ["a schema migration is due"]


def test_close_all_preempts_holders(make_fleet: MakeFleet) -> None:
    fleet = make_fleet()
    fleet.create("acme")
    holder = Holder(fleet, "acme")
    fleet.close()
    assert holder.reasons == ["the server is shutting down"]


def test_a_latch_lets_every_waiter_through_once_set() -> None:
    latch = Latch()
    passed: list[int] = []

    def wait(i: int) -> None:
        latch.wait()
        passed.append(i)

    waiters = [threading.Thread(target=wait, args=(i,)) for i in range(3)]
    for waiter in waiters:
        waiter.start()
    assert not latch.is_set() and passed == []
    threading.Thread(target=latch.set).start()  # set from another thread than the one that made it
    for waiter in waiters:
        waiter.join(10)
    assert latch.is_set() and sorted(passed) == [0, 1, 2]
    latch.wait()  # at once


def test_a_close_waits_out_a_backup_whose_destination_is_busy_elsewhere(
    make_fleet: MakeFleet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An export keeps an SQLite backup reading the tenant's connection between its steps; a
    close (a discard, an eviction) while the backup's destination is in use in another thread
    got ThreadingViolationError and left the connection open (the file locked)."""
    fleet = make_fleet()
    fleet.create("a")
    fleet.execute("a", Statement("CREATE TABLE t(x)"))
    dest = apsw.Connection(str(tmp_path / "copy.db"))
    busy = threading.Event()

    def nap(*_: object) -> int:
        busy.set()
        time.sleep(0.3)
        return 1

    dest.create_scalar_function("nap", nap)
    dest.execute("SELECT 1").fetchall()
    with fleet.lease("a", readonly=True) as handle:
        source = handle.conn
        assert source is not None
        backup = dest.backup("main", source, "main")
    user = threading.Thread(target=lambda: dest.execute("SELECT nap()").fetchall())
    user.start()
    try:
        busy.wait(5)
        fleet.pool.discard("a")
    finally:
        user.join()
    with pytest.raises(apsw.ConnectionClosedError):
        source.execute("SELECT 1")
    assert "closing tenant a failed" not in caplog.text
    with pytest.raises(apsw.Error):
        backup.step(1)
    dest.close()


def test_a_request_joining_a_failed_open_opens_again_for_itself(tmp_path: Path) -> None:
    # session 6 (a CI run): a request right after a create returned joined an open another
    # request had begun while the tenant was still being created; that open failed (no such
    # tenant then) and the new request got its 404, though the tenant existed by then
    created = threading.Event()
    first_open_started, let_it_fail = threading.Event(), threading.Event()
    opens: list[str] = []

    def opener(tenant_id: str) -> tuple[apsw.Connection, Sandbox]:
        opens.append(tenant_id)
        if not created.is_set():  # the row still says "creating": not found, a little later
            first_open_started.set()
            let_it_fail.wait(10)
            raise TenantNotFound(f"tenant {tenant_id!r} does not exist")
        conn, sandbox = open_database(tmp_path / "t.db", TEST_CONFIG, create=True)
        return conn, sandbox

    pool = Pool(PoolConfig(capacity=2, busy_timeout=5, preempt_wait=1), opener)
    early: list[BaseException] = []

    def too_early() -> None:
        try:
            with pool.lease("t"):
                pass
        except TenantNotFound as exc:
            early.append(exc)

    thread = threading.Thread(target=too_early)
    thread.start()
    try:
        assert first_open_started.wait(10)
        created.set()  # the create returns: from now on the tenant exists
        joined: Future[bool] = Future()

        def after_create() -> None:
            try:
                with pool.lease("t") as handle:
                    joined.set_result(handle.conn is not None)
            except BaseException as exc:
                joined.set_exception(exc)

        late = threading.Thread(target=after_create)
        late.start()
        wait_until(lambda: pool._handles.get("t") is not None and pool._handles["t"].users == 2)
        let_it_fail.set()
        assert joined.result(10)  # opened for itself, not the early open's 404
        late.join(10)
    finally:
        let_it_fail.set()
        thread.join(10)
        pool.close_all()
    assert len(early) == 1 and opens == ["t", "t"]
