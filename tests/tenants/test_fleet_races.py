"""State transitions that clients can race: of concurrent moves of one tenant exactly one wins."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import apsw
import pytest

from tenants.errors import TenantCorrupt, TenantExists, TenantNotFound, TenantUnavailable
from tenants.execute import Statement
from tenants.fleet import Fleet
from tenants.state import TenantState
from tests.support.tenants import MakeFleet, filled_and_folded


def at_once(fleet: Fleet, calls: list[Callable[[], object]], writes: int | None = None) -> list[object]:
    """Run `calls` in threads with the catalog's connection held until `writes` (default: one
    per call) catalog writes have queued, so every call has done its checks before any write
    lands; each call's result, or the exception it raised."""
    catalog = fleet.catalog

    def outcome(call: Callable[[], object]) -> object:
        try:
            return call()
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(len(calls)) as pool:
        with catalog._lock:
            futures = [pool.submit(outcome, call) for call in calls]
            deadline = time.monotonic() + 10
            while catalog._commits.queued < (writes or len(calls)) and time.monotonic() < deadline:
                time.sleep(0.001)
        return [f.result(timeout=30) for f in futures]


def fresh_db(path: Path, value: int) -> Path:
    db = apsw.Connection(str(path))
    db.execute("CREATE TABLE t(x); INSERT INTO t VALUES (?)", (value,))
    db.close()
    return path


def test_concurrent_deletes_of_one_tenant_delete_it_once(fleet: Fleet) -> None:
    fleet.create("acme")
    outcomes = at_once(fleet, [partial(fleet.delete, "acme") for _ in range(3)])
    assert outcomes.count(None) == 1, outcomes
    assert all(isinstance(o, TenantNotFound) for o in outcomes if o is not None), outcomes
    assert not fleet.exists("acme")


def test_concurrent_replacements_of_one_tenant_take_turns(fleet: Fleet, tmp_path: Path) -> None:
    fleet.create("acme")
    sources = [fresh_db(tmp_path / f"in{i}.db", i) for i in range(3)]
    outcomes = at_once(fleet, [partial(fleet.replace, "acme", s, "import") for s in sources])
    won = [i for i, o in enumerate(outcomes) if not isinstance(o, Exception)]
    assert len(won) == 1, outcomes
    assert all(isinstance(o, TenantUnavailable) for o in outcomes if isinstance(o, Exception)), outcomes
    assert fleet.info("acme").state == TenantState.ACTIVE
    assert fleet.execute("acme", Statement("SELECT x FROM t")).rows == [(won[0],)]


def test_a_replacement_racing_a_delete_leaves_one_outcome(fleet: Fleet, tmp_path: Path) -> None:
    fleet.create("acme")
    source = fresh_db(tmp_path / "in.db", 7)
    deleted, replaced = at_once(
        fleet, [partial(fleet.delete, "acme"), partial(fleet.replace, "acme", source)]
    )
    if deleted is None:  # the delete won: the replacement found no tenant
        assert isinstance(replaced, TenantNotFound), replaced
        assert not fleet.exists("acme") and not fleet.layout.tenant_path("acme").exists()
    else:  # the replacement won: the delete is told it is busy, the new data is served
        assert isinstance(deleted, TenantUnavailable) and not isinstance(deleted, TenantNotFound)
        assert fleet.execute("acme", Statement("SELECT x FROM t")).rows == [(7,)]
    assert [deleted is None, not isinstance(replaced, Exception)].count(True) == 1


def test_a_delete_refuses_while_a_replacement_runs(fleet: Fleet, tmp_path: Path) -> None:
    fleet.create("acme")
    fleet.catalog.set_state("acme", TenantState.RESTORING)  # as `replace` leaves it while copying
    with pytest.raises(TenantUnavailable) as busy:
        fleet.delete("acme")
    assert busy.value.status == 503
    with pytest.raises(TenantUnavailable):
        fleet.replace("acme", fresh_db(tmp_path / "in.db", 1))
    assert fleet.catalog.get("acme") is not None
    assert fleet.layout.tenant_path("acme").exists()


def test_concurrent_creates_of_one_id_create_it_once(fleet: Fleet, tmp_path: Path) -> None:
    # as two restores of a deleted tenant (an undelete) at once: each creates it from a file
    sources = [fresh_db(tmp_path / f"in{i}.db", i) for i in range(3)]
    outcomes = at_once(fleet, [partial(fleet.create, "acme", None, s) for s in sources])
    made = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(made) == 1, outcomes
    assert all(isinstance(o, TenantExists) for o in outcomes if isinstance(o, Exception)), outcomes
    assert fleet.info("acme").state == TenantState.ACTIVE


def test_a_create_racing_a_delete_of_the_same_id(fleet: Fleet) -> None:
    fleet.create("acme")
    created, deleted = at_once(
        fleet, [partial(fleet.create, "acme"), partial(fleet.delete, "acme")], writes=1
    )
    assert isinstance(created, TenantExists) and deleted is None  # it existed when both asked
    assert not fleet.exists("acme")
    stop = threading.Event()
    results: list[object] = []

    def churn() -> None:
        while not stop.is_set():
            for call in (partial(fleet.create, "acme"), partial(fleet.delete, "acme")):
                try:
                    results.append(call())
                except (TenantExists, TenantNotFound, TenantUnavailable) as exc:
                    results.append(exc)

    threads = [threading.Thread(target=churn) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(30)
    creates = sum(1 for r in results if r is not None and not isinstance(r, Exception))
    deletes = results.count(None)
    # every delete undid exactly one create: what is left is the difference
    assert creates - deletes == (1 if fleet.exists("acme") else 0)
    if fleet.exists("acme"):
        assert fleet.info("acme").state == TenantState.ACTIVE and fleet.layout.tenant_path("acme").exists()
    else:
        assert not fleet.layout.tenant_path("acme").exists()


def test_a_corrupt_read_during_a_delete_keeps_it_deleting(make_fleet: MakeFleet) -> None:
    fleet = make_fleet()
    fleet.create("bad")
    path = filled_and_folded(fleet, "bad")
    fleet = make_fleet()
    fleet.execute("bad", Statement("SELECT 1"))  # open, its schema read
    with open(path, "r+b") as f:  # trash every page after the first under the open handle
        f.seek(4096)
        f.write(b"\xa5" * (path.stat().st_size - 4096))
    fleet.catalog.set_state("bad", TenantState.DELETING)  # a delete is under way
    with pytest.raises(TenantCorrupt):
        fleet.execute("bad", Statement("SELECT count(*), sum(length(x)) FROM t"))
    row = fleet.catalog.get("bad")
    assert row is not None and row.state == TenantState.DELETING  # no second delete may start
    with pytest.raises(TenantNotFound):
        fleet.delete("bad")
