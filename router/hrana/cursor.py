"""The v3 cursor's response: entries streamed as the batch runs, never the whole body at once.

The worker thread that runs the batch encodes entries (JSON lines, or length-delimited protobuf
messages) and hands them to the event loop in chunks through a small bounded channel: a client
that reads slowly holds the thread (and the tenant) at most until the request's deadline, then
the request fails. The status is decided before the first byte: a request refused before its
batch starts (the tenant busy, the stream expired, ...) is an ordinary Hrana error response;
once the header is out, a step that fails is a step_error and a failure of the whole request
an `error` entry, as the protocol has it. What the body holds is bounded by the request's result budget.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.abc import ObjectSendStream
from anyio.streams.memory import MemoryObjectReceiveStream
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from router.hrana.protocol import CursorEntry, CursorHeader, Error, ErrorEntry
from tenants.budget import Budget, RequestTimeLimit
from tenants.errors import SqlfleetError

_GONE = (anyio.ClosedResourceError, anyio.BrokenResourceError)
_CHUNK = 64 << 10  # lines are sent in chunks of about this many bytes
_CHANNEL = 4  # chunks the channel holds before the worker thread waits for the client

Encode = Callable[[CursorHeader | CursorEntry], bytes]  # one item of the body, framed (the codec's)
Producer = Callable[["CursorOutput"], Awaitable[None]]
ErrorResponse = Callable[[SqlfleetError], Response]


class _Failed:
    def __init__(self, error: SqlfleetError) -> None:
        self.error = error


class CursorOutput:
    """The thread side: `emit` entries (the header line first). The newest line is always held
    back: `finish`, on the event loop once the stream is given back, sends it, so a client
    that acts on the last entry of the batch finds its stream free for the next request."""

    def __init__(self, channel: ObjectSendStream[bytes | _Failed], encode: Encode, budget: Budget) -> None:
        self._channel = channel
        self._encode = encode
        self._budget = budget
        self._token = anyio.lowlevel.current_token()  # made on the event loop; used from threads
        self._buffer: list[bytes] = []
        self._size = 0

    def emit(self, entry: CursorHeader | CursorEntry) -> None:
        """Buffer one entry; send what was buffered before it once that is a chunk's worth,
        waiting while the channel is full (the client reads slowly) until the request's
        deadline. Raises RequestTimeLimit then, and anyio's ClosedResourceError or
        BrokenResourceError once the client is gone. Worker thread only."""
        if self._size >= _CHUNK:
            anyio.from_thread.run(self._send, self._take(), token=self._token)
        line = self._encode(entry)
        self._buffer.append(line)
        self._size += len(line)

    async def finish(self) -> None:
        """Send what is left. Event loop only."""
        if self._buffer:
            await self._send(self._take())

    def _take(self) -> bytes:
        data = b"".join(self._buffer)
        self._buffer, self._size = [], 0
        return data

    async def _send(self, data: bytes) -> None:
        left = self._budget.deadline - time.monotonic()
        try:
            with anyio.fail_after(max(0.0, left)):
                await self._channel.send(data)
        except TimeoutError:
            raise RequestTimeLimit(
                f"the client did not read the cursor's rows within the request's {self._budget.timeout:g} s"
            ) from None


class CursorResponse(Response):
    """Runs `produce(output)` (which runs the batch in a worker thread) while it streams."""

    def __init__(
        self,
        produce: Producer,
        encode: Encode,
        budget: Budget,
        on_error: ErrorResponse,
        media_type: str = "text/plain",
    ) -> None:
        super().__init__(None, 200, media_type=media_type)
        # streamed: no Content-Length (the server sends the body chunked)
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.produce, self.encode, self.budget, self.on_error = produce, encode, budget, on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._stream(scope, receive, send)
        finally:
            self.budget.release()

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        sender, receiver = anyio.create_memory_object_stream[bytes | _Failed](_CHANNEL)
        output = CursorOutput(sender, self.encode, self.budget)

        async def run() -> None:
            async with sender:
                failure: SqlfleetError | None = None
                try:
                    await self.produce(output)
                except SqlfleetError as exc:
                    failure = exc
                except _GONE:
                    return  # the client went away: nobody to tell
                with contextlib.suppress(*_GONE, SqlfleetError):
                    await output.finish()
                    if failure is not None:
                        await sender.send(_Failed(failure))

        async with anyio.create_task_group() as tasks, receiver:
            tasks.start_soon(run)
            first = await _next(receiver)
            if isinstance(first, _Failed):
                await self.on_error(first.error)(scope, receive, send)
                return
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            chunk: bytes | _Failed | None = first
            while chunk is not None:
                if isinstance(chunk, _Failed):
                    line = self.encode(ErrorEntry(Error.of(chunk.error)))
                    await send({"type": "http.response.body", "body": line, "more_body": True})
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                chunk = await _next(receiver)
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _next(receiver: MemoryObjectReceiveStream[bytes | _Failed]) -> bytes | _Failed | None:
    try:
        return await receiver.receive()
    except anyio.EndOfStream:
        return None
