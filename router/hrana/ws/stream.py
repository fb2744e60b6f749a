"""A stream id of a WebSocket connection, and the registry stream (router.hrana.streams) behind
it: opened, taken for each request, ended. An id whose stream failed to open, expired or was
preempted stays in use until the client closes it, and its requests get that error again."""

from __future__ import annotations

from dataclasses import dataclass

import anyio

from router.context import Context
from router.hrana.errors import StreamClosed, StreamExpired
from router.hrana.protocol import Error
from router.hrana.streams import Stream
from router.hrana.ws.cursor import WsCursor
from router.hrana.ws.lane import Lane
from tenants.errors import SqlfleetError


class StreamFailed(SqlfleetError):
    """A request on a stream that failed to open or ended: the error it ended with."""

    def __init__(self, error: Error) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(eq=False)
class SocketStream:
    """One stream id: its lane (its requests, in order), its registry stream once open, or why
    it has none. Event loop only."""

    id: int
    lane: Lane
    stream: Stream | None = None
    ended: Error | None = None  # why it failed to open, or ended
    closing: bool = False  # close_stream was read
    cursor: WsCursor | None = None  # its open cursor

    def open(self, c: Context, tenant: str) -> Error | None:
        """Open its registry stream (idle: its expiry clock runs); why not, if it cannot
        (TOO_MANY_STREAMS, STREAMS_EXHAUSTED)."""
        try:
            stream = c.streams.open(tenant)
        except SqlfleetError as exc:
            self.ended = Error.of(exc)
            return self.ended
        c.streams.give_back(stream)
        self.stream = stream
        return None

    def take(self, c: Context) -> Stream:
        """Its registry stream, taken for one request. Raises StreamFailed, StreamClosed,
        StreamExpired (expired or preempted since its last request)."""
        if self.stream is None:
            if self.ended is not None:
                raise StreamFailed(self.ended)
            raise StreamClosed("the stream is closed")
        c.streams.retake(self.stream)
        return self.stream

    async def failed(self, c: Context, exc: SqlfleetError) -> Error:
        """The error of a request that could not run; a stream that expired (or was
        preempted) is ended for good, so that its later requests hear the same."""
        if isinstance(exc, StreamFailed):
            return exc.error
        error = Error.of(exc)
        if isinstance(exc, StreamExpired) and self.stream is not None:
            stream, self.stream, self.ended = self.stream, None, error
            await end(c, stream)
        return error

    async def close(self, c: Context) -> None:
        """Roll back and let go of its registry stream, if it has one."""
        if self.stream is not None:
            stream, self.stream = self.stream, None
            await end(c, stream)


async def end(c: Context, stream: Stream) -> None:
    """Roll back and let go of `stream`, unless it has ended already. Shielded."""
    streams = c.streams
    with anyio.CancelScope(shield=True):
        try:
            streams.retake(stream)
        except StreamExpired:
            return
        stream.closed = True
        try:
            await c.blocking(streams.detach, stream)
        finally:
            streams.give_back(stream)
