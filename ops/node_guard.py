"""What a cluster node (ops.node) answers when it cannot serve: its errors, and the gate that
answers every request of a fenced node."""

from __future__ import annotations

from typing import Protocol

from starlette.types import ASGIApp, Receive, Scope, Send

from router.errors import render
from router.proxy.websocket import deny
from tenants.errors import SqlfleetError


class Fenced(Protocol):
    """A node that may be fenced: `fenced` is why (None: it is not)."""

    @property
    def fenced(self) -> str | None: ...


class PeerUnreachable(SqlfleetError):
    """A cluster-wide answer (a tenant list) lacks a node's part: it did not answer."""

    status = 503
    code = "node_unreachable"


class NodeNotLive(SqlfleetError):
    """A drain of a node that is not running: its tenants can only move while it does."""

    status = 409
    code = "node_not_live"


class NoOtherNode(SqlfleetError):
    """A drain of the last node that is not draining: its slots would have nowhere to go."""

    status = 409
    code = "no_other_node"


class ForeignReplica(SqlfleetError):
    """The replica prefix holds another cluster's, or a single server's, backups: a node that
    used them would serve tenants someone else serves (the server does not start; exit 2)."""

    status = 409
    code = "foreign_replica"


class NodeFenced(SqlfleetError):
    """This node was taken over (its incarnation fenced): it serves nothing until restarted."""

    status = 503
    code = "node_fenced"


# What a fenced node answers to everything, and what its /readyz and status say.
FENCED = (
    "this node was fenced (another node took it over): it serves nothing until it is restarted; "
    "restart it, and meanwhile use any other node of the cluster"
)
# Paths a fenced node still answers as usual: they say it is fenced (/readyz 503 with the reason,
# the cluster status with state "fenced") or are the operator's (metrics).
FENCED_OPEN = frozenset({"/readyz", "/metrics", "/v1/admin/cluster"})


class FencedGate:
    """ASGI middleware, outside the cluster proxy: once the node is fenced, every request
    (proxied or not, HTTP or WebSocket) but `FENCED_OPEN` gets 503 `node_fenced` (a WebSocket
    handshake too, in Hrana's error shape: router.proxy.websocket.deny), instead of answers from
    a view of the cluster that stopped changing."""

    def __init__(self, app: ASGIApp, node: Fenced) -> None:
        self.app, self.node = app, node

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.node.fenced is None
            or scope["type"] not in ("http", "websocket")
            or scope["path"] in FENCED_OPEN
        ):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await deny(scope, receive, send, NodeFenced(FENCED))
        else:
            await render(NodeFenced(FENCED))(scope, receive, send)


class NotOwner(SqlfleetError):
    """This node does not serve the tenant's slot (any more): retry through any node."""

    status = 503
    code = "slot_unowned"
