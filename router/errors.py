"""One place that renders every error as {"error": {"code", "message"}} — never a traceback."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tenants.errors import MethodNotAllowed, NotFound, SqlfleetError

log = logging.getLogger(__name__)


def render(exc: SqlfleetError) -> JSONResponse:
    headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
    return JSONResponse(exc.to_json(), status_code=exc.status, headers=headers)


async def handle_sqlfleet_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SqlfleetError)
    return render(exc)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return render(MethodNotAllowed(f"method {request.method} not allowed on {request.url.path}"))
    if exc.status_code == 404:
        return render(NotFound(f"no route {request.url.path}"))
    error = SqlfleetError(str(exc.detail))
    return JSONResponse({"error": {"code": "http_error", "message": error.message}}, exc.status_code)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"error": {"code": "internal", "message": "internal server error"}}, 500)


EXCEPTION_HANDLERS = {
    SqlfleetError: handle_sqlfleet_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
