"""Who is calling: the admin key, or an Ed25519-signed JWT tenant token.

A tenant token's claims: `sub` (tenant id), `a` (`ro`|`rw`), `exp`, `iat`, and `inc`/`gen`, the
tenant's incarnation and token generation when it was minted (tenants.catalog). Every request
compares those two with the tenant's catalog row (in memory), so a token never works for a
tenant deleted and created again under the same id, nor after `revoke` (which bumps the
generation); the signing key never has to change for either. A token without `inc` was minted
before tokens were bound to incarnations and is refused: nothing in it tells which tenant of
that id it was meant for.
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tenants.catalog import TenantRow
from tenants.errors import BadRequest, Forbidden, TenantNotFound, Unauthorized
from tenants.ids import validate_tenant_id

ACCESS_LEVELS = ("ro", "rw")
_CACHE_SIZE = 131_072  # verified tokens kept (~0.4 KiB each): covers a 100k-tenant fleet


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the admin (tenant None) or one tenant with ro/rw access."""

    tenant: str | None
    readonly: bool
    expires: float = float("inf")
    incarnation: str = ""  # of the tenant the token was minted for
    generation: int = 0  # that tenant's token generation then

    @property
    def is_admin(self) -> bool:
        return self.tenant is None


ADMIN = Principal(tenant=None, readonly=False)

# The tenant's catalog row (None: no such tenant): cheap, called on every request.
TenantLookup = Callable[[str], TenantRow | None]


class Authenticator:
    """Mints and checks tokens. Thread-safe for `authenticate`; verified tokens are cached
    (bounded) until they expire, so the hot path skips the signature check (the incarnation
    and revocation check, a dict lookup, runs every time)."""

    def __init__(self, signing_key: Ed25519PrivateKey, admin_key: str, tenants: TenantLookup) -> None:
        self._private = signing_key
        self._public = signing_key.public_key()
        self._admin_key = admin_key.encode()
        self._tenants = tenants
        self._cache: OrderedDict[str, Principal] = OrderedDict()

    def mint(self, tenant: str, access: str, expires_in: int) -> tuple[str, int]:
        """A token for the tenant as it is now, and its expiry (unix seconds). Raises
        BadRequest for a bad access level, TenantNotFound."""
        validate_tenant_id(tenant)
        if access not in ACCESS_LEVELS:
            raise BadRequest(f"access must be 'ro' or 'rw', not {access!r}")
        row = self._tenants(tenant)
        if row is None:
            raise TenantNotFound(f"tenant {tenant!r} does not exist")
        now = int(time.time())
        claims = {
            "sub": tenant,
            "a": access,
            "exp": now + expires_in,
            "iat": now,
            "inc": row.incarnation,
            "gen": row.token_generation,
        }
        return jwt.encode(claims, self._private, algorithm="EdDSA"), now + expires_in

    def authenticate(self, authorization: str | None) -> Principal:
        """Raises Unauthorized for a missing, malformed, forged or expired credential."""
        if not authorization:
            raise Unauthorized("missing Authorization: Bearer <token>")
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise Unauthorized("Authorization must be 'Bearer <token>'")
        if hmac.compare_digest(credential.encode(), self._admin_key):
            return ADMIN
        principal = self._cache.get(credential)
        if principal is None or principal.expires <= time.time():
            principal = self._verify(credential)
            self._cache[credential] = principal
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        self._check_current(principal)
        return principal

    def _check_current(self, principal: Principal) -> None:
        """Raise Unauthorized unless the token is for the tenant of its id as it is now. No
        row: let it through, so that the route answers 404 for the tenant it names."""
        assert principal.tenant is not None
        row = self._tenants(principal.tenant)
        if row is None:
            return
        if row.incarnation != principal.incarnation:
            raise Unauthorized(
                f"token is for an earlier tenant {principal.tenant!r} (deleted, then created "
                "again): mint a new one"
            )
        if row.token_generation != principal.generation:
            raise Unauthorized(f"token was revoked for tenant {principal.tenant!r}: mint a new one")

    def _verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token, self._public, algorithms=["EdDSA"], options={"require": ["exp", "sub"]}
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        access, sub = claims.get("a", "rw"), claims["sub"]
        if access not in ACCESS_LEVELS or not isinstance(sub, str):
            raise Unauthorized("invalid token claims")
        incarnation, generation = claims.get("inc"), claims.get("gen", 0)
        if incarnation is None:
            raise Unauthorized(
                "token predates tokens bound to a tenant's incarnation (sqlfleet upgrade): mint a new one"
            )
        if (
            not isinstance(incarnation, str)
            or isinstance(generation, bool)
            or not isinstance(generation, int)
        ):
            raise Unauthorized("invalid token claims")
        return Principal(sub, access == "ro", float(claims["exp"]), incarnation, generation)


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise Forbidden("this route needs the admin key")


def require_tenant(principal: Principal, tenant: str) -> bool:
    """Whether access to `tenant` is read-only. Raises Forbidden for another tenant's token."""
    if principal.tenant is not None and principal.tenant != tenant:
        raise Forbidden(f"token is for tenant {principal.tenant!r}, not {tenant!r}")
    return principal.readonly
