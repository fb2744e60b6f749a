"""Where a tenant is served in a cluster, as the proxy sees it (issue 16, "one URL").

The cluster (package `cluster`, on etcd) maps tenant -> slot -> owner; this module holds only
the shape the router needs from it, so the router never depends on etcd: `Placement` is a
Protocol that `cluster`'s routing table satisfies, and a single server has no Placement at all.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.types import Scope

# The header a proxying node adds: "<slot>:<fencing token>" of the owner it believes in. The owner
# answers 421 unless it holds that slot with that token and can prove its lease alive.
SLOT_HEADER = "x-sqlfleet-slot"
# The header of a 421 answered because the node cannot prove its lease alive: why (Placement.
# unavailable), so the proxy that forwarded the request says so instead of guessing.
UNPROVEN_HEADER = "x-sqlfleet-lease-unproven"


@dataclass(frozen=True)
class Located:
    """A tenant's slot and who serves it: `url` is the owner's base URL (scheme://host:port),
    None when this node is the owner; `token` is the slot's fencing token (the etcd revision
    that created the owner key), 0 when the slot has no owner right now."""

    slot: int
    token: int
    url: str | None

    @property
    def here(self) -> bool:
        return self.token > 0 and self.url is None


class Placement(Protocol):
    """The cluster's routing table as the router uses it. `locate` and `serves` are called on
    the event loop for every request: they read an in-memory snapshot and never block."""

    def locate(self, tenant: str) -> Located:
        """Where `tenant` is served, from the watched copy of the owner keys."""
        ...

    async def refresh(self, tenant: str) -> Located:
        """Where `tenant` is served, read from etcd itself (after a 421 from a stale owner)."""
        ...

    def serves(self, slot: int, token: int) -> bool:
        """Whether this node owns `slot` under `token` and its lease is provably alive now."""
        ...

    def unavailable(self) -> str | None:
        """Why this node serves no slot right now (for /readyz and 503s), or None."""
        ...

    def describe(self, tenant: str | None) -> dict[str, object]:
        """The cluster as this node sees it, for people (router.cluster_api has the shape)."""
        ...

    async def gather(self, path: str, authorization: str, marker: str) -> list[dict[str, Any]]:
        """GET `path` (with its query) from every other live node with `authorization` and the
        header `marker: 1`; their JSON answers. Raises an error (503, Retry-After) if one does
        not answer, and at once, naming it, when a node holds slots without a lease (before
        asking, or as soon as one asked loses it): its tenants could not be in the answer."""
        ...

    def set_draining(self, node: str, draining: bool) -> None:
        """Mark `node` draining (its slots move to the others) or not. Blocking (etcd). Raises
        a 409 error when `node` is not live (either way), or is the last live node not draining
        (to drain), so its slots would have nowhere to go; nothing is marked then."""
        ...


_TENANT_PATHS = (
    re.compile(r"^/v1/tenants/([^/]+)"),
    re.compile(r"^/v1/admin/tenants/([^/]+)"),
    re.compile(r"^/v1/admin/groups/[^/]+/tenants/([^/]+)"),
)
# Root Hrana endpoints: the tenant is the Host's, or else the token's `sub`.
_ROOT_HRANA = re.compile(r"^/(v1/(execute|batch)|v2(/pipeline)?|v3(-protobuf)?(/pipeline|/cursor)?)?$")


def tenant_of(scope: Scope, base_domain: str | None) -> str | None:
    """The tenant a request is for, as far as routing needs it: a path's `{tenant}`, else the
    Host's `{tenant}.BASE_DOMAIN` on the root Hrana endpoints, else the bearer token's `sub`
    (read without verifying: only the owner authenticates, so a forged `sub` merely picks which
    node says 401). None for requests not bound to one tenant (admin lists, system routes)."""
    path: str = scope["path"]
    for pattern in _TENANT_PATHS:
        match = pattern.match(path)
        if match:
            return match.group(1)
    if not _ROOT_HRANA.match(path):
        return None
    return host_label(header(scope, b"host"), base_domain) or token_subject(header(scope, b"authorization"))


def host_label(host: str | None, base_domain: str | None) -> str | None:
    """The `{tenant}` of a Host `{tenant}.BASE_DOMAIN[:port]`, or None."""
    if not host or not base_domain:
        return None
    host = host.lower()
    if ":" in host and not host.startswith("["):  # drop the port (an IPv6 literal has no tenant)
        host = host.rpartition(":")[0]
    label = host.removesuffix("." + base_domain.lower().strip("."))
    if label == host or not label or "." in label:
        return None
    return label


def token_subject(authorization: str | None) -> str | None:
    """The `sub` claim of a `Bearer <JWT>` header, unverified (see tenant_of), or None."""
    if not authorization or authorization[:7].lower() != "bearer ":
        return None
    return jwt_subject(authorization[7:].strip())


def jwt_subject(token: str) -> str | None:
    """The `sub` claim of a compact JWT, unverified, or None for anything that is not one."""
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > 4096:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    return sub if isinstance(sub, str) else None


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header `name` (lower case) of an ASGI `scope`, or None."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None
