"""What the routes need, hung on `app.state.ctx`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio
import anyio.to_thread
from starlette.requests import Request

from backups.service import Backups
from router.auth import Authenticator, Principal
from tenants.errors import TenantUnavailable
from tenants.fleet import Fleet

T = TypeVar("T")


@dataclass(frozen=True)
class RouterConfig:
    max_body_bytes: int = 4 << 20
    max_batch_statements: int = 1000
    max_token_ttl: int = 365 * 86400
    worker_threads: int = 16
    max_queued_per_tenant: int = 256
    stream_idle_timeout: float = 10.0
    max_streams_per_tenant: int = 100
    max_streams: int = 10_000
    base_domain: str | None = None


class _Gate:
    def __init__(self) -> None:
        self.lock = anyio.Lock()
        self.users = 0


class Context:
    def __init__(self, fleet: Fleet, auth: Authenticator, config: RouterConfig) -> None:
        self.fleet = fleet
        self.auth = auth
        self.config = config
        self.limiter = anyio.CapacityLimiter(config.worker_threads)
        self.shutting_down = False
        self.backups: Backups | None = None  # set by ops when backups are on
        self._gates: dict[str, _Gate] = {}

    async def blocking(self, fn: Callable[..., T], *args: object) -> T:
        """Run SQLite or file work in a worker thread so the event loop stays free."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def for_tenant(self, tenant: str, fn: Callable[..., T], *args: object) -> T:
        """`blocking`, one call per tenant at a time. A tenant's statements are serialized by
        the pool anyway; queueing here, on the event loop, keeps one busy tenant from holding
        every worker thread while it waits for its own lock. Raises TenantUnavailable (503)
        when `max_queued_per_tenant` calls are already waiting. Event-loop only."""
        gate = self._gates.get(tenant)
        if gate is None:
            gate = self._gates[tenant] = _Gate()
        if gate.users >= self.config.max_queued_per_tenant:
            raise TenantUnavailable(f"tenant {tenant!r} is busy: {gate.users} requests queued")
        gate.users += 1
        try:
            async with gate.lock:
                return await self.blocking(fn, *args)
        finally:
            gate.users -= 1
            if gate.users == 0:
                del self._gates[tenant]

    def queued(self, tenant: str) -> bool:
        """Whether calls for `tenant` are running or waiting in worker threads."""
        return tenant in self._gates

    def principal(self, request: Request) -> Principal:
        return self.auth.authenticate(request.headers.get("authorization"))


def ctx(request: Request) -> Context:
    context: Context = request.app.state.ctx
    return context
