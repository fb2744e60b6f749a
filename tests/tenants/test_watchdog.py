"""The watchdog: alarms fire at their deadlines, never after being disarmed, and a sandboxed
statement stuck between progress-handler checks is interrupted at its deadline."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from tenants.connection import open_database
from tenants.errors import StatementTimeout
from tenants.execute import Statement, run_statement
from tenants.watchdog import Watchdog
from tests.support.tenants import TEST_CONFIG


@pytest.fixture
def watchdog() -> Iterator[Watchdog]:
    dog = Watchdog("test-watchdog")
    yield dog
    dog.close()


def test_alarms_fire_at_their_deadlines_in_order(watchdog: Watchdog) -> None:
    fired: list[tuple[str, float]] = []
    done = threading.Event()
    start = time.monotonic()
    for name, delay in (("c", 0.3), ("a", 0.1), ("b", 0.2)):
        watchdog.arm(start + delay, functools.partial(_note, fired, name, start))
    watchdog.arm(start + 0.35, done.set)
    assert done.wait(5)
    assert [n for n, _ in fired] == ["a", "b", "c"]
    for (_, at), due in zip(fired, (0.1, 0.2, 0.3), strict=True):
        assert due <= at < due + 1.0


def _note(fired: list[tuple[str, float]], name: str, start: float) -> None:
    fired.append((name, time.monotonic() - start))


def test_a_disarmed_alarm_never_fires(watchdog: Watchdog) -> None:
    fired: list[int] = []
    done = threading.Event()
    soon = time.monotonic() + 0.1
    alarms = [watchdog.arm(soon, functools.partial(fired.append, i)) for i in range(100)]
    for alarm in alarms[::2]:
        watchdog.disarm(alarm)
    watchdog.arm(soon + 0.05, done.set)
    assert done.wait(5)
    assert fired == list(range(1, 100, 2))


def test_disarmed_alarms_do_not_pile_up(watchdog: Watchdog) -> None:
    # a busy server arms and disarms an alarm per statement: the heap drops them as they surface
    for _ in range(10_000):
        watchdog.disarm(watchdog.arm(time.monotonic() + 0.05, lambda: None))
    time.sleep(0.3)
    watchdog.disarm(watchdog.arm(time.monotonic(), lambda: None))  # wakes it
    deadline = time.monotonic() + 5
    while watchdog.pending() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert watchdog.pending() == 0


def test_a_failing_alarm_does_not_stop_the_others(watchdog: Watchdog) -> None:
    done = threading.Event()

    def boom() -> None:
        raise RuntimeError("boom")

    watchdog.arm(time.monotonic(), boom)
    watchdog.arm(time.monotonic() + 0.05, done.set)
    assert done.wait(5)


def test_a_statement_is_interrupted_between_steps_the_progress_handler_never_reaches(
    tmp_path: Path,
) -> None:
    """Each row here takes 0.2 s in one VM step (a slow function): the progress handler, every
    10,000 steps, would let all 20 rows run (4 s). The watchdog stops it at the 0.5 s limit,
    once the step under way ends."""
    conn, sandbox = open_database(tmp_path / "a.db", TEST_CONFIG, create=True)
    try:
        conn.create_scalar_function("slow", _slow, 0)
        rows = "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 20)"
        sql = f"{rows} SELECT sum(slow()) FROM c"
        started = time.monotonic()
        with pytest.raises(StatementTimeout):
            run_statement(conn, sandbox, TEST_CONFIG, Statement(sql))
        assert sandbox.statement_timeout == 1.0
        elapsed = time.monotonic() - started
        assert 1.0 <= elapsed < 1.0 + 0.2 + 0.5, elapsed
        assert run_statement(conn, sandbox, TEST_CONFIG, Statement("SELECT 1")).rows == [(1,)]
    finally:
        conn.close()


def _slow(*args: apsw.SQLiteValue) -> int:
    time.sleep(0.2)
    return 1


def test_a_late_alarm_does_not_interrupt_the_next_statement(tmp_path: Path) -> None:
    conn, sandbox = open_database(tmp_path / "a.db", TEST_CONFIG, create=True)
    try:
        for _ in range(200):  # statements that end right at their deadline, then quick ones
            sandbox.start_statement(0.001)
            time.sleep(0.002)
            sandbox.end_statement()
            assert run_statement(conn, sandbox, TEST_CONFIG, Statement("SELECT 2")).rows == [(2,)]
    except apsw.InterruptError:  # pragma: no cover - the failure this test is about
        pytest.fail("an alarm of an earlier statement interrupted a later one")
    finally:
        conn.close()
