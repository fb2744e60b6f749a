"""What the cluster proxy answers when it cannot serve or forward a request."""

from __future__ import annotations

from router.proxy.placement import Located
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
        """`why`: this node's own reason for serving nothing (Placement.unavailable), logged and
        kept for operators (`message`), never sent to clients (`public`)."""
        error = cls(_no_owner(slot, f" ({why})" if why else ""), retry_after=1)
        error.slot = slot
        return error

    slot: int | None = None

    def public(self) -> SqlfleetError:
        return self if self.slot is None else NoOwner(_no_owner(self.slot, ""), **self.detail)


def _no_owner(slot: int, reason: str) -> str:
    return f"slot {slot} has no serving owner right now{reason}: retry shortly"


class OwnerUnreachable(SqlfleetError):
    """The node owning the tenant's slot could not be reached (or kept answering 421): the
    request was not acted on there, so it can be sent again as is."""

    status = 503
    code = "owner_unreachable"

    @classmethod
    def of(cls, tenant: str) -> OwnerUnreachable:
        return cls(
            f"the node serving tenant {tenant!r} could not be reached, so the request was not "
            "applied: retry shortly",
            retry_after=1,
        )

    @classmethod
    def moved(cls, tenant: str) -> OwnerUnreachable:
        return cls(
            f"tenant {tenant!r} moved to another node while the request was on its way, so the "
            "request was not applied: retry shortly",
            retry_after=1,
        )


class OutcomeUnknown(SqlfleetError):
    """The request reached (or may have reached) the owner and no whole answer came back: a
    write may or may not have been applied. Never sent again by the proxy."""

    status = 503
    code = "outcome_unknown"

    @classmethod
    def slot_gone(cls, tenant: str, now: Located) -> OutcomeUnknown:
        """The owner stopped holding the slot while the request waited there; `now`: where the
        routing table has the slot since. What is known is said, never a guessed cause: a new
        owner means the slot moved (a drain, a join); no owner means it is moving, or the
        owner's cluster lease ran out (from the slot alone the two look the same)."""
        if now.token > 0:
            why = "lost its hold on the tenant's slot (the slot moved to another node)"
        else:
            why = (
                "lost its hold on the tenant's slot (the slot is moving to another node, in a drain or "
                "a join, or that node's cluster lease ran out)"
            )
        return cls.of(tenant, why)

    @classmethod
    def of(cls, tenant: str, why: str) -> OutcomeUnknown:
        return cls(
            f"the node serving tenant {tenant!r} {why} after the request was sent to it: a write "
            "may or may not have been applied; read the tenant back before retrying it",
            retry_after=1,
        )


class OpeningSlow(SqlfleetError):
    """Opening a tenant this node lacks needs the replica (router.proxy.arrivals), and it did
    not answer within the request's deadline."""

    status = 503
    code = "replica_unavailable"

    @classmethod
    def of(cls, tenant: str, seconds: float) -> OpeningSlow:
        return cls(
            f"tenant {tenant!r} is not on this node's disk, and finding it in the replica (and "
            f"restoring it if it was handed to this node) did not finish within {seconds:g} s: "
            "the request was not served; retry shortly",
            retry_after=2,
        )


class NodeSilent(SqlfleetError):
    """Another node did not answer what this one asked it for a request (router.backups_api:
    its backups of a tenant) within the request's deadline: the request was not acted on. The
    code is that of a node that did not answer at all (ops.node_guard.PeerUnreachable)."""

    status = 503
    code = "node_unreachable"

    @classmethod
    def of(cls, what: str, seconds: float) -> NodeSilent:
        return cls(
            f"another node did not send {what} within {seconds:g} s, so the request was not "
            "applied: retry shortly",
            retry_after=1,
        )
