"""Building blocks of the OpenAPI document: references, responses, operations."""

from __future__ import annotations

from typing import Any

TENANT_ID = {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"}
TENANT_PARAM = {"name": "tenant", "in": "path", "required": True, "schema": TENANT_ID}
SECURED: list[dict[str, list[str]]] = [{"bearer": []}]
TIME = {"type": "string", "format": "date-time"}
# Any JSON object: for a part of a body whose shape is another document's, never a whole body
# (tests/router/test_openapi.py: no operation has an untyped object body)
ANYTHING = {"type": "object", "additionalProperties": {}}
TEXT = {"description": "text", "content": {"text/plain": {"schema": {"type": "string"}}}}

STATUS_TEXT = {
    400: "Bad input or SQL error",
    401: "Missing, invalid or expired credential",
    403: "Not allowed for this credential",
    404: "No such tenant, group, rollout or route (or no backup of that moment)",
    408: "The request body did not arrive within body_timeout (the connection is closed)",
    409: "Conflict: it already exists, or the server's state does not allow it now (see the code)",
    413: "Too large",
    500: "Backup broken (fails its integrity check), tampered, or sealed with a key not configured",
    502: "Replica (backup storage) error",
    429: "Too many requests or streams",
    503: (
        "Tenant unavailable (see the code; Retry-After): busy, moving, ... ; `replica_behind`: its "
        "oldest unshipped commit is older than max_unshipped_age, the write was rolled back; "
        "`replica_unavailable` (ack=replica): the response's commits did not reach the replica "
        "in time, a write's outcome is unknown (read it back before retrying)"
    ),
    504: "Statement timed out",
    507: "The server's disk is full: nothing was changed, retry once space is freed",
}


def ref(name: str) -> dict[str, str]:
    """A reference to the component schema `name`."""
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def errors(*statuses: int, kind: str = "E") -> dict[str, Any]:
    """References to the shared error responses: E (our shape) or H (Hrana's)."""
    return {str(s): {"$ref": f"#/components/responses/{kind}{s}"} for s in statuses}


def request_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def operation(
    summary: str,
    ok: dict[str, Any],
    error_statuses: tuple[int, ...],
    body: str | None = None,
    params: list[dict[str, Any]] | None = None,
    secured: bool = True,
    ok_status: str = "200",
    tag: str = "system",
    error_kind: str = "E",
) -> dict[str, Any]:
    """One OpenAPI operation; `body` names the request body's component schema."""
    full = (507,) if secured else ()  # any secured route may need the disk: 507 when it is full
    op: dict[str, Any] = {
        "summary": summary,
        "tags": [tag],
        "responses": {ok_status: ok, **errors(*error_statuses, *full, kind=error_kind)},
    }
    if body is not None:
        op["requestBody"] = request_body(ref(body))
    if params:
        op["parameters"] = params
    if secured:
        op["security"] = SECURED
    return op
