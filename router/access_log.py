"""The access log, as ASGI middleware: every request gets an id (the caller's X-Request-Id if it
is dull enough, else ours), answered in X-Request-Id and logged on one line with the method,
route template, tenant, status and duration — never a header value such as a token. The line
goes to the `sqlfleet.access` logger, in the process's log format (ops/logs.py)."""

from __future__ import annotations

import itertools
import logging
import re
import secrets

from starlette.types import Message, Scope

from router.middleware import RequestObserver, route_template

access_log = logging.getLogger("sqlfleet.access")
_CALLER_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")  # a caller's X-Request-Id is kept only if this dull

_ID_PREFIX = secrets.token_hex(4)  # per process; a counter after it is unique and costs nothing
_ID_COUNTER = itertools.count(1)


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id" and _CALLER_ID.fullmatch(value):
            return bytes(value).decode()
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"


class AccessLog(RequestObserver):
    def started(self, scope: Scope) -> None:
        scope.setdefault("state", {})["request_id"] = _request_id(scope)

    def responding(self, scope: Scope, message: Message) -> None:
        request_id: str = scope["state"]["request_id"]
        message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]

    def finished(self, scope: Scope, status: int, seconds: float) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return  # the line's fields are not worth building for nobody (cached by logging)
        request_id: str = scope["state"]["request_id"]
        route = route_template(scope)
        method = scope["method"]
        extra = {
            "request_id": request_id,
            "method": method,
            "route": route,
            "tenant": scope.get("path_params", {}).get("tenant"),
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
        }
        access_log.info("%s %s %s %d %.1fms", request_id, method, route, status, seconds * 1000, extra=extra)
