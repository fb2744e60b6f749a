"""The ASGI application: routes, error handlers, request metrics."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from metrics.exposition import render as render_metrics
from router import admin_api, backups_api, groups_api, hrana, tenant_api
from router.auth import Authenticator
from router.context import Context, RouterConfig, ctx
from router.errors import EXCEPTION_HANDLERS
from router.observe import RequestMetrics
from router.openapi import openapi_document
from tenants.fleet import Fleet


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    c = ctx(request)
    checks = {"data_dir_lock": c.fleet.lock_held, "accepting": not c.shutting_down}
    ready = all(checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


async def metrics(request: Request) -> Response:
    body, content_type = render_metrics()
    return Response(body, media_type=content_type)


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(openapi_document())


async def ping(request: Request) -> JSONResponse:
    """A bare JSON endpoint: the framework's own ceiling, for `sqlfleet bench hot`."""
    return JSONResponse({"ok": True})


SYSTEM_ROUTES = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/v1/ping", ping, methods=["GET", "POST"]),
]


def build_app(fleet: Fleet, auth: Authenticator, config: RouterConfig) -> Starlette:
    app = Starlette(
        routes=[
            *SYSTEM_ROUTES,
            *tenant_api.ROUTES,
            *admin_api.ROUTES,
            *backups_api.ROUTES,
            *groups_api.ROUTES,
            *hrana.ROUTES,
        ],
        exception_handlers=dict(EXCEPTION_HANDLERS),
        middleware=[Middleware(RequestMetrics)],
    )
    app.state.ctx = Context(fleet, auth, config)
    # closed by ops.server.Server.close, before the fleet (an open transaction holds a tenant lock)
    app.state.hrana = hrana.Streams(
        fleet.pool,
        config.stream_idle_timeout,
        config.max_streams_per_tenant,
        config.max_streams,
        writable=lambda tenant: all(hook.writable(tenant) for hook in fleet.hooks),
    )
    return app
