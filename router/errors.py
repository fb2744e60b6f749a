"""One place that renders every error as {"error": {"code", "message"}} — never a traceback."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

from metrics.instruments import DISK_FULL
from tenants.errors import InsufficientStorage, MethodNotAllowed, NotFound, SqlfleetError, disk_full

log = logging.getLogger(__name__)


class BackupsDisabled(SqlfleetError):
    """A backups route was called on a server running without backups."""

    status = 409
    code = "backups_disabled"


class SlowBody(SqlfleetError):
    """The request body did not arrive within `body_timeout` (router/body_deadline.py)."""

    status = 408
    code = "request_timeout"


class ErrorResponse(Response):
    """JSON with non-ASCII escaped: a message quoting odd client input always encodes."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode("ascii")


def render(exc: SqlfleetError, headers: Mapping[str, str] | None = None) -> Response:
    headers = dict(headers or {})
    if exc.status in (429, 503):
        headers["Retry-After"] = str(exc.detail.get("retry_after", 1))  # a quota knows when it has room
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="sqlfleet"'  # RFC 6750
    return ErrorResponse(exc.to_json(), status_code=exc.status, headers=headers)


async def handle_sqlfleet_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SqlfleetError)
    if exc.status >= 500 and not isinstance(exc, InsufficientStorage) and disk_full(exc):
        # a server fault only because the disk is full; what it names (a path, a key) is logged
        log.warning("%s %s: the disk is full (%s)", request.method, request.url.path, exc)
        return render(_insufficient_storage(exc))
    return render(exc)


def _insufficient_storage(exc: BaseException) -> InsufficientStorage:
    """A full disk (tenants.errors.disk_full) as the client sees it: 507, never a 500."""
    DISK_FULL.labels("request").inc()
    return InsufficientStorage(
        "the server's disk is full: the request changed nothing; retry once an operator has freed space"
    )


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        message = f"method {request.method} not allowed on {request.url.path}"
        return render(MethodNotAllowed(message), {"Allow": _allowed_methods(request)})
    if exc.status_code == 404:
        return render(NotFound(f"no route {request.url.path}"))
    body = {"error": {"code": "http_error", "message": str(exc.detail)}}
    return ErrorResponse(body, exc.status_code, exc.headers)


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path: a 405 must list them (RFC 9110), and
    Starlette's own header names only the first route that matched the path."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    if disk_full(exc):
        log.warning("%s %s: the disk is full (%s)", request.method, request.url.path, exc)
        return render(_insufficient_storage(exc))
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return ErrorResponse({"error": {"code": "internal", "message": "internal server error"}}, 500)


EXCEPTION_HANDLERS = {
    SqlfleetError: handle_sqlfleet_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
