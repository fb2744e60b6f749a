"""The ASGI application: system routes, and every route, error handler and middleware in one app."""

from __future__ import annotations

import dataclasses

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from metrics.exposition import render as render_metrics
from router import (
    admin_api,
    backups_api,
    changes_api,
    cluster_api,
    groups_api,
    hrana,
    tenant_api,
    transfer_api,
)
from router.access_log import AccessLog
from router.ack_gate import AckGate
from router.body_deadline import BodyDeadline
from router.context import Context, ctx
from router.errors import EXCEPTION_HANDLERS
from router.openapi import openapi_document
from router.proxy.middleware import ClusterProxy, ProxyParts
from router.request_metrics import RequestMetrics


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


# Unready once this many flushes in a row failed to reach the replica: one failure is a blip
# (the next flush retries), several mean acknowledged writes are piling up on this disk only.
UNREADY_AFTER_FAILED_FLUSHES = 3


async def readyz(request: Request) -> JSONResponse:
    """200 while the data-dir lock is held, the replica took the recent flushes (or backups are
    off), the server is not shutting down and (a cluster node) its etcd lease is provably alive;
    else 503. Body: every check and the replica's state
    (with `reason` once it is behind by more than backup_unready_after, e.g. a full disk)."""
    c = ctx(request)
    checks = {"data_dir_lock": c.fleet.lock_held, "accepting": not c.shutting_down}
    body: dict[str, object] = {}
    if c.backups is not None:
        health = c.backups.replica_health()
        failing = health.failed_flushes_in_a_row >= UNREADY_AFTER_FAILED_FLUSHES
        checks["replica"] = health.ready and not failing
        body["replica"] = dataclasses.asdict(health)
        if not checks["replica"]:
            body["reason"] = health.reason or (
                f"the last {health.failed_flushes_in_a_row} backup flushes failed: {health.last_error}"
            )
    if c.placement is not None:
        why = c.placement.unavailable()
        checks["cluster"] = why is None
        if why is not None:
            body["reason"] = f"cluster: {why}"
    ready = all(checks.values())
    return JSONResponse({"ready": ready, "checks": checks, **body}, status_code=200 if ready else 503)


async def metrics(request: Request) -> Response:
    body, content_type = render_metrics()
    return Response(body, media_type=content_type)


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(openapi_document())


async def ping(request: Request) -> JSONResponse:
    """A bare JSON endpoint: the framework's own ceiling, for `sqlfleet bench hot`. It reads
    the body it is sent (unparsed), as a route must to keep the connection alive."""
    await request.body()
    return JSONResponse({"ok": True})


SYSTEM_ROUTES = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/v1/ping", ping, methods=["GET", "POST"]),
]


def build_app(context: Context, proxy: ProxyParts | None = None) -> Starlette:
    """The app over `context`, which routes get back with `ctx(request)`; with `proxy` (a
    cluster node), requests for tenants another node owns are forwarded there."""
    app = Starlette(
        # the router tries routes in turn: the tenants' queries, most of the traffic, first
        routes=[
            *tenant_api.ROUTES,
            *SYSTEM_ROUTES,
            *changes_api.ROUTES,
            *admin_api.ROUTES,
            *cluster_api.ROUTES,
            *backups_api.ROUTES,
            *groups_api.ROUTES,
            *hrana.ROUTES,
            *transfer_api.ROUTES,
        ],
        exception_handlers=dict(EXCEPTION_HANDLERS),
        middleware=[
            Middleware(AccessLog),
            Middleware(RequestMetrics),
            # an import's upload is bounded per piece and in all by the route (router.transfer_api)
            Middleware(BodyDeadline, timeout=context.config.body_timeout, exempt=("/import",)),
            *(
                [
                    Middleware(
                        ClusterProxy,
                        parts=proxy,
                        base_domain=context.config.base_domain,
                        deadline=context.config.request_timeout,
                    )
                ]
                if proxy
                else []
            ),
            # ack=replica: inside the proxy, so only what this node answers itself waits here
            *(
                [Middleware(AckGate, acks=acks, timeout=context.config.request_timeout)]
                if (acks := context.backups.shipper.acks if context.backups is not None else None)
                else []
            ),
        ],
    )
    app.state.ctx = context
    return app
