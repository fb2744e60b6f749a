"""Cluster routing as ASGI middleware: any node answers for any tenant (issue 16, "one URL").

For a request bound to one tenant (see placement.tenant_of):
- this node owns the tenant's slot and can prove its lease alive: served here;
- another node owns it: forwarded there with `x-sqlfleet-slot: <slot>:<token>`; a 421 (that node
  is not the owner any more) or a failed connection makes the proxy read the owner from etcd
  and try once more, here or there;
- nobody owns it right now (a move or a takeover under way): 503 with Retry-After.
A request carrying `x-sqlfleet-slot` was forwarded to us: it is served only if this node owns
that slot under that token right now, else 421; it is never forwarded again (no loops).
Requests bound to no tenant (system routes, admin lists) are served here; a tenant create goes to
the node owning the new tenant's slot (the id is read from the body).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.errors import render
from router.proxy.errors import Misdirected, NoOwner, OwnerUnreachable
from router.proxy.forward import Body, ClientGone, Forwarder, Unreachable
from router.proxy.placement import SLOT_HEADER, Located, Placement, header, tenant_of
from router.proxy.websocket import Rejected, WebSocketRelay, accept_and_read_hello, hello_subject, replayed
from tenants.errors import SqlfleetError
from tenants.ids import is_name

CREATE_PATH = "/v1/admin/tenants"


@dataclass(frozen=True)
class ProxyParts:
    """What the proxy of one node needs: the cluster's routing table, and its keep-alive pool
    and WebSocket relay to the other nodes (built by ops.node)."""

    placement: Placement
    forwarder: Forwarder
    websockets: WebSocketRelay


class ClusterProxy:
    """ASGI middleware (innermost: the body deadline, metrics and access log apply to what it
    forwards too)."""

    def __init__(self, app: ASGIApp, parts: ProxyParts, base_domain: str | None) -> None:
        self.app = app
        self.placement = parts.placement
        self.forwarder = parts.forwarder
        self.websockets = parts.websockets
        self.base_domain = base_domain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        claimed = _slot_header(scope)
        if claimed is not None:
            await self._forwarded_to_us(claimed, scope, receive, send)
            return
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == CREATE_PATH:
            await self._create(scope, receive, send)
            return
        tenant = tenant_of(scope, self.base_domain)
        if scope["type"] == "websocket" and tenant is None and scope["path"] == "/":
            await self._root_websocket(scope, receive, send)
        elif tenant is None or not is_name(tenant):
            await self.app(scope, receive, send)  # not one tenant's, or the route's own 400
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send, tenant, None)
        else:
            await self._http(scope, receive, send, tenant, None)

    def _here(self, where: Located) -> bool:
        return where.here and self.placement.serves(where.slot, where.token)

    async def _forwarded_to_us(
        self, claimed: tuple[int, int], scope: Scope, receive: Receive, send: Send
    ) -> None:
        if self.placement.serves(*claimed):
            await self.app(scope, receive, send)
            return
        error = Misdirected(f"this node does not own slot {claimed[0]} under token {claimed[1]}")
        if scope["type"] == "websocket":
            await self.websockets.deny(scope, receive, send, error)
        else:
            await render(error)(scope, receive, send)

    async def _create(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A tenant is created on the node owning its slot: the id is in the JSON body."""
        try:
            body = await Body.read(receive, self.forwarder.config.replay_bytes)
        except ClientGone:
            return
        tenant = _created_id(body.held)
        if tenant is None:
            await self.app(scope, body.replay(), send)  # the route's own 400
        else:
            await self._http(scope, receive, send, tenant, body)

    async def _http(self, scope: Scope, receive: Receive, send: Send, tenant: str, body: Body | None) -> None:
        """Serve here or forward; `body`: the request's body if already read (else read here)."""
        where = self.placement.locate(tenant)
        if self._here(where):
            await self.app(scope, receive if body is None else body.replay(), send)
            return
        if body is None:
            try:
                body = await Body.read(receive, self.forwarder.config.replay_bytes)
            except ClientGone:
                return
        error: SqlfleetError = OwnerUnreachable(
            f"the node serving tenant {tenant!r} did not answer: retry shortly"
        )
        for attempt in range(2):
            if attempt:
                if body.held is None:  # a streamed body was spent on the first try
                    break
                where = await self.placement.refresh(tenant)
                if self._here(where):
                    await self.app(scope, body.replay(), send)
                    return
            if where.token == 0 or where.url is None:
                error = NoOwner.of(where.slot, self.placement.unavailable())
                break
            try:
                response = await self.forwarder.open(scope, body, where)
            except (Unreachable, ClientGone):
                continue
            if response.status != Misdirected.status:
                with contextlib.suppress(Unreachable):  # cut short: nothing more to send
                    await self.forwarder.relay(response, receive, send)
                return
            response.release()
        await render(error)(scope, receive, send)

    async def _root_websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The root URL: accept, and route by the hello's token."""
        got = await accept_and_read_hello(scope, receive, send)
        if got is None:
            return
        subprotocol, hello = got
        tenant = hello_subject(subprotocol, hello)
        if tenant is None or not is_name(tenant):
            await self.app(scope, *replayed(hello, receive, send))  # the session answers a bad hello
            return
        await self._websocket({**scope, "subprotocols": [subprotocol]}, receive, send, tenant, hello)

    async def _websocket(
        self, scope: Scope, receive: Receive, send: Send, tenant: str, hello: Message | None
    ) -> None:
        """Serve here, or relay to the owner. `hello`: the client's first message when the socket
        was already accepted (root URL), else None (the owner's handshake answer is passed on)."""
        here_receive, here_send = (receive, send) if hello is None else replayed(hello, receive, send)
        where = self.placement.locate(tenant)
        error: SqlfleetError = OwnerUnreachable(
            f"the node serving tenant {tenant!r} did not answer: retry shortly"
        )
        for attempt in range(2):
            if attempt:
                where = await self.placement.refresh(tenant)
            if self._here(where):
                await self.app(scope, here_receive, here_send)
                return
            if where.token == 0 or where.url is None:
                error = NoOwner.of(where.slot, self.placement.unavailable())
                break
            try:
                upstream = await self.websockets.open(scope, where, scope.get("subprotocols") or [])
            except Rejected as answer:
                if hello is None:
                    await self.websockets.deny_raw(scope, receive, send, answer)
                else:
                    await send(
                        {"type": "websocket.close", "code": 1011, "reason": f"owner refused: {answer.status}"}
                    )
                return
            if upstream is not None:
                if hello is None:
                    await receive()  # websocket.connect
                    await send(
                        {"type": "websocket.accept", "subprotocol": upstream.subprotocol, "headers": []}
                    )
                await self.websockets.pump(receive, send, upstream, hello)
                return
        if hello is None:
            await self.websockets.deny(scope, receive, send, error)
        else:
            await send({"type": "websocket.close", "code": 1013, "reason": error.message[:120]})


def _created_id(body: bytes | None) -> str | None:
    """The `id` of a tenant-create body, when it is one valid id."""
    try:
        tenant = json.loads(body) if body is not None else None
    except ValueError:
        return None
    tenant = tenant.get("id") if isinstance(tenant, dict) else None
    return tenant if is_name(tenant) else None


def _slot_header(scope: Scope) -> tuple[int, int] | None:
    """(slot, token) of a forwarded request's `x-sqlfleet-slot`; None without one; (-1, -1)
    for a malformed one (never served: it answers 421)."""
    value = header(scope, SLOT_HEADER.encode())
    if value is None:
        return None
    slot, _, token = value.partition(":")
    try:
        return int(slot), int(token)
    except ValueError:
        return -1, -1
