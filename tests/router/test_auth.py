"""The Authenticator's cache of verified tokens: it skips the signature check, never the
incarnation and revocation check, and keeps no token."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from router.auth import Authenticator
from tenants.catalog import TenantRow
from tenants.errors import Unauthorized
from tenants.state import TenantState


def _authenticator(rows: dict[str, TenantRow]) -> Authenticator:
    return Authenticator(Ed25519PrivateKey.generate(), "admin-key", rows.get)


def _row(incarnation: str, generation: int = 0) -> TenantRow:
    return TenantRow("acme", 0.0, TenantState.ACTIVE, None, 0, None, incarnation, generation)


def test_a_cached_token_is_still_checked_against_its_tenant() -> None:
    rows = {"acme": _row("first")}
    auth = _authenticator(rows)
    token, _ = auth.mint("acme", "ro", 3600)
    assert auth.authenticate(f"Bearer {token}").tenant == "acme"
    assert auth.authenticate(f"Bearer {token}").readonly  # from the cache
    rows["acme"] = _row("first", generation=1)  # revoked
    with pytest.raises(Unauthorized, match="revoked"):
        auth.authenticate(f"Bearer {token}")
    rows["acme"] = _row("second")  # deleted, then created again
    with pytest.raises(Unauthorized, match="earlier tenant"):
        auth.authenticate(f"Bearer {token}")


def test_the_cache_keeps_no_token() -> None:
    auth = _authenticator({"acme": _row("first")})
    token, _ = auth.mint("acme", "rw", 3600)
    auth.authenticate(f"Bearer {token}")
    keys = list(auth._cache)
    assert len(keys) == 1 and token.encode() not in keys[0] and len(keys[0]) == 16


def test_a_token_that_differs_from_a_cached_one_is_verified() -> None:
    auth = _authenticator({"acme": _row("first")})
    token, _ = auth.mint("acme", "rw", 3600)
    auth.authenticate(f"Bearer {token}")
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    with pytest.raises(Unauthorized, match=r"signature|well-formed"):
        auth.authenticate(f"Bearer {forged}")
