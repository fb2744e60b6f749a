"""Simulated wall-clock time: every `time.time()` of the run reads it, and only the simulation
moves it (between steps, and inside a step when an injected slow PUT takes time)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

EPOCH = 1_750_000_000.0  # where every run starts; any fixed moment would do


class SimClock:
    """Time in whole microseconds (restore compares moments in microseconds: a commit's time
    and a moment named after it compare exactly)."""

    def __init__(self, start: float = EPOCH) -> None:
        self.micros = round(start * 1_000_000)

    def time(self) -> float:
        return self.micros / 1_000_000

    def advance(self, seconds: float) -> None:
        """Move on by `seconds` (at least one microsecond: two steps never share a moment)."""
        self.micros += max(1, round(seconds * 1_000_000))

    def ns(self) -> int:
        return self.micros * 1000

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """`time.time` reads this clock inside the block. Everything in sqlfleet that takes a
        wall-clock reading calls `time.time()` (commit times, generation ids, snapshot times,
        segment keys, the retention horizon, `latest`), so the whole run is on simulated time;
        `time.monotonic` stays real (it only bounds waits, which a single-threaded run never
        hits)."""
        real = time.time
        time.time = self.time
        try:
            yield
        finally:
            time.time = real
