"""Paths of the change feed (router/changes_api.py): one Server-Sent Events stream per tenant."""

from __future__ import annotations

from typing import Any

from router.openapi.builders import TENANT_PARAM, operation

_LAST_EVENT_ID = {
    "name": "Last-Event-ID",
    "in": "header",
    "description": "resume after this position (the `id` of an event received); unknown: a `resync` event",
    "schema": {"type": "string"},
}


def paths() -> dict[str, Any]:
    ok = {
        "description": (
            "Server-Sent Events: `open`, `commit` (one per committed transaction, in commit "
            "order: its position, time and row changes), `resync` (reload from an export), "
            "`heartbeat`, `end`. Each event's `data` is one JSON object; see the README."
        ),
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
    op = operation(
        "Subscribe to the tenant's committed changes",
        ok,
        (400, 401, 403, 404, 429, 503),
        params=[TENANT_PARAM, _LAST_EVENT_ID],
        tag="transfer",
    )
    op["description"] = (
        "A tenant token (ro is enough) or the admin key. 429 past "
        "changes_max_subscribers_per_tenant, 503 past changes_max_subscribers."
    )
    return {"/v1/tenants/{tenant}/changes": {"get": op}}
