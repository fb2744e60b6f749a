"""A WebSocket cursor (`open_cursor`, `fetch_cursor`, `close_cursor`): the entries of a batch,
streamed from the worker thread that runs it to the fetches that read them.

The thread hands entries over in chunks through a small bounded channel, so what a cursor holds
is a few chunks at most (and its rows count against its request's result budget, as over HTTP).
A client that does not fetch holds the thread, and its tenant, until the request's deadline at
most: then the batch fails with REQUEST_TIME_LIMIT. Closing the cursor stops the batch at its
next entry.
"""

from __future__ import annotations

import time
from collections import deque

import anyio
import anyio.from_thread
import anyio.lowlevel

from router.hrana.errors import ProtocolError
from router.hrana.protocol import CursorEntry, Error, ErrorEntry
from router.hrana.ws.lane import Lane
from tenants.budget import Budget, RequestTimeLimit

_CHUNK = 128  # entries handed from the thread to the event loop at once
_CHANNEL = 4  # chunks waiting for fetches before the thread waits


class CursorClosed(ProtocolError):
    """The client closed the cursor (or its stream, or its connection) before it was done."""

    code = "CURSOR_CLOSED"


class WsCursor:
    """One open cursor. `emit` is the worker thread's side; `fetch`, `finish` and `close` the
    event loop's. Made on the event loop."""

    def __init__(self, lane: Lane) -> None:
        self.lane = lane  # its fetches and close, in order
        self._sender, self._receiver = anyio.create_memory_object_stream[list[CursorEntry]](_CHANNEL)
        self._token = anyio.lowlevel.current_token()
        self._buffer: list[CursorEntry] = []
        self._tail: list[CursorEntry] = []  # what `finish` had left: read after the channel
        self._pending: deque[CursorEntry] = deque()
        self._ended = False  # the channel is drained and finished
        self.closed = False
        self.failed: Error | None = None  # the cursor never ran: every fetch answers this
        self.budget: Budget | None = None  # the batch's, from when it starts
        self.running = False  # the batch is running (its thread uses the budget)

    # -- worker thread ---------------------------------------------------------------------------

    def emit(self, entry: CursorEntry) -> None:
        """Buffer one entry; hand the buffer over once it is a chunk, waiting while the channel
        is full until the request's deadline. Raises CursorClosed once the cursor is closed,
        RequestTimeLimit when the client did not fetch in time."""
        if self.closed:
            raise CursorClosed("the cursor was closed")
        self._buffer.append(entry)
        if len(self._buffer) >= _CHUNK:
            chunk, self._buffer = self._buffer, []
            anyio.from_thread.run(self._send, chunk, token=self._token)

    async def _send(self, chunk: list[CursorEntry]) -> None:
        assert self.budget is not None
        try:
            with anyio.fail_after(max(0.0, self.budget.deadline - time.monotonic())):
                await self._sender.send(chunk)
        except TimeoutError:
            limit = self.budget.timeout
            raise RequestTimeLimit(f"the client fetched no cursor entries within {limit:g} s") from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise CursorClosed("the cursor was closed") from None

    # -- event loop ------------------------------------------------------------------------------

    def start(self, budget: Budget) -> None:
        self.budget, self.running = budget, True

    def finish(self, error: Error | None) -> None:
        """The batch is over (with `error` if it failed as a whole): what is still buffered,
        and the error entry, come after the entries in the channel. Never waits."""
        self.running = False
        self._tail = [*self._buffer, *([ErrorEntry(error)] if error is not None else [])]
        self._buffer = []
        self._sender.close()
        if self.closed:
            self._release()

    async def fetch(self, max_count: int) -> tuple[list[CursorEntry], bool]:
        """Up to `max_count` entries (at least one unless done, waiting for the batch), and
        whether the cursor is done."""
        while not self._pending and not self._ended:
            try:
                self._pending.extend(await self._receiver.receive())
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                self._end()
        entries = [self._pending.popleft() for _ in range(min(max_count, len(self._pending)))]
        if not self._pending and not self._ended:
            try:  # is that all? say so now, saving the client a fetch
                self._pending.extend(self._receiver.receive_nowait())
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                self._end()
            except anyio.WouldBlock:
                pass
        done = self._ended and not self._pending
        if done:
            self._release()
        return entries, done

    def _end(self) -> None:
        self._ended = True
        self._pending.extend(self._tail)
        self._tail = []

    def close(self) -> None:
        """Stop the batch at its next entry and drop what it produced; its result budget is let
        go once the batch is over. Idempotent."""
        self.closed = True
        self._receiver.close()
        self._pending.clear()
        self._tail = []
        if not self.running:
            self._release()

    def _release(self) -> None:
        if self.budget is not None:
            self.budget.release()
