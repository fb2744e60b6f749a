"""A deadline for request bodies, as ASGI middleware: the whole body must arrive within
`timeout` seconds of the request's start, else the route reading it gets SlowBody (HTTP 408)
and the connection is closed. A body dribbled a byte at a time then holds a connection, and
whatever waits for it, that long at most.

uvicorn bounds the wait between requests (keep-alive) but not the body of one; this is the rest.
A route that answers without reading the body is not timed, but its response closes the
connection while the body is still due, so a trickle cannot keep that connection either.
"""

from __future__ import annotations

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.errors import SlowBody


def _has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"", b"0")):
            return True
    return False


class BodyDeadline:
    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = anyio.current_time() + self.timeout
        pending = _has_body(scope)  # body still due: reads are timed, the answer closes

        async def receive_in_time() -> Message:
            nonlocal pending
            if not pending:
                return await receive()  # e.g. the wait for a disconnect while streaming out
            with anyio.move_on_after(deadline - anyio.current_time()):
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    pending = False
                return message
            raise SlowBody(f"the request body did not arrive within {self.timeout:g} s")

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and pending:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive_in_time, send_closing)
