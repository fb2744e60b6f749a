"""backups.ack over a real shipper (tests.support.shipper): a waiting response is released only
once its tenant's commits are in the replica, with an error when a flush fails or the shipper is
fenced, never with success; the flush loop group-commits what waits; and the settings refuse
ack=replica without backups."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from backups.ack import Acks
from backups.errors import ReplicaFenced
from ops.settings import Settings
from tenants.errors import BadRequest, ReplicaUnavailable
from tests.support.shipper import Rig

NEVER = 3600.0


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path, flush_interval=NEVER, ack="replica", ack_window=0.05)
    yield rig
    rig.shipper.stop()
    rig.shutdown()


def acks(rig: Rig) -> Acks:
    assert rig.shipper.acks is not None
    return rig.shipper.acks


def test_a_waiter_is_released_once_its_commits_ship(rig: Rig) -> None:
    rig.create("a")
    rig.create("b")
    rig.shipper.flush()
    rig.insert("a", 1)

    async def scenario() -> None:
        await acks(rig).wait(["b"], 0.01)  # nothing of b unshipped: at once, no flush needed
        waiting = asyncio.create_task(acks(rig).wait(["a"], 10))
        await asyncio.sleep(0.1)
        assert not waiting.done() and acks(rig).waiting() == 1  # the loop is not running
        await asyncio.to_thread(rig.shipper.flush)
        await asyncio.wait_for(waiting, 5)
        assert acks(rig).waiting() == 0

    asyncio.run(scenario())
    assert rig.restored("a", rig.shipper.ledger.clock()) == [1]


def test_a_failed_flush_releases_waiters_with_an_error(rig: Rig) -> None:
    rig.create("a")
    rig.shipper.flush()
    rig.insert("a", 1)

    async def scenario() -> None:
        waiting = asyncio.create_task(acks(rig).wait(["a"], 10))
        await asyncio.sleep(0.05)
        rig.replica.fail_puts = 1
        assert not await asyncio.to_thread(rig.shipper.flush)
        with pytest.raises(ReplicaUnavailable):
            await asyncio.wait_for(waiting, 5)
        with pytest.raises(ReplicaUnavailable, match="within"):  # the deadline, no flush at all
            await acks(rig).wait(["a"], 0.05)

    asyncio.run(scenario())


def test_once_fenced_every_wait_fails_at_once(rig: Rig) -> None:
    rig.create("a")
    rig.shipper.flush()
    rig.insert("a", 1)
    acks(rig).failed(ReplicaFenced("fenced at seq 3", key="k"), for_good=True)

    async def scenario() -> None:
        with pytest.raises(ReplicaUnavailable, match="taken over"):
            await asyncio.wait_for(acks(rig).wait(["a"], 10), 1)

    asyncio.run(scenario())


def test_the_loop_ships_one_segment_for_the_responses_waiting(rig: Rig) -> None:
    tenants = [f"t{i}" for i in range(8)]
    for tenant in tenants:
        rig.create(tenant)
    rig.shipper.flush()
    rig.shipper.start()
    before = len(rig.replica.puts)
    for i, tenant in enumerate(tenants):
        rig.insert(tenant, i)

    async def scenario() -> None:
        await asyncio.wait_for(asyncio.gather(*(acks(rig).wait([t], 10) for t in tenants)), 10)

    asyncio.run(scenario())
    # woken early (the interval is an hour), and one flush took all: a PUT or two, not eight
    assert 1 <= len([k for k in rig.replica.puts[before:] if k.startswith("segments/")]) <= 2


def test_ack_replica_needs_backups() -> None:
    with pytest.raises(BadRequest, match="ack=replica needs backups"):
        Settings.load(environ={}, backups=False, ack="replica")
    with pytest.raises(BadRequest, match="ack must be local or replica"):
        Settings.load(environ={}, ack="disk")
    assert (
        Settings.load(environ={}, cluster_etcd="http://127.0.0.1:2379").shipper_config().max_unshipped_age
        == 30
    )
    assert Settings.load(environ={}).shipper_config().max_unshipped_age == 0
