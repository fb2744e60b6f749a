"""Tenant ids: 1-63 chars of [a-z0-9_-], starting with a letter or digit (DNS-label safe)."""

from __future__ import annotations

import re

from tenants.errors import InvalidTenantId

_TENANT_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def validate_tenant_id(value: object) -> str:
    """Return `value` if it is a valid tenant id; raise InvalidTenantId otherwise."""
    if not isinstance(value, str) or not _TENANT_ID.fullmatch(value):
        if isinstance(value, str):
            shown = repr(value) if len(value) <= 80 else f"{value[:40]!r}... ({len(value)} chars)"
        else:
            shown = f"of type {type(value).__name__}"
        raise InvalidTenantId(
            f"invalid tenant id {shown}: 1-63 chars of a-z, 0-9, '_' or '-', starting with a letter or digit"
        )
    return value
