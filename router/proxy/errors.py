"""What the cluster proxy answers when it cannot serve or forward a request."""

from __future__ import annotations

from tenants.errors import SqlfleetError


class Misdirected(SqlfleetError):
    """A forwarded request reached a node that does not own the slot under the token it names
    (RFC 9110 §15.5.20): the proxy reads the owner again and retries once."""

    status = 421
    code = "misdirected_request"


class NoOwner(SqlfleetError):
    """The tenant's slot has no owner right now (a move or a takeover is under way)."""

    status = 503
    code = "slot_unowned"

    @classmethod
    def of(cls, slot: int, why: str | None) -> NoOwner:
        reason = f" ({why})" if why else ""
        return cls(f"slot {slot} has no serving owner right now{reason}: retry shortly", retry_after=1)


class OwnerUnreachable(SqlfleetError):
    """The node owning the tenant's slot did not answer (or kept answering 421)."""

    status = 503
    code = "owner_unreachable"
