"""Ordered work on a WebSocket connection: what one stream (or one cursor) was asked to do runs
in the order it was asked, while other streams go on meanwhile, as the spec requires."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from anyio.abc import TaskGroup

Op = Callable[[], Awaitable[None]]

# Seconds a lane's task waits for more work before it ends: a client with one request in
# flight per stream then costs no task start per request (a start is ~20 us, a wake-up ~5).
LINGER = 1.0


class Lane:
    """Runs the operations given to `push` one at a time, in order, as a task of `tasks` that
    lives while there is something to run (and LINGER seconds more). Each operation handles its
    own errors. Event loop only (asyncio: the server runs on it).

    The wait for more work costs no timer per operation: one timer per lane, armed when the
    lane first goes idle, looks at how long it has been idle when it fires and, if work came
    meanwhile, arms itself again for the rest (a per-wait timeout cost a cancel scope and a
    timer on every request of a stream, a tenth of a WebSocket answer's server time)."""

    def __init__(self, tasks: TaskGroup) -> None:
        self._tasks = tasks
        self._pending: deque[Op] = deque()
        self._running = False
        self._wake: asyncio.Future[None] | None = None
        self._idle_since = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def push(self, op: Op) -> None:
        self._pending.append(op)
        if self._wake is not None:
            if not self._wake.done():
                self._wake.set_result(None)
        elif not self._running:
            self._running = True
            self._tasks.start_soon(self._drain)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                while self._pending:
                    await self._pending.popleft()()
                self._idle_since = loop.time()
                self._wake = loop.create_future()
                if self._timer is None:
                    self._timer = loop.call_at(self._idle_since + LINGER, self._linger_over)
                await self._wake
                self._wake = None
                if not self._pending:
                    return  # idle for LINGER seconds
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._running = False
            self._wake = None
            self._pending.clear()  # cancelled: the connection is going, and what it asked with it

    def _linger_over(self) -> None:
        self._timer = None
        wake = self._wake
        if wake is None or wake.done():
            return  # busy: the lane arms a timer again when it next goes idle
        loop = asyncio.get_running_loop()
        due = self._idle_since + LINGER
        if loop.time() < due:  # went idle again since this timer was armed
            self._timer = loop.call_at(due, self._linger_over)
        else:
            wake.set_result(None)  # with nothing pending: the lane ends
