"""The watchdog: one thread that fires alarms at their deadlines (a heap of them).

SQLite's progress handler runs between VM steps, so one long step (a built-in function on
megabytes, a sort) never reaches it. `sqlite3_interrupt`, called from another thread, is seen
at the next check inside SQLite: the sandbox arms an alarm per statement that interrupts the
connection at its deadline (see tenants.sandbox, and tenants.functions for the steps that do
not check for interrupts at all).

Contract:
- `arm(deadline, fire)` returns an Alarm; `fire()` runs once, on the watchdog thread, at or
  shortly after `deadline` (time.monotonic()), unless `disarm` came first.
- `disarm(alarm)`: once it returns, `fire` never runs (if it was running, it has finished).
  Idempotent, cheap (the entry stays in the heap and is dropped when it surfaces).
- `fire` must be quick and must not arm or disarm (it runs under the watchdog's lock).
Thread-safe. One per process (`shared_watchdog()`), started on first use; its thread is a daemon.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# Deadlines closer together than this share one wake-up: a busy server then wakes the thread a
# bounded number of times per second, and an alarm fires at most this late.
_RESOLUTION = 0.005


class Alarm:
    __slots__ = ("deadline", "fire", "live")

    def __init__(self, deadline: float, fire: Callable[[], None]) -> None:
        self.deadline = deadline
        self.fire = fire
        self.live = True


class Watchdog:
    def __init__(self, name: str = "sqlfleet-watchdog") -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Alarm]] = []
        self._order = itertools.count()  # ties: equal deadlines never compare Alarms
        self._wake_at = float("inf")  # when the thread wakes next (inf: waits for a notify)
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def arm(self, deadline: float, fire: Callable[[], None]) -> Alarm:
        alarm = Alarm(deadline, fire)
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._order), alarm))
            if deadline + _RESOLUTION < self._wake_at:
                self._cond.notify()  # sleeping past this deadline: recompute
        return alarm

    def disarm(self, alarm: Alarm) -> None:
        with self._cond:
            alarm.live = False

    def pending(self) -> int:
        """Entries in the heap, disarmed ones not yet dropped included (for tests)."""
        with self._cond:
            return len(self._heap)

    def close(self) -> None:
        """Stop the thread; alarms not yet fired never fire. Idempotent."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(5)

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                heap = self._heap
                while heap and (not heap[0][2].live or heap[0][0] <= now):
                    _, _, alarm = heapq.heappop(heap)
                    if alarm.live:
                        alarm.live = False
                        try:
                            alarm.fire()
                        except Exception:  # one bad alarm must not stop the others
                            log.exception("watchdog alarm failed")
                self._wake_at = heap[0][0] + _RESOLUTION if heap else float("inf")
                timeout = None if not heap else max(0.0, self._wake_at - now)
                self._cond.wait(timeout)
            self._wake_at = float("inf")


_shared: Watchdog | None = None
_shared_lock = threading.Lock()


def shared_watchdog() -> Watchdog:
    """The process's watchdog, started on first use."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Watchdog()
        return _shared
