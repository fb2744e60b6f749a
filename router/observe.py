"""Request metrics and the access log, as plain ASGI middleware (labels: route template and
status class; one log line per request with its id, never a header value such as a token)."""

from __future__ import annotations

import itertools
import json
import logging
import re
import secrets
import time
from typing import Any

from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from metrics.instruments import REQUEST_SECONDS, REQUESTS
from tenants.rfc3339 import format_time

access_log = logging.getLogger("sqlfleet.access")
_CALLER_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")  # a caller's X-Request-Id is kept only if this dull


_ID_PREFIX = secrets.token_hex(4)  # per process; a counter after it is unique and costs nothing
_ID_COUNTER = itertools.count(1)


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id" and _CALLER_ID.fullmatch(value):
            return bytes(value).decode()
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"


class RequestMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route: BaseRoute | None = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            REQUESTS.labels(name, f"{status // 100}xx").inc()
            REQUEST_SECONDS.labels(name).observe(elapsed)
            tenant = scope.get("path_params", {}).get("tenant")
            access_log.info(
                "%s %s %s %d %.1fms",
                request_id,
                scope["method"],
                name,
                status,
                elapsed * 1000,
                extra={"request_id": request_id, "method": scope["method"], "route": name,
                       "tenant": tenant, "status": status, "duration_ms": round(elapsed * 1000, 3)},
            )  # fmt: skip


_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonLines(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the record's `extra` fields,
    and the traceback (if any) as one string."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": format_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)
