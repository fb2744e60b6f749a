"""What the routes need: one `Context`, built whole by ops and handed to `build_app`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from starlette.requests import HTTPConnection, Request

from backups.service import Backups
from router.admission import Admission
from router.auth import Authenticator, Principal
from router.proxy.placement import Placement
from router.request_writes import joined
from router.scheduler import Scheduler
from schema_sync.groups import GroupStore
from schema_sync.rollouts import Rollouts
from tenants.budget import Budget, Encoding, ResultMemory
from tenants.changes import ChangeFeed
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
    body_timeout: float
    max_batch_statements: int
    max_token_ttl: int
    worker_threads: int
    runnable_workers: int
    max_queued_per_tenant: int
    stream_idle_timeout: float
    max_streams_per_tenant: int
    max_streams: int
    max_websockets: int
    base_domain: str | None
    request_timeout: float
    max_request_result_bytes: int
    max_inflight_result_bytes: int
    heavy_worker_seconds: float
    fair_share_window: float
    fair_share_grace: float
    # data in and out (router/transfer_api.py)
    max_import_bytes: int
    max_transfers: int
    transfer_timeout: float
    transfer_idle_timeout: float
    export_step_pages: int
    export_max_restarts: int
    import_check_timeout: float


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
        feed: ChangeFeed,
        placement: Placement | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.fleet = fleet
        self.auth = auth
        self.config = config
        self.groups = groups
        self.rollouts = rollouts
        self.backups = backups
        self.streams = streams
        self.feed = feed
        self.placement = placement  # a cluster node's routing table (router.proxy), else None
        self.scheduler = Scheduler(
            config.worker_threads,
            config.max_queued_per_tenant,
            config.heavy_worker_seconds,
            config.fair_share_window,
            config.fair_share_grace,
            admission,
        )
        self.results = ResultMemory(config.max_inflight_result_bytes)
        self.websockets = 0  # Hrana WebSocket connections open (router.hrana.ws; event loop only)
        self.transfers = 0  # exports, dumps and imports running (router.transfer_api; event loop only)
        self._accepting = True

    @property
    def shutting_down(self) -> bool:
        return not self._accepting

    def stop_accepting(self) -> None:
        """From now on /readyz answers 503, so a load balancer drains us. Idempotent."""
        self._accepting = False

    def close(self) -> None:
        """Let the worker threads of the heavy lane go (idempotent; the owner calls it last)."""
        self.scheduler.close()

    async def blocking(self, fn: Callable[..., T], *args: object) -> T:
        """Run SQLite or file work in a worker thread so the event loop stays free (server
        work; a tenant's own work goes through `for_tenant`)."""
        return await self.scheduler.blocking(fn, *args)

    async def for_tenant(self, tenant: str, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` in a worker thread as one job of `tenant`: one job per tenant at a time,
        in the tenant's fair-share lane (router.scheduler). Raises TenantUnavailable (503)
        when `max_queued_per_tenant` jobs are already waiting. Event-loop only."""
        return await self.scheduler.call(tenant, fn, *args)

    def queued(self, tenant: str) -> bool:
        """Whether jobs of `tenant` are running or waiting in worker threads."""
        return self.scheduler.queued(tenant)

    def budget(self, encoding: Encoding) -> Budget:
        """A new request's allowance: `request_timeout` from now, `max_request_result_bytes`
        of results in `encoding`. Release it once the response is sent. It joins the request's
        writes tracking (router.request_writes)."""
        c = self.config
        return joined(Budget(c.request_timeout, c.max_request_result_bytes, self.results, encoding))

    def principal(self, request: Request) -> Principal:
        return self.auth.authenticate(request.headers.get("authorization"))


def ctx(request: HTTPConnection) -> Context:
    """The app's Context (`build_app` puts it on `app.state`; nothing else does)."""
    context: Context = request.app.state.ctx
    return context
