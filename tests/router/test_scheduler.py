"""The scheduler's fair share: a tenant past its worker-time threshold runs in the heavy lane
(its own threads, half as many), moves there at its job's next step, and comes back once its
usage has decayed; heavy tenants never take the normal lane's threads from the others."""

from __future__ import annotations

import threading
import time
from collections.abc import Generator

import anyio

from router.scheduler import Scheduler


def _job(seconds: float, steps: int, seen: list[str]) -> Generator[None, None, str]:
    for index in range(steps):
        if index:
            yield
        seen.append(threading.current_thread().name)
        time.sleep(seconds)
    return "done"


def test_a_job_whose_tenant_turns_heavy_moves_to_the_heavy_lane_at_its_next_step() -> None:
    scheduler = Scheduler(threads=2, max_queued=10, heavy_seconds=0.25, window=30)
    seen: list[str] = []
    try:
        assert anyio.run(scheduler.run, "t", _job(0.1, 6, seen)) == "done"
    finally:
        scheduler.close()
    lanes = ["heavy" if name.startswith("sqlfleet-heavy") else "normal" for name in seen]
    assert lanes[:3] == ["normal"] * 3  # 0.3 s of work, then past 0.25 s: it moves
    assert lanes[3:] == ["heavy"] * 3
    assert scheduler.is_heavy("t") and not scheduler.is_heavy("other")


def test_usage_decays() -> None:
    scheduler = Scheduler(threads=2, max_queued=10, heavy_seconds=0.1, window=0.2)
    try:
        anyio.run(scheduler.call, "t", time.sleep, 0.2)
        assert scheduler.is_heavy("t")
        time.sleep(0.6)  # e^-3 of 0.2 s is well under 0.1 s
        assert not scheduler.is_heavy("t")
    finally:
        scheduler.close()


def test_heavy_tenants_share_their_lane_and_leave_the_normal_one_free() -> None:
    scheduler = Scheduler(threads=2, max_queued=10, heavy_seconds=0.05, window=30)
    done: dict[str, float] = {}

    async def run(tenant: str, seconds: float, start: float) -> None:
        await scheduler.run(tenant, _job(seconds / 4, 4, []))
        done[tenant] = time.monotonic() - start

    async def scenario() -> None:
        for tenant in ("h1", "h2", "h3"):  # all three heavy before the test
            await scheduler.call(tenant, time.sleep, 0.06)
        start = time.monotonic()
        async with anyio.create_task_group() as tasks:
            for tenant in ("h1", "h2", "h3"):
                tasks.start_soon(run, tenant, 0.4, start)
            await anyio.sleep(0.05)
            tasks.start_soon(run, "light", 0.04, start)

    try:
        anyio.run(scenario)
    finally:
        scheduler.close()
    assert done["light"] < 0.3, done  # a normal thread was free at once
    assert max(done["h1"], done["h2"], done["h3"]) >= 1.1, done  # one heavy thread: in turn


def test_a_statement_that_turns_out_long_lends_its_lane_a_thread() -> None:
    scheduler = Scheduler(threads=1, max_queued=10, heavy_seconds=0.2, window=30)
    done: dict[str, float] = {}

    async def run(tenant: str, seconds: float, start: float) -> None:
        await scheduler.call(tenant, time.sleep, seconds)
        done[tenant] = time.monotonic() - start

    async def scenario() -> None:
        start = time.monotonic()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(run, "long", 1.0, start)  # one step, the only normal thread
            await anyio.sleep(0.05)
            tasks.start_soon(run, "light", 0.01, start)

    try:
        anyio.run(scenario)
    finally:
        scheduler.close()
    assert done["light"] < 0.6, done  # served once the long one lent a thread (0.2 s), not at 1 s
    assert done["long"] >= 1.0
