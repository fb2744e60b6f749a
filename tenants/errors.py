"""The one error hierarchy: every condition a client can see, with its HTTP status and code."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, ClassVar

import apsw


class SqlfleetError(Exception):
    """Base of every error rendered to clients; `status` and `code` are fixed per class."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def public(self) -> SqlfleetError:
        """What a client may read of this error (`to_json`, Hrana's Error): itself, unless its
        text names server internals (an endpoint URL, a bucket, an object key, a path): then an
        error of the same class in user terms (`message` and `str()` keep the full text for
        logs and operators' tools)."""
        return self

    def to_json(self) -> dict[str, Any]:
        shown = self.public()
        body: dict[str, Any] = {"code": shown.code, "message": shown.message}
        body.update(shown.detail)
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


class QuotaExceeded(SqlfleetError):
    """A per-tenant bound on disk was reached; the write was rolled back. Retry once there is
    room again (Retry-After)."""

    status = 429
    code = "quota_exceeded"


class WalFull(QuotaExceeded):
    """The tenant's WAL is over `max_wal_bytes` until it is checkpointed (with backups: shipped
    first); its writes are refused meanwhile, its reads are served."""

    code = "wal_full"


class InsufficientStorage(SqlfleetError):
    """The server's disk is full (or its quota used up): the operation changed nothing. Not the
    client's fault, unlike a tenant at its own size limit (TooLarge); retry once space is freed."""

    status = 507
    code = "insufficient_storage"


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


class ReplicaUnavailable(TenantUnavailable):
    """ack=replica: the response waited for its commits (or the data it read) to be in a
    segment durably in the replica, and the replica did not take them before the request's
    deadline, or the shipper failed or was fenced. A write's outcome is unknown: it may be
    committed on this node (and ship later), or lost with it; read it back before retrying."""

    code = "replica_unavailable"


class ReplicaBehind(TenantUnavailable):
    """The tenant's oldest commit not in the replica is older than `max_unshipped_age`: its
    writes are refused (rolled back) until shipping catches up; its reads are served."""

    code = "replica_behind"


class StatementTimeout(SqlfleetError):
    status = 504
    code = "statement_timeout"


class DataDirLocked(SqlfleetError):
    """Another process owns the data directory."""

    code = "data_dir_locked"


class NotInline(Exception):
    """Not an error a client sees: the statement cannot run inline (it writes, or outran the
    inline budget); it had no effect, so it can run again in a worker thread."""


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
FULL_MARGIN = 1 << 20  # a file system with less free than this is full (a failed write leaves ~0)


def disk_full(exc: BaseException | None) -> bool:
    """Whether `exc`, or an error it was raised from or while handling, is a full disk: an
    OSError with ENOSPC or EDQUOT, SQLite's SQLITE_FULL from one of the server's own databases
    (they have no size limit), or InsufficientStorage."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, InsufficientStorage | apsw.FullError):
            return True
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def storage_full(*paths: Path) -> bool:
    """Whether the file system of any of `paths` has (next to) no room left for this process.
    SQLite reports a full disk and a database at its max_page_count alike (SQLITE_FULL, no
    errno): this tells them apart."""
    for path in paths:
        try:
            stat = os.statvfs(path)
        except OSError:
            continue
        blocks = stat.f_bfree if os.geteuid() == 0 else stat.f_bavail  # root may use the reserve
        if blocks * stat.f_frsize < FULL_MARGIN:
            return True
    return False
