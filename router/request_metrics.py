"""Request metrics, as ASGI middleware: a counter and a latency histogram labelled by route
template and status class (never by tenant: see metrics/instruments.py)."""

from __future__ import annotations

from starlette.types import Scope

from metrics.instruments import REQUEST_SECONDS, REQUESTS
from router.middleware import RequestObserver, route_template


class RequestMetrics(RequestObserver):
    def finished(self, scope: Scope, status: int, seconds: float) -> None:
        route = route_template(scope)
        REQUESTS.labels(route, f"{status // 100}xx").inc()
        REQUEST_SECONDS.labels(route).observe(seconds)
