"""A Hrana WebSocket whose tenant moves away from this node (a cluster: the tenant's slot went
to another node in a drain or a join, or this node lost its lease or was fenced): when to see it,
and how the connection then closes (router.hrana.ws.session does the closing)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio

from router.hrana.ws.close import close_reason
from tenants.errors import SqlfleetError

log = logging.getLogger(__name__)

# How often a session asks whether its tenant is still served here (the fleet's `admit`: in
# memory, no etcd round trip); the cluster proxy gives an owner longer than that to close a moved
# tenant's relayed socket itself (router.proxy.websocket.MOVE_GRACE).
ADMIT_SECONDS = 0.5
MOVED_CODE = 1012  # service restart: the client may reconnect at once (RFC 6455 registry)


def moved_reason(tenant: str) -> str:
    """Why a session of `tenant` was closed as moved (any node routes a new one to its owner)."""
    return close_reason("tenant_moved", f"tenant {tenant!r} is served by another node now: reconnect")


async def moved(admit: Callable[[str], None], tenant: Callable[[], str | None]) -> tuple[int, str]:
    """Returns, with the close to send, once `admit` refuses `tenant()` (None: not known yet,
    before the hello); checked every ADMIT_SECONDS."""
    while True:
        await anyio.sleep(ADMIT_SECONDS)
        known = tenant()
        if known is None:
            continue
        try:
            admit(known)
        except SqlfleetError as exc:
            log.info("hrana websocket of tenant %s closed: %s", known, exc)
            return MOVED_CODE, moved_reason(known)
