"""Cluster routing as ASGI middleware: any node answers for any tenant (issue 16, "one URL").

For a request bound to one tenant (see placement.tenant_of):
- this node owns the tenant's slot and can prove its lease alive: served here;
- another node owns it: forwarded there with `x-sqlfleet-slot: <slot>:<token>`; a 421 (that node
  is not the owner any more) or a connection that never opened makes the proxy read the owner
  from etcd and try once more, here or there. Once the request may have reached the owner, it is
  never sent again unless it is a GET or HEAD: a failure then is 503 `outcome_unknown`;
- nobody owns it right now (a move or a takeover under way): 503 with Retry-After.
A request carrying `x-sqlfleet-slot` was forwarded to us: it is served only if this node owns
that slot under that token (a claim of its own not yet seen here is waited for, CLAIM_LAG),
else 421, saying why when this node cannot prove its lease; it is never forwarded again (no loops).
Requests bound to no tenant (system routes, admin lists) are served here; a tenant create goes to
the node owning the new tenant's slot (the id is read from the body).
Served here, a request for a tenant the catalog lacks first opens it (router.proxy.arrivals: a
tenant handed over is restored then; a replica that does not answer within the request's deadline
makes it a 503). A restore `as` a new id goes to the node owning the new id's slot (only the owner
of a slot creates a tenant in it), which gathers the source's backups from the other nodes
(router.backups_api) when the source's slot is another's.
A forwarded request is labelled with the route it matches here (access log, metrics), as if served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backups.handoff import looked_up
from router.errors import render
from router.hrana.routes import ROUTES as HRANA_ROUTES
from router.hrana.routes import error_response
from router.hrana.ws.close import close_reason, error_reason
from router.proxy.arrivals import OPENING_THREADS, Arrivals, Opening
from router.proxy.errors import (
    Misdirected,
    NoOwner,
    OpeningSlow,
    OutcomeUnknown,
    OwnerUnreachable,
)
from router.proxy.forward import Body, ClientGone, Forwarder, Lost, OwnerLost, Unreachable
from router.proxy.placement import SLOT_HEADER, UNPROVEN_HEADER, Located, Placement, header, tenant_of
from router.proxy.websocket import (
    Refused,
    Rejected,
    WebSocketRelay,
    accept_and_read_hello,
    hello_subject,
    replayed,
)
from tenants.errors import SqlfleetError
from tenants.ids import is_name

CREATE_PATH = "/v1/admin/tenants"
RESTORE_PATH = re.compile(r"^/v1/admin/tenants/[^/]+/restore$")
# Seconds a forwarded request waits for this node to serve the slot it names, and between looks
# (see ClusterProxy._serves_soon): a claim's answer reaches its node within milliseconds, more on
# a busy machine.
CLAIM_LAG = 0.5
CLAIM_POLL = 0.01
# Methods without effects (RFC 9110 §9.2.1 safe methods we route): sent again after a lost answer.
RESENDABLE = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class ProxyParts:
    """What the proxy of one node needs: the cluster's routing table, its keep-alive pool and
    WebSocket relay to the other nodes (built by ops.node), and the node's fleet as `arrivals`
    (None: the proxy alone, in its tests, restores nothing before a route runs)."""

    placement: Placement
    forwarder: Forwarder
    websockets: WebSocketRelay
    arrivals: Arrivals | None = None


class ClusterProxy:
    """ASGI middleware (innermost: the body deadline, metrics and access log apply to what it
    forwards too). `deadline` (s, the request time bound): the longest a request waits for its
    tenant to be opened here."""

    def __init__(self, app: ASGIApp, parts: ProxyParts, base_domain: str | None, deadline: float) -> None:
        self.app = app
        self.placement = parts.placement
        self.forwarder = parts.forwarder
        self.websockets = parts.websockets
        self.arrivals = parts.arrivals
        self.base_domain = base_domain
        self.deadline = deadline
        self.opening = Opening(OPENING_THREADS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        claimed = _slot_header(scope)
        if claimed is not None and not await self._serves_soon(*claimed):
            await self._misdirected(claimed, scope, receive, send)
            return
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == CREATE_PATH:
            await self._create(scope, receive, send, forwarded=claimed is not None)
            return
        if scope["type"] == "http" and scope["method"] == "POST" and RESTORE_PATH.match(scope["path"]):
            await self._restore(scope, receive, send, claimed)
            return
        tenant = tenant_of(scope, self.base_domain)
        if claimed is not None:  # forwarded to us, and ours: served here, never forwarded again
            if scope["type"] == "http" and tenant is not None and is_name(tenant):
                await self._serve(scope, receive, send, tenant, None)
            else:
                await self.app(scope, receive, send)
        elif scope["type"] == "websocket" and tenant is None and scope["path"] == "/":
            await self._root_websocket(scope, receive, send)
        elif tenant is None or not is_name(tenant):
            await self.app(scope, receive, send)  # not one tenant's, or the route's own 400
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send, tenant, None)
        else:
            await self._http(scope, receive, send, tenant, None)

    def _owner_lost(self, tenant: str, where: Located) -> Callable[[], bool]:
        """Whether the routing table shows `tenant`'s slot lost by the owner `where` names (its
        lease ran out, or the slot moved on): a request there is not waited for any longer."""
        return lambda: self.placement.locate(tenant).token != where.token

    async def _serves_soon(self, slot: int, token: int) -> bool:
        """Whether this node serves `slot` under `token`, now or within CLAIM_LAG: the other
        nodes may see this node's new claim in etcd before it does itself (its claim's answer is
        still on its way), and a request they send meanwhile is served, not refused (421). Not
        waited for while this node cannot prove its lease: it serves nothing then."""
        deadline = time.monotonic() + CLAIM_LAG
        while not self.placement.serves(slot, token):
            if self.placement.unavailable() is not None or time.monotonic() >= deadline or slot < 0:
                return False
            await asyncio.sleep(CLAIM_POLL)
        return True

    def _here(self, where: Located) -> bool:
        return where.here and self.placement.serves(where.slot, where.token)

    async def _misdirected(
        self, claimed: tuple[int, int], scope: Scope, receive: Receive, send: Send
    ) -> None:
        unproven = self.placement.unavailable()
        error = Misdirected.of(*claimed, unproven)
        # the forwarding node words its own answer with why (router.proxy.errors.OwnerUnreachable)
        said = [] if unproven is None else [(UNPROVEN_HEADER.encode(), unproven.encode("latin-1", "replace"))]
        if scope["type"] == "websocket":
            await self.websockets.deny(scope, receive, send, error, said)
        else:
            response = refusal(scope, error)
            response.raw_headers += said
            await response(scope, receive, send)

    async def _create(self, scope: Scope, receive: Receive, send: Send, forwarded: bool) -> None:
        """A tenant is created on the node owning its slot: the id is in the JSON body."""
        try:
            body = await Body.read(receive, self.forwarder.config.replay_bytes)
        except ClientGone:
            return
        tenant = _created_id(body.held)
        if tenant is None:
            await self.app(scope, body.replay(), send)  # the route's own 400
        elif forwarded:
            await self._serve(scope, receive, send, tenant, body)
        else:
            await self._http(scope, receive, send, tenant, body)

    async def _restore(
        self, scope: Scope, receive: Receive, send: Send, claimed: tuple[int, int] | None
    ) -> None:
        """A restore runs on the node owning the tenant it makes: the body's `as` when it names
        one (then the source's backups may be another node's: router.backups_api gathers them),
        else the path's tenant."""
        try:
            body = await Body.read(receive, self.forwarder.config.replay_bytes)
        except ClientGone:
            return
        tenant = _restore_target(body.held) or tenant_of(scope, self.base_domain)
        if tenant is None or not is_name(tenant):
            await self.app(scope, body.replay(), send)  # the route's own 400
        elif claimed is None:
            await self._http(scope, receive, send, tenant, body)
        elif claimed[0] != self.placement.locate(tenant).slot:  # routed by another rule: not ours
            await self._misdirected(claimed, scope, receive, send)
        else:
            await self._serve(scope, receive, send, tenant, body)

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, tenant: str, body: Body | None
    ) -> None:
        """Serve a request for `tenant` here (this node owns its slot); `body`: as in `_http`."""
        nowhere: set[str] = set()
        opening = [tenant]
        source = tenant_of(scope, self.base_domain)
        if (
            RESTORE_PATH.match(scope["path"])
            and source != tenant
            and is_name(source)
            and self._here(self.placement.locate(source))
        ):  # restored `as` tenant: a source handed here is opened (restored) first, as in place
            opening.append(source)
        for each in opening:
            if (slow := await self._arrive(each, nowhere)) is not None:
                await refusal(scope, slow)(scope, receive, send)
                return
        with contextlib.ExitStack() as known:  # the route's own open does not read the replica again
            for absent in nowhere:
                known.enter_context(looked_up(absent))
            await self.app(scope, receive if body is None else body.replay(), send)

    async def _arrive(self, tenant: str, nowhere: set[str]) -> OpeningSlow | None:
        """Open `tenant` here first if the catalog lacks it (adding it to `nowhere` when it
        exists nowhere); the error to answer when that did not finish within the deadline."""
        if self.arrivals is None or self.arrivals.present(tenant):
            return None
        absent = await self.opening.run(self.arrivals.arrive, tenant, self.deadline)
        if absent is None:
            return OpeningSlow.of(tenant, self.deadline)
        if absent:
            nowhere.add(tenant)
        return None

    async def _http(self, scope: Scope, receive: Receive, send: Send, tenant: str, body: Body | None) -> None:
        """Serve here or forward; `body`: the request's body if already read (else read here)."""
        where = self.placement.locate(tenant)
        if self._here(where):
            await self._serve(scope, receive, send, tenant, body)
            return
        if body is None:
            try:
                body = await Body.read(receive, self.forwarder.config.replay_bytes)
            except ClientGone:
                return
        _label(scope)
        error: SqlfleetError | None = None
        for attempt in range(2):
            if attempt:
                if body.held is None:  # a streamed body was spent on the first try
                    break
                where = await self.placement.refresh(tenant)
                if self._here(where):
                    await self._serve(scope, receive, send, tenant, body)
                    return
            if where.token == 0 or where.url is None:
                error = self._no_owner(where)
                break
            try:
                response = await self.forwarder.open(scope, body, where, self._owner_lost(tenant, where))
            except ClientGone:
                return
            except Unreachable:  # nothing was sent: the owner may have moved
                error = OwnerUnreachable.of(tenant, self.placement.unavailable())
                continue
            except Lost as lost:
                if scope["method"] in RESENDABLE:
                    error = OwnerUnreachable.lost(tenant, str(lost), self.placement.unavailable())
                    continue
                # never sent twice: it may have been applied
                if isinstance(lost.__cause__, OwnerLost):  # said by what the routing table knows
                    error = OutcomeUnknown.slot_gone(tenant, where, self.placement.locate(tenant))
                else:
                    error = OutcomeUnknown.of(tenant, str(lost))
                break
            if response.status != Misdirected.status:
                with contextlib.suppress(Lost):  # cut short: nothing more to send
                    await self.forwarder.relay(response, receive, send, self._owner_lost(tenant, where))
                return
            response.release()  # it said so: not applied there
            there = response.headers.get(UNPROVEN_HEADER)
            error = OwnerUnreachable.refused(tenant, there, self.placement.unavailable())
        assert error is not None  # every way round the loop that does not return sets one
        await refusal(scope, error)(scope, receive, send)

    def _no_owner(self, where: Located) -> NoOwner:
        """What is known when `where` is not served by another node: no owner in the routing
        table, or this node owns the slot and does not serve it now."""
        if where.token > 0 and where.url is None:
            return NoOwner.here(where.slot, self.placement.unavailable())
        return NoOwner.of(where.slot, self.placement.unavailable())

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
        # a handshake (a GET) has no effect before the socket opens: it may be sent again
        error: SqlfleetError | None = None
        for attempt in range(2):
            if attempt:
                where = await self.placement.refresh(tenant)
            if self._here(where):
                # a session's later opens look for a tenant absent now again (it may arrive meanwhile)
                if (slow := await self._arrive(tenant, set())) is not None:
                    error = slow
                    break
                await self.app(scope, here_receive, here_send)
                return
            if where.token == 0 or where.url is None:
                error = self._no_owner(where)
                break
            try:
                upstream = await self.websockets.open(scope, where, scope.get("subprotocols") or [])
            except Unreachable:
                error = OwnerUnreachable.of(tenant, self.placement.unavailable())
                continue
            except Refused as refused:
                error = OwnerUnreachable.refused(tenant, refused.unproven, self.placement.unavailable())
                continue
            except Rejected as answer:
                if hello is None:
                    await self.websockets.deny_raw(scope, receive, send, answer)
                else:
                    reason = close_reason("owner_refused", f"the tenant's node answered {answer.status}")
                    await send({"type": "websocket.close", "code": 1011, "reason": reason})
                return
            if hello is None:
                await receive()  # websocket.connect
                await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol, "headers": []})
            await self.websockets.pump(receive, send, upstream, hello, self._owner_lost(tenant, where))
            return
        assert error is not None  # every way round the loop that does not return sets one
        if hello is None:
            await self.websockets.deny(scope, receive, send, error)
        else:
            await send({"type": "websocket.close", "code": 1013, "reason": error_reason(error)})


def refusal(scope: Scope, error: SqlfleetError) -> Response:
    """What the proxy answers itself for an HTTP request (no owner, owner unreachable, outcome
    unknown, 421 here, a tenant that did not open in time): labelled with its route (access log,
    metrics), in the error shape of that route: Hrana's `{"message", "code"}` on the Hrana
    routes (JSON on the protobuf ones too, as they answer their own errors), else the REST one."""
    _label(scope)
    if any(route.matches(scope)[0] is not Match.NONE for route in HRANA_ROUTES):
        return error_response(error)
    return render(error)


def _label(scope: Scope) -> None:
    """Name a forwarded request's route in `scope` as the router would had it served it (the
    access log and metrics read `scope["route"]`): the route it matches in this app (the same on
    every node), else `proxied`."""
    router = getattr(scope.get("app"), "router", None)
    partial: BaseRoute | None = None
    for route in getattr(router, "routes", ()):
        match, child = route.matches(scope)
        if match is Match.FULL:  # its tenant too, for the access log (not the rest: a Mount's root_path)
            scope["route"], scope["path_params"] = route, child.get("path_params", {})
            return
        if match is Match.PARTIAL and partial is None:
            partial = route  # another method on a known path: the owner answers 405
    scope["route"] = partial or PROXIED


class _Proxied(BaseRoute):
    """The route label of a forwarded request no route here matches (an app without a router)."""

    path = "proxied"


PROXIED = _Proxied()


def _created_id(body: bytes | None) -> str | None:
    """The `id` of a tenant-create body, when it is one valid id."""
    try:
        tenant = json.loads(body) if body is not None else None
    except ValueError:
        return None
    tenant = tenant.get("id") if isinstance(tenant, dict) else None
    return tenant if is_name(tenant) else None


def _restore_target(body: bytes | None) -> str | None:
    """The `as` of a restore body, when it is one valid id."""
    try:
        parsed = json.loads(body) if body is not None else None
    except ValueError:
        return None
    target = parsed.get("as") if isinstance(parsed, dict) else None
    return target if is_name(target) else None


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
