"""Names: tenant ids and group names are 1-63 chars of [a-z0-9_-], starting with a letter or
digit (DNS-label safe, and safe as a file name). The one place that says what a name may be."""

from __future__ import annotations

import re
from typing import TypeGuard

from tenants.errors import InvalidTenantId

NAME_RULE = "1-63 chars of a-z, 0-9, '_' or '-', starting with a letter or digit"
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_PREFIX = re.compile(r"[a-z0-9_-]{0,63}")  # what a name may start with ('' included)


def is_name(value: object) -> TypeGuard[str]:
    """Whether `value` is a valid tenant id or group name."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def is_name_prefix(value: str) -> bool:
    """Whether some name could start with `value` (the empty string included)."""
    return _PREFIX.fullmatch(value) is not None


def validate_tenant_id(value: object) -> str:
    """Return `value` if it is a valid tenant id; raise InvalidTenantId otherwise."""
    if not is_name(value):
        raise InvalidTenantId(f"invalid tenant id {_shown(value)}: {NAME_RULE}")
    return value


def _shown(value: object) -> str:
    """`value` for an error message: repr'd, cut if long, or its type if not a string."""
    if not isinstance(value, str):
        return f"of type {type(value).__name__}"
    return repr(value) if len(value) <= 80 else f"{value[:40]!r}... ({len(value)} chars)"
