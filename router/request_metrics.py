"""Request metrics, as ASGI middleware: a counter and a latency histogram labelled by route
template and status class (never by tenant: see metrics/instruments.py)."""

from __future__ import annotations

from prometheus_client.metrics import Counter, Histogram
from starlette.types import ASGIApp, Scope

from metrics.instruments import REQUEST_SECONDS, REQUESTS
from router.middleware import RequestObserver, route_template


class RequestMetrics(RequestObserver):
    def __init__(self, app: ASGIApp) -> None:
        super().__init__(app)
        # The labelled children, looked up once per (route, status): `labels()` validates and
        # locks on every call, which was a few percent of a hot request. Bounded by the routes.
        self._children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def finished(self, scope: Scope, status: int, seconds: float) -> None:
        route, status_class = route_template(scope), status // 100
        children = self._children.get((route, status_class))
        if children is None:
            children = REQUESTS.labels(route, f"{status_class}xx"), REQUEST_SECONDS.labels(route)
            self._children[route, status_class] = children
        children[0].inc()
        children[1].observe(seconds)
