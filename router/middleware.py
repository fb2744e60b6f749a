"""What the request middleware (request_metrics, access_log) share: plain ASGI middleware that
follows each HTTP request to its response; subclasses say what to note on the way."""

from __future__ import annotations

import time

from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def route_template(scope: Scope) -> str:
    """The matched route's path template (`/v1/tenants/{tenant}/query`), or `unmatched`; known
    once the app has run (the router records its match in the shared scope)."""
    route: BaseRoute | None = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class RequestObserver:
    """Calls `started` before the app runs, `responding` as the response starts (it may add
    headers), and `finished` with the status and duration once the app is done, whether it
    returned or raised (status 500 if no response started). Other scopes pass through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        begun = time.perf_counter()
        status = 500
        self.started(scope)

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self.responding(scope, message)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.finished(scope, status, time.perf_counter() - begun)

    def started(self, scope: Scope) -> None:
        pass

    def responding(self, scope: Scope, message: Message) -> None:
        pass

    def finished(self, scope: Scope, status: int, seconds: float) -> None:
        pass
