"""A deadline for request bodies, as ASGI middleware: the whole body must arrive within
`timeout` seconds of the request's start, else the route reading it gets SlowBody (HTTP 408)
and the connection is closed. A body dribbled a byte at a time then holds a connection, and
whatever waits for it, that long at most.

uvicorn bounds the wait between requests (keep-alive) but not the body of one; this is the rest.
A route that answers without reading the body is not timed, but its response closes the
connection while the body is still due, so a trickle cannot keep that connection either.

On every request with a body, so kept cheap: a request without one passes straight through,
and each read of a body is timed by asyncio's own `timeout_at` (one timer handle), not an
anyio cancel scope (measured: 6 us a request instead of 10, for the same bound; the server
runs on asyncio). One hand-made timer per request saved about 1 us more: not worth owning
the cancellation logic that `timeout_at` gets right.
"""

from __future__ import annotations

import asyncio
import math

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.errors import SlowBody


def _has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"", b"0")):
            return True
    return False


class BodyDeadline:
    def __init__(self, app: ASGIApp, timeout: float, exempt: tuple[str, ...] = ()) -> None:
        """`exempt`: path suffixes of routes that time their own (large) bodies; an early
        answer still closes the connection."""
        self.app = app
        self.timeout = timeout
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)  # nothing due: nothing to time, nothing to close
            return
        timed = not (self.exempt and scope["path"].endswith(self.exempt))
        body = _DueBody(receive, send, self.timeout if timed else math.inf)
        await self.app(scope, body.receive, body.send)


class _DueBody:
    """One request's body, due by its deadline: reads are timed until the last piece came (or
    the client left); a response started before that closes the connection."""

    __slots__ = ("_deadline", "_receive", "_send", "_timeout", "pending")

    def __init__(self, receive: Receive, send: Send, timeout: float) -> None:
        self._receive, self._send, self._timeout = receive, send, timeout
        self._deadline = asyncio.get_running_loop().time() + timeout if timeout < math.inf else None
        self.pending = True

    async def receive(self) -> Message:
        if not self.pending:
            return await self._receive()  # e.g. the wait for a disconnect while streaming out
        try:
            async with asyncio.timeout_at(self._deadline):
                message = await self._receive()
        except TimeoutError:  # only ever raised by the timeout (turned from its cancellation)
            raise SlowBody(f"the request body did not arrive within {self._timeout:g} s") from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.pending = False
        return message

    async def send(self, message: Message) -> None:
        if self.pending and message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
        await self._send(message)
