"""Ordered work on a WebSocket connection: what one stream (or one cursor) was asked to do runs
in the order it was asked, while other streams go on meanwhile, as the spec requires."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import TaskGroup

Op = Callable[[], Awaitable[None]]

# Seconds a lane's task waits for more work before it ends: a client with one request in
# flight per stream then costs no task start per request (a start is ~20 us, a wake-up ~5).
LINGER = 1.0


class Lane:
    """Runs the operations given to `push` one at a time, in order, as a task of `tasks` that
    lives while there is something to run (and LINGER seconds more). Each operation handles its
    own errors. Event loop only."""

    def __init__(self, tasks: TaskGroup) -> None:
        self._tasks = tasks
        self._pending: deque[Op] = deque()
        self._running = False
        self._wake: anyio.Event | None = None

    def push(self, op: Op) -> None:
        self._pending.append(op)
        if self._wake is not None:
            self._wake.set()
        elif not self._running:
            self._running = True
            self._tasks.start_soon(self._drain)

    async def _drain(self) -> None:
        try:
            while True:
                while self._pending:
                    await self._pending.popleft()()
                self._wake = anyio.Event()
                with anyio.move_on_after(LINGER):
                    await self._wake.wait()
                self._wake = None
                if not self._pending:
                    return
        finally:
            self._running = False
            self._wake = None
            self._pending.clear()  # cancelled: the connection is going, and what it asked with it
