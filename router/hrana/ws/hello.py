"""Who a WebSocket connection is: its `hello` (and any re-sent one), and whether its credential
still holds before each request.

The tenant is the path's (`/v1/tenants/{tenant}`), else the Host's (`{tenant}.BASE_DOMAIN`),
else the token's `sub`; the admin key works at the path form only, as over HTTP. A re-sent hello
may change the access level (an `ro` token downgrades the requests after it) but never the
tenant. Before each request the last hello's token is checked again: once it has expired, or was
revoked, or its tenant was deleted and created again, the connection is closed (1008): the spec
lets the server end a connection whose token expired, and every stream of it is rolled back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from starlette.websockets import WebSocket

from router.auth import Principal, require_tenant
from router.context import Context
from router.hrana.errors import TenantRequired
from router.hrana.routes import HRANA_TENANT, host_tenant
from tenants.errors import Forbidden, TenantNotFound, Unauthorized
from tenants.ids import validate_tenant_id


@dataclass(frozen=True)
class Identity:
    """What a hello established."""

    principal: Principal
    tenant: str
    readonly: bool
    credential: str  # `Bearer <jwt>`, to check again later


def authenticate(c: Context, websocket: WebSocket, jwt: str | None, tenant_before: str | None) -> Identity:
    """The identity a hello with `jwt` gives (`tenant_before`: the connection's, after its first
    hello). Raises Unauthorized, Forbidden, TenantRequired, InvalidTenantId, TenantNotFound."""
    if not jwt:
        raise Unauthorized("the hello message carries no token")
    credential = f"Bearer {jwt}"
    principal = c.auth.authenticate(credential)
    tenant = websocket.path_params.get("tenant") or host_tenant(websocket, c.config.base_domain)
    tenant = tenant or principal.tenant
    if tenant is None:
        raise TenantRequired(
            "the root URL serves the tenant of a tenant token: use a tenant token, or the admin "
            "key with the URL /v1/tenants/{tenant}"
        )
    tenant = validate_tenant_id(tenant)
    readonly = require_tenant(principal, tenant)
    if tenant_before is not None and tenant != tenant_before:
        raise Forbidden(f"this connection is for tenant {tenant_before!r}, not {tenant!r}")
    if c.fleet.catalog.get(tenant) is None:
        raise TenantNotFound(f"tenant {tenant!r} does not exist")
    websocket.scope[HRANA_TENANT] = tenant
    return Identity(principal, tenant, readonly, credential)


def expired(c: Context, identity: Identity) -> str | None:
    """None while the identity's token holds; else why not, as a close reason."""
    if identity.principal.expires <= time.time():
        return "AUTH_JWT_EXPIRED: the token expired: send a hello with a new one"
    try:
        c.auth.authenticate(identity.credential)  # revoked, or the tenant was re-created
    except Unauthorized as exc:
        return f"AUTH_FAILED: {exc.message}"
    return None
