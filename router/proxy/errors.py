"""What the cluster proxy answers when it cannot serve or forward a request."""

from __future__ import annotations

from router.proxy.placement import Located
from tenants.errors import SqlfleetError


class Misdirected(SqlfleetError):
    """A forwarded request reached a node that does not own the slot under the token it names
    (RFC 9110 §15.5.20): the proxy reads the owner again and retries once."""

    status = 421
    code = "misdirected_request"

    @classmethod
    def of(cls, slot: int, token: int, unproven: str | None) -> Misdirected:
        """`unproven`: why this node serves no slot (Placement.unavailable: its lease is not
        provably alive), also sent in UNPROVEN_HEADER for the proxy that forwarded the request;
        None: its lease is fine and the slot is not its under `token`."""
        if unproven is not None:
            return cls(
                f"this node cannot prove its cluster lease alive ({unproven}), so it serves no slot now"
            )
        return cls(f"this node does not hold slot {slot} under token {token}")


class NoOwner(SqlfleetError):
    """No node serves the tenant's slot right now, as far as this node knows."""

    status = 503
    code = "slot_unowned"

    @classmethod
    def of(cls, slot: int, unproven: str | None) -> NoOwner:
        """The routing table shows no owner of `slot`; `unproven`: why this node cannot prove
        its own lease (Placement.unavailable; its table may then be out of date), or None."""
        stale = (
            ""
            if unproven is None
            else f"; this node cannot prove its cluster lease alive ({unproven}), so what it "
            "knows of the slot's owner may be out of date"
        )
        return cls(f"slot {slot} has no owner right now{stale}: retry shortly", retry_after=1)

    @classmethod
    def here(cls, slot: int, unproven: str | None) -> NoOwner:
        """The routing table names this node as the owner of `slot`, and it does not serve it:
        its lease is unproven (`unproven`, Placement.unavailable), or (None) its claim or its
        release of the slot is under way."""
        if unproven is not None:
            why = f"cannot prove its cluster lease alive ({unproven}), so it serves nothing now"
        else:
            why = "does not serve it now (a claim or a release of it is under way)"
        return cls(f"this node holds slot {slot} but {why}: retry shortly", retry_after=1)


class OwnerUnreachable(SqlfleetError):
    """The node owning the tenant's slot could not be reached (or kept answering 421): the
    request was not acted on there, so it can be sent again as is."""

    status = 503
    code = "owner_unreachable"

    @classmethod
    def of(cls, tenant: str, unproven: str | None = None) -> OwnerUnreachable:
        """No connection to the node the routing table names opened; `unproven`: why this node
        cannot prove its own lease (its routing table may be out of date then), or None."""
        said = f"the node serving tenant {tenant!r} could not be reached, so the request was not applied"
        return cls._said(tenant, said, unproven)

    @classmethod
    def lost(cls, tenant: str, failure: str, unproven: str | None = None) -> OwnerUnreachable:
        """A request without effects (GET, HEAD) got no whole answer (`failure`), twice."""
        return cls._said(
            tenant, f"the node serving tenant {tenant!r} {failure} (the request changes nothing)", unproven
        )

    @classmethod
    def refused(cls, tenant: str, there: str | None, unproven: str | None = None) -> OwnerUnreachable:
        """The node the routing table names answered 421: it cannot prove its lease (`there`:
        its reason, UNPROVEN_HEADER), or (None) it does not hold the slot under the token this
        node knows (the slot's ownership changed since). `unproven`: this node's own reason."""
        if there is not None:
            said = (
                f"the node holding the slot of tenant {tenant!r} cannot prove its cluster lease alive "
                f"({there}), so the request was not applied"
            )
        else:
            said = (
                f"the node this node's routing table names for tenant {tenant!r} does not hold its slot "
                "under the token this node knows (the slot's ownership changed since), so the request was "
                "not applied"
            )
        return cls._said(tenant, said, unproven)

    @classmethod
    def _said(cls, tenant: str, said: str, unproven: str | None) -> OwnerUnreachable:
        if unproven is not None:
            said += (
                f"; this node cannot prove its own cluster lease either ({unproven}), so it cannot tell "
                "whether the slot has another owner"
            )
        return cls(f"{said}: retry shortly", retry_after=1)


class OutcomeUnknown(SqlfleetError):
    """The request reached (or may have reached) the owner and no whole answer came back: a
    write may or may not have been applied. Never sent again by the proxy."""

    status = 503
    code = "outcome_unknown"

    @classmethod
    def slot_gone(cls, tenant: str, before: Located, now: Located) -> OutcomeUnknown:
        """The owner `before` names stopped holding the slot while the request waited there;
        `now`: where the routing table has the slot since. What is known is said, never a
        guessed cause: another owner means the slot moved there (a drain, a join; or the same
        node claimed it again); no owner means it is moving, or the owner's cluster lease ran
        out (from the slot alone the two look the same)."""
        if now.token > 0 and now.url != before.url:
            where = "this one" if now.url is None else "another node"
            why = f"lost its hold on the tenant's slot (the slot moved to {where})"
        elif now.token > 0:
            why = "lost its hold on the tenant's slot (it holds it again since, under a new token)"
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
