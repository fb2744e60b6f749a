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

import hashlib
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
_CACHE_SIZE = 131_072  # verified tokens kept (a few hundred bytes each): covers a 100k-tenant fleet


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
        self._cache: OrderedDict[bytes, Principal] = OrderedDict()  # by token digest

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
        raw = credential.encode()
        if hmac.compare_digest(raw, self._admin_key):
            return ADMIN
        # Kept by a digest of the token, not the token: ~50 bytes a key instead of ~270, which is
        # ~30 MiB over a full cache; a 128-bit BLAKE2 digest cannot be matched by another token.
        key = hashlib.blake2b(raw, digest_size=16).digest()
        principal = self._cache.get(key)
        if principal is None or principal.expires <= time.time():
            principal = self._verify(credential)
            self._cache[key] = principal
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
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(_refusal(exc)) from None
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


def _refusal(exc: jwt.InvalidTokenError) -> str:
    """Why a credential that is not the admin key was refused, in words for whoever sent it.
    PyJWT's own messages describe its parsing (`Not enough segments`), which tells an operator
    who typed a wrong admin key nothing; nor should a caller learn more than what is wrong."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "invalid token: its signature does not verify (not minted by this server's signing key)"
    if isinstance(exc, jwt.DecodeError):
        return "invalid credential: not the admin key, nor a well-formed token (a wrong key, or a cut token)"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "invalid token: not signed with EdDSA, as this server's tokens are"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"invalid token: it lacks the {exc.claim!r} claim"
    if isinstance(exc, jwt.ImmatureSignatureError | jwt.InvalidIssuedAtError):
        return "invalid token: issued in the future (is a clock wrong?)"
    return "invalid token claims"


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise Forbidden("this route needs the admin key")


def require_tenant(principal: Principal, tenant: str) -> bool:
    """Whether access to `tenant` is read-only. Raises Forbidden for another tenant's token."""
    if principal.tenant is not None and principal.tenant != tenant:
        raise Forbidden(f"token is for tenant {principal.tenant!r}, not {tenant!r}")
    return principal.readonly
