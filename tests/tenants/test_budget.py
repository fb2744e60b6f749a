"""A request's result budget (tenants.budget): what a value costs as JSON, measured without
keeping other threads (the event loop) from the GIL."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

import pytest

from tenants.budget import (
    HELD_PER_BYTE,
    Budget,
    Encoding,
    ResultMemory,
    ResultsTooLarge,
    ServerBusy,
    json_size,
)

_ESCAPABLE = re.compile(r'[\x00-\x1f"\\]')


def _expected(text: str) -> int:
    return len(text.encode()) + 5 * len(_ESCAPABLE.findall(text)) + 2


def test_text_costs_its_utf8_bytes_and_escapes_short_or_long() -> None:
    for text in ("", "plain", 'q"b\\s\x01\n', "é€😀", 'a"é\x01€' * 200_000):
        assert json_size(text) == _expected(text)
    assert json_size(b"\x00" * 10) == 16 + 2
    assert json_size(None) == 4
    assert json_size(12) == json_size(1.5) == 24


def _longest_gap(work: Callable[[], object]) -> float:
    """The longest time a thread that only wants the GIL now and then waited, while `work`
    (a callable) ran on this one."""
    gaps: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            time.sleep(0.0005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        time.sleep(0.05)
        work()
    finally:
        stop.set()
        ticker.join()
    return max(gaps)


def test_measuring_a_huge_text_lets_other_threads_run() -> None:
    # finding 2's 8 MB values, measured for the request's result budget: one regex search over
    # a text held the GIL for its whole length (~20 ms per 8 MB, so K attackers kept the event
    # loop waiting for seconds). A 128 MB text: ~350 ms in one call before.
    text = "a" * (128 << 20)
    gap = _longest_gap(lambda: json_size(text))
    assert gap < 0.1, f"another thread waited {gap * 1000:.0f} ms for the GIL"


def _budget(max_bytes: int) -> Budget:
    return Budget(10.0, max_bytes, ResultMemory(1 << 30), Encoding(per_value=14, per_row=3))


def test_a_long_text_that_cannot_fit_is_refused_before_it_is_measured() -> None:
    # finding 2's statements (100 x 8 MB values in one request): every value after the first
    # was measured in full (~5 ms of GIL each) only to be refused
    text = "a" * (256 << 20)
    budget = _budget(8 << 20)
    started = time.perf_counter()
    with pytest.raises(ResultsTooLarge):
        budget.charge((1, text))
    assert time.perf_counter() - started < 0.05  # measuring it takes ~0.2 s

    fits = _budget(8 << 20)
    value = 'é"\x01' * 100_000
    fits.charge((value, None))
    assert fits.used == 3 + 2 * 14 + json_size(value) + 4


def test_server_memory_is_counted_at_what_a_result_really_holds() -> None:
    # bench isolation: 8 requests of 8 MB results grew the server by ~250 MiB while the
    # server-wide bound (counting each result once) saw 64 MiB of its 128: never refused
    memory = ResultMemory(64 << 20)
    budgets = [Budget(10.0, 8 << 20, memory, Encoding(per_value=14, per_row=3)) for _ in range(3)]
    budgets[0].add(8 << 20)
    budgets[1].add(8 << 20)
    assert memory.held >= 2 * HELD_PER_BYTE * (8 << 20) == 48 << 20
    with pytest.raises(ServerBusy):
        budgets[2].add(8 << 20)
    for budget in budgets:
        budget.release()
    assert memory.held == 0
