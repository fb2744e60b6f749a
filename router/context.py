"""What the routes need: one `Context`, built whole by ops and handed to `build_app`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.to_thread
from starlette.requests import Request

from backups.service import Backups
from router.auth import Authenticator, Principal
from schema_sync.groups import GroupStore
from schema_sync.rollout import Rollouts
from tenants.errors import TenantUnavailable
from tenants.fleet import Fleet

if TYPE_CHECKING:
    # only a type here: importing router.hrana at run time would import its routes, which
    # import this module (they call `ctx`)
    from router.hrana.streams import Streams

T = TypeVar("T")


@dataclass(frozen=True)
class RouterConfig:
    """Built by `Settings.router_config()`, which holds the defaults."""

    max_body_bytes: int
    max_batch_statements: int
    max_token_ttl: int
    worker_threads: int
    max_queued_per_tenant: int
    stream_idle_timeout: float
    max_streams_per_tenant: int
    max_streams: int
    base_domain: str | None


class _Gate:
    def __init__(self) -> None:
        self.lock = anyio.Lock()
        self.users = 0


class Context:
    """Everything a route uses. `backups` is None when backups are off (their routes answer
    409 backups_disabled). The owner closes the services; `stop_accepting` only flips readiness."""

    def __init__(
        self,
        fleet: Fleet,
        auth: Authenticator,
        config: RouterConfig,
        *,
        groups: GroupStore,
        rollouts: Rollouts,
        backups: Backups | None,
        streams: Streams,
    ) -> None:
        self.fleet = fleet
        self.auth = auth
        self.config = config
        self.groups = groups
        self.rollouts = rollouts
        self.backups = backups
        self.streams = streams
        self.limiter = anyio.CapacityLimiter(config.worker_threads)
        self._accepting = True
        self._gates: dict[str, _Gate] = {}

    @property
    def shutting_down(self) -> bool:
        return not self._accepting

    def stop_accepting(self) -> None:
        """From now on /readyz answers 503, so a load balancer drains us. Idempotent."""
        self._accepting = False

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
    """The app's Context (`build_app` puts it on `app.state`; nothing else does)."""
    context: Context = request.app.state.ctx
    return context
