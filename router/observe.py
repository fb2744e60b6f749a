"""Request metrics as plain ASGI middleware (labels: route template and status class)."""

from __future__ import annotations

import time

from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from metrics.instruments import REQUEST_SECONDS, REQUESTS


class RequestMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route: BaseRoute | None = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            REQUESTS.labels(name, f"{status // 100}xx").inc()
            REQUEST_SECONDS.labels(name).observe(time.perf_counter() - started)
