"""Who is calling: the admin key, or an Ed25519-signed JWT tenant token (`sub`, `a`, `exp`)."""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tenants.errors import BadRequest, Forbidden, Unauthorized
from tenants.ids import validate_tenant_id

ACCESS_LEVELS = ("ro", "rw")
_CACHE_SIZE = 131_072  # verified tokens kept (~0.4 KiB each): covers a 100k-tenant fleet


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the admin (tenant None) or one tenant with ro/rw access."""

    tenant: str | None
    readonly: bool
    expires: float = float("inf")

    @property
    def is_admin(self) -> bool:
        return self.tenant is None


ADMIN = Principal(tenant=None, readonly=False)


class Authenticator:
    """Mints and checks tokens. Thread-safe for `authenticate`; verified tokens are cached
    (bounded) until they expire, so the hot path skips the signature check."""

    def __init__(self, signing_key: Ed25519PrivateKey, admin_key: str) -> None:
        self._private = signing_key
        self._public = signing_key.public_key()
        self._admin_key = admin_key.encode()
        self._cache: OrderedDict[str, Principal] = OrderedDict()

    def mint(self, tenant: str, access: str, expires_in: int) -> tuple[str, int]:
        """A token and its expiry (unix seconds). Raises BadRequest for a bad access level."""
        validate_tenant_id(tenant)
        if access not in ACCESS_LEVELS:
            raise BadRequest(f"access must be 'ro' or 'rw', not {access!r}")
        exp = int(time.time()) + expires_in
        token = jwt.encode({"sub": tenant, "a": access, "exp": exp}, self._private, algorithm="EdDSA")
        return token, exp

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
        cached = self._cache.get(credential)
        if cached is not None and cached.expires > time.time():
            return cached
        principal = self._verify(credential)
        self._cache[credential] = principal
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return principal

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
        return Principal(tenant=sub, readonly=access == "ro", expires=float(claims["exp"]))


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise Forbidden("this route needs the admin key")


def require_tenant(principal: Principal, tenant: str) -> bool:
    """Whether access to `tenant` is read-only. Raises Forbidden for another tenant's token."""
    if principal.tenant is not None and principal.tenant != tenant:
        raise Forbidden(f"token is for tenant {principal.tenant!r}, not {tenant!r}")
    return principal.readonly
