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
        """`time.time` and `time.time_ns` read this clock inside the block. Everything in
        sqlfleet that takes a wall-clock reading calls one of them (commit times, generation
        ids, snapshot times, segment keys, the retention horizon, `latest`; `time_ns` the age
        of a file's mtime, which the simulated disk sets from this clock too), so the whole run
        is on simulated time: with `time_ns` real, whether a closed tenant's files were
        remembered (backups.continuity, SETTLE_NS) depended on how fast the machine ran, and
        a seed's replay in a busy CI differed. `time.monotonic` stays real (it only bounds
        waits, which a single-threaded run never hits)."""
        real, real_ns = time.time, time.time_ns
        time.time, time.time_ns = self.time, self.ns
        try:
            yield
        finally:
            time.time, time.time_ns = real, real_ns
