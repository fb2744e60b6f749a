"""Passing leases (fleet-wide work such as a rollout): they leave the pool's LRU order alone."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from tenants.execute import Statement
from tenants.fleet import Fleet
from tenants.pool import Handle
from tests.support.tenants import MakeFleet
from tests.support.waiting import wait_until

CAPACITY = 4


def hot_fleet(make_fleet: MakeFleet, n: int) -> tuple[Fleet, list[str], list[str]]:
    """A pool full of `CAPACITY` hot tenants, and `n` closed ones."""
    fleet = make_fleet(capacity=CAPACITY)
    tenants = [f"t{i:03d}" for i in range(CAPACITY + n)]
    for tenant in tenants:
        fleet.create(tenant)
    hot, cold = tenants[:CAPACITY], tenants[CAPACITY:]
    for tenant in hot:
        fleet.execute(tenant, Statement("SELECT 1"))
    assert all(fleet.pool.is_open(t) for t in hot) and len(fleet.pool) == CAPACITY
    return fleet, hot, cold


def test_a_passing_lease_evicts_nobody_and_closes_what_it_opened(make_fleet: MakeFleet) -> None:
    fleet, hot, cold = hot_fleet(make_fleet, 12)
    for tenant in cold:
        with fleet.lease(tenant, passing=True) as handle:
            assert handle.conn is not None and fleet.pool.is_open(tenant)
            handle.conn.execute("CREATE TABLE w(x)").fetchall()
        assert not fleet.pool.is_open(tenant)
    assert all(fleet.pool.is_open(t) for t in hot) and len(fleet.pool) == CAPACITY
    for tenant in cold:  # what it wrote is there, reopened the usual way
        assert fleet.execute(tenant, Statement("SELECT count(*) FROM w")).rows == [(0,)]


def test_concurrent_passing_leases_leave_the_hot_tenants_open(make_fleet: MakeFleet) -> None:
    fleet, hot, cold = hot_fleet(make_fleet, 40)

    def visit(tenant: str) -> None:
        with fleet.lease(tenant, passing=True):
            pass

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(visit, cold * 2))
    assert all(fleet.pool.is_open(t) for t in hot) and len(fleet.pool) == CAPACITY


def test_a_passing_lease_of_an_open_tenant_keeps_it_open(make_fleet: MakeFleet) -> None:
    fleet, hot, cold = hot_fleet(make_fleet, 1)
    with fleet.lease(hot[0], passing=True):
        pass
    assert fleet.pool.is_open(hot[0])
    fleet.execute(cold[0], Statement("SELECT 1"))  # a miss evicts the least recently used...
    assert not fleet.pool.is_open(hot[0])  # ...which the passing lease did not make recent


def test_a_request_during_a_passing_lease_keeps_the_tenant(make_fleet: MakeFleet) -> None:
    fleet, hot, cold = hot_fleet(make_fleet, 1)
    tenant = cold[0]
    leased: list[Handle] = []
    done = threading.Event()

    def rollout() -> None:
        with fleet.lease(tenant, passing=True) as handle:
            leased.append(handle)
            assert done.wait(10)

    worker = threading.Thread(target=rollout)
    worker.start()
    wait_until(lambda: bool(leased))
    request = threading.Thread(target=fleet.execute, args=(tenant, Statement("SELECT 1")))
    request.start()  # waits for the lease as a regular user: the tenant joins the pool
    wait_until(lambda: leased[0].users == 2)
    done.set()
    worker.join(10)
    request.join(10)
    assert fleet.pool.is_open(tenant)
    assert len(fleet.pool) == CAPACITY and not fleet.pool.is_open(hot[0])  # the LRU one made room


def test_an_inline_read_never_takes_a_passing_handle(make_fleet: MakeFleet) -> None:
    # releasing it could close it, and inline reads release on the event loop
    fleet, hot, cold = hot_fleet(make_fleet, 1)
    tenant = cold[0]
    with fleet.pool.lease(tenant, passing=True) as handle:
        handle.lock.release()  # as between a passing lease's unlock and its check-in
        try:
            assert fleet.pool.try_lease(tenant) is None
            assert fleet.try_inline(tenant, Statement("SELECT 1")) is None
        finally:
            handle.lock.acquire()
    assert not fleet.pool.is_open(tenant)
    regular = fleet.pool.try_lease(hot[0])  # a regular one, open and free: taken
    assert regular is not None
    fleet.pool.release(regular)
