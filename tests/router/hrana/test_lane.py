"""A WebSocket stream's Lane: its operations run in order on one task, which lingers a while
for more work and then ends; one timer per lane, not one per operation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import anyio
import pytest

from router.hrana.ws import lane as lane_module
from router.hrana.ws.lane import Lane

LINGER = 1.0


async def _until(done: Callable[[], bool], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not done():
            await anyio.sleep(0.01)


@pytest.fixture(autouse=True)
def short_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lane_module, "LINGER", LINGER)


def test_operations_run_in_order_on_one_task_that_lingers_then_ends() -> None:
    ran: list[tuple[int, asyncio.Task[object] | None]] = []

    def op(n: int) -> lane_module.Op:
        async def run() -> None:
            await anyio.sleep(0.01 if n % 2 else 0)
            ran.append((n, asyncio.current_task()))

        return run

    async def scenario() -> None:
        async with anyio.create_task_group() as tasks:
            lane = Lane(tasks)
            for n in range(3):
                lane.push(op(n))
            await _until(lambda: len(ran) == 3)
            for n in range(3, 6):  # idle, then busy again well within LINGER: the same task
                await anyio.sleep(LINGER / 10)
                lane.push(op(n))
            await _until(lambda: len(ran) == 6)
            assert [n for n, _ in ran] == list(range(6))
            assert len({task for _, task in ran}) == 1
            assert lane._running
            await _until(lambda: not lane._running)  # idle for LINGER: the task ends
            assert lane._timer is None
            lane.push(op(6))  # and a new one starts for new work
            await _until(lambda: len(ran) == 7)
            assert [n for n, _ in ran] == list(range(7))
            assert ran[-1][1] is not ran[0][1]
            tasks.cancel_scope.cancel()
        assert not lane._running and lane._timer is None

    anyio.run(scenario)
