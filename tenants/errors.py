"""The one error hierarchy: every condition a client can see, with its HTTP status and code."""

from __future__ import annotations

from typing import Any, ClassVar


class SqlfleetError(Exception):
    """Base of every error rendered to clients; `status` and `code` are fixed per class."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        body.update(self.detail)
        return {"error": body}


class BadRequest(SqlfleetError):
    status = 400
    code = "bad_request"


class InvalidTenantId(BadRequest):
    code = "invalid_tenant_id"


class SqlError(BadRequest):
    code = "sql_error"


class Unauthorized(SqlfleetError):
    status = 401
    code = "unauthorized"


class Forbidden(SqlfleetError):
    status = 403
    code = "forbidden"


class NotAuthorizedSql(Forbidden):
    """SQL refused by the sandbox or by a read-only token."""

    code = "sql_not_allowed"
    read_only = False  # True when refused because the lease was read-only


class TenantNotFound(SqlfleetError):
    status = 404
    code = "tenant_not_found"


class NotFound(SqlfleetError):
    status = 404
    code = "not_found"


class MethodNotAllowed(SqlfleetError):
    status = 405
    code = "method_not_allowed"


class TenantExists(SqlfleetError):
    status = 409
    code = "tenant_exists"


class TooLarge(SqlfleetError):
    status = 413
    code = "too_large"


class SqlTooLong(TooLarge):
    """SQL text longer than `max_sql_length`, refused before it is parsed."""


class TenantUnavailable(SqlfleetError):
    """The tenant cannot be served now (corrupt file, being deleted, busy)."""

    status = 503
    code = "tenant_unavailable"


class TenantCorrupt(TenantUnavailable):
    """The tenant's file failed to open or read (it is marked corrupt in the catalog)."""

    code = "tenant_corrupt"


class TenantBusy(TenantUnavailable):
    """The tenant's handle stayed locked (an open transaction) past the busy timeout."""

    code = "tenant_busy"


class StatementTimeout(SqlfleetError):
    status = 504
    code = "statement_timeout"


class DataDirLocked(SqlfleetError):
    """Another process owns the data directory."""

    code = "data_dir_locked"


class NotInline(Exception):
    """Not an error a client sees: the statement cannot run inline (it writes, or outran the
    inline budget); it had no effect, so it can run again in a worker thread."""
