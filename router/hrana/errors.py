"""Hrana's errors: the conditions only this protocol has, and every error as a Hrana `Error`.

Hrana clients read an error as `{"message": ..., "code": ...}` (the spec's `Error`, also the
body of a failed HTTP request), so that is the shape here instead of the REST API's
`{"error": {...}}`. Codes follow libsql-server: `SQLITE_*` names for SQLite's own errors
(`SQLITE_CONSTRAINT`, `SQLITE_READONLY`, ...), upper-case names for the protocol's.
"""

from __future__ import annotations

from typing import Any

import apsw

from tenants.budget import RequestTimeLimit, ServerBusy
from tenants.errors import BadRequest, SqlfleetError, SqlTooLong, TooLarge


class ProtocolError(BadRequest):
    """A request that does not follow the protocol: malformed, missing or unknown fields."""

    code = "PROTOCOL_ERROR"


class BatonInvalid(ProtocolError):
    """Not a baton this server issued for this tenant, or its stream is gone."""

    code = "BATON_INVALID"


class BatonReused(ProtocolError):
    """A baton already used, or a stream used by two requests at once."""

    code = "BATON_REUSED"


class StreamExpired(ProtocolError):
    """The stream idled past `stream_idle_timeout`; its transaction was rolled back."""

    code = "STREAM_EXPIRED"


class StreamClosed(ProtocolError):
    """A request after `close` in the same pipeline."""

    code = "STREAM_CLOSED"


class SqlNotFound(ProtocolError):
    code = "SQL_NOT_FOUND"


class SqlExists(ProtocolError):
    code = "SQL_EXISTS"


class SqlStoreTooMany(BadRequest):
    code = "SQL_STORE_TOO_MANY"


class SqlStoreTooLarge(BadRequest):
    code = "SQL_STORE_TOO_LARGE"


class SqlNoStatement(BadRequest):
    code = "SQL_NO_STATEMENT"


class SqlManyStatements(BadRequest):
    code = "SQL_MANY_STATEMENTS"


class ArgsInvalid(BadRequest):
    code = "ARGS_INVALID"


class ArgsBothPositionalAndNamed(BadRequest):
    code = "ARGS_BOTH_POSITIONAL_AND_NAMED"


class TenantRequired(BadRequest):
    """The root endpoints take the tenant from a tenant token (or the Host), not the admin key."""

    code = "TENANT_REQUIRED"


class RequestTooLarge(TooLarge):
    """The HTTP body is over `max_body_bytes` (a result over its limits is RESPONSE_TOO_LARGE)."""

    code = "REQUEST_TOO_LARGE"


class TooManyStreams(SqlfleetError):
    """The tenant has `max_streams_per_tenant` streams open."""

    status = 429
    code = "TOO_MANY_STREAMS"


class StreamsExhausted(SqlfleetError):
    """The server has `max_streams` streams open."""

    status = 503
    code = "STREAMS_EXHAUSTED"


_OWN = (
    ProtocolError,
    SqlStoreTooMany,
    SqlStoreTooLarge,
    SqlNoStatement,
    SqlManyStatements,
    ArgsInvalid,
    ArgsBothPositionalAndNamed,
    TenantRequired,
    RequestTooLarge,
    TooManyStreams,
    StreamsExhausted,
)  # errors whose code is already the protocol's


def hrana_code(exc: SqlfleetError) -> str:
    """The Hrana error code for `exc`. tenants.execute raises its errors while handling the
    APSW exception, which stays reachable as `__context__`: SQLite's result code comes from it."""
    if isinstance(exc, _OWN):
        return exc.code
    if isinstance(exc, RequestTimeLimit | ServerBusy):  # a request's limits, not SQLite's
        return exc.code.upper()
    cause = exc.__context__
    if isinstance(cause, apsw.BindingsError | KeyError):
        return ArgsInvalid.code
    if isinstance(cause, apsw.Error) and not isinstance(cause, apsw.ExecTraceAbort):
        name = apsw.mapping_result_codes.get(getattr(cause, "result", -1) & 0xFF)
        if isinstance(name, str):
            return name
    if isinstance(exc, SqlTooLong):
        return "SQLITE_TOOBIG"  # as SQLite itself says when it sees such SQL
    if isinstance(exc, TooLarge):
        return "RESPONSE_TOO_LARGE"
    return exc.code.upper()


def hrana_error(exc: SqlfleetError) -> dict[str, Any]:
    """`exc` as the protocol's `Error` structure."""
    return {"message": exc.public().message, "code": hrana_code(exc)}
