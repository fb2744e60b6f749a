"""What the routes need, hung on `app.state.ctx`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio
import anyio.to_thread
from starlette.requests import Request

from router.auth import Authenticator, Principal
from tenants.fleet import Fleet

T = TypeVar("T")


@dataclass(frozen=True)
class RouterConfig:
    max_body_bytes: int = 4 << 20
    max_batch_statements: int = 1000
    max_token_ttl: int = 365 * 86400
    worker_threads: int = 16


class Context:
    def __init__(self, fleet: Fleet, auth: Authenticator, config: RouterConfig) -> None:
        self.fleet = fleet
        self.auth = auth
        self.config = config
        self.limiter = anyio.CapacityLimiter(config.worker_threads)
        self.shutting_down = False

    async def blocking(self, fn: Callable[..., T], *args: object) -> T:
        """Run SQLite or file work in a worker thread so the event loop stays free."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    def principal(self, request: Request) -> Principal:
        return self.auth.authenticate(request.headers.get("authorization"))


def ctx(request: Request) -> Context:
    context: Context = request.app.state.ctx
    return context
