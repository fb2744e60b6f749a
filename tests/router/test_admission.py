"""Admission: at most `slots` normal-lane jobs of tenants not open in the pool run at once; a
job gives its slot back at its end, before a commit, or `lend_after` seconds after it took it,
and a job that never got one (cancelled while waiting) takes none away."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import anyio
import apsw
import pytest
from prometheus_client import REGISTRY

from router.admission import Admission
from router.scheduler import Scheduler
from tenants.sandbox import Sandbox


class _Running:
    """Counts jobs running at once; each job holds until `release` (or its own `seconds`)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.started: list[str] = []
        self.release = threading.Event()

    async def started_(self, name: str) -> None:
        with anyio.fail_after(5):
            while name not in self.started:
                await anyio.sleep(0.005)

    def job(self, name: str, seconds: float | None = None) -> str:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.started.append(name)
        try:
            if seconds is None:
                assert self.release.wait(10), "the job was never released"
            else:
                time.sleep(seconds)
        finally:
            with self.lock:
                self.now -= 1
        return name


@contextlib.contextmanager
def _scheduler(
    slots: int | None, lend_after: float = 30.0, open_: frozenset[str] = frozenset(), threads: int = 8
) -> Iterator[Scheduler]:
    admission = None if slots is None else Admission(slots, lend_after, lambda tenant: tenant in open_)
    scheduler = Scheduler(threads, max_queued=10, heavy_seconds=30, window=30, grace=0.0, admission=admission)
    with contextlib.closing(scheduler):
        yield scheduler


async def _all(scheduler: Scheduler, jobs: dict[str, Callable[[], str]]) -> dict[str, str]:
    done: dict[str, str] = {}

    async def one(tenant: str, fn: Callable[[], str]) -> None:
        done[tenant] = await scheduler.call(tenant, fn)

    async with anyio.create_task_group() as group:
        for tenant, fn in jobs.items():
            group.start_soon(one, tenant, fn)
    return done


@pytest.mark.parametrize(("slots", "most"), [(2, 2), (None, 6)])
def test_at_most_slots_jobs_of_tenants_not_open_run_at_once(slots: int | None, most: int) -> None:
    running = _Running()
    jobs: dict[str, Callable[[], str]] = {f"t{i}": partial(running.job, f"t{i}", 0.1) for i in range(6)}
    with _scheduler(slots) as scheduler:
        assert anyio.run(_all, scheduler, jobs) == {t: t for t in jobs}
    assert running.most == most  # without admission all six run at once (8 threads)


def test_jobs_of_open_tenants_need_no_slot_and_wait_for_no_thread_behind_those_that_do() -> None:
    running = _Running()
    with _scheduler(1, open_=frozenset({"hot"}), threads=2) as scheduler:

        async def main() -> None:
            async with anyio.create_task_group() as group:
                group.start_soon(scheduler.call, "cold", running.job, "cold")  # holds the one slot
                await running.started_("cold")
                for i in range(4):  # wait for the slot, holding none of the lane's two threads
                    group.start_soon(scheduler.call, f"cold{i}", running.job, f"cold{i}", 0.0)
                await anyio.sleep(0.05)
                with anyio.fail_after(5):
                    assert await scheduler.call("hot", running.job, "hot", 0.0) == "hot"
                running.release.set()

        anyio.run(main)
    assert running.started[:2] == ["cold", "hot"]


def test_a_job_lends_its_slot_after_lend_after() -> None:
    running = _Running()
    with _scheduler(1, lend_after=0.05) as scheduler:

        async def main() -> float:
            async with anyio.create_task_group() as group:
                group.start_soon(scheduler.call, "slow", running.job, "slow")  # waits, holding nothing
                await running.started_("slow")
                start = time.monotonic()
                assert await scheduler.call("next", running.job, "next", 0.0) == "next"
                took = time.monotonic() - start
                running.release.set()
            return took

        took = anyio.run(main)
    assert took < 2.0  # after the loan, not after the slow job (10 s at most)


def test_a_job_gives_its_slot_back_before_its_commit(tmp_path: Path) -> None:
    # the commit's fsync comes after SQLite's commit hook: a job blocked there holds no slot
    in_commit = threading.Event()
    running = _Running()
    with _scheduler(1) as scheduler:
        assert scheduler.admission is not None
        conn = apsw.Connection(str(tmp_path / "t.db"))
        scheduler.admission.after_open("writer", conn, Sandbox(2.0))

        def waits_in_commit() -> bool:
            in_commit.set()
            assert running.release.wait(10), "the commit was never let go"
            return False

        conn.set_commit_hook(waits_in_commit, id="test")  # after the admission's hook

        def write() -> str:
            conn.execute("CREATE TABLE t(x)")
            return "written"

        async def main() -> None:
            async with anyio.create_task_group() as group:
                group.start_soon(scheduler.call, "writer", write)
                await anyio.to_thread.run_sync(in_commit.wait, 5)
                with anyio.fail_after(5):
                    assert await scheduler.call("next", running.job, "next", 0.0) == "next"
                running.release.set()

        anyio.run(main)
        conn.close()


def _waiting() -> tuple[float, float]:
    """The admission metrics: jobs waiting now, and jobs that waited so far."""
    waiting = REGISTRY.get_sample_value("sqlfleet_admission_waiting")
    waits = REGISTRY.get_sample_value("sqlfleet_admission_waits_total")
    assert waiting is not None and waits is not None
    return waiting, waits


def test_a_job_cancelled_while_waiting_for_a_slot_takes_none_away_and_the_metrics_show_it() -> None:
    running = _Running()
    with _scheduler(1) as scheduler:

        async def main() -> None:
            async with anyio.create_task_group() as group:
                group.start_soon(scheduler.call, "holder", running.job, "holder")
                await running.started_("holder")
                waiting, waits = _waiting()
                with anyio.move_on_after(0.1) as waited:  # waits for the slot, then gives up
                    group.start_soon(_sees_one_waiting, waiting, waits)
                    await scheduler.call("gives-up", running.job, "gives-up", 0.0)
                assert waited.cancelled_caught
                assert _waiting() == (waiting, waits + 1)
                running.release.set()
            with anyio.fail_after(5):  # the holder's slot came back, and it is the only one
                await _all(scheduler, {f"t{i}": partial(running.job, f"t{i}", 0.05) for i in range(3)})

        anyio.run(main)
    assert "gives-up" not in running.started
    assert running.most == 1


async def _sees_one_waiting(waiting: float, waits: float) -> None:
    await anyio.sleep(0.05)
    assert _waiting() == (waiting + 1, waits + 1)
