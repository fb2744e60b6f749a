"""The change feed over HTTP: `GET /v1/tenants/{tenant}/changes`, Server-Sent Events.

Events (each `data` is one JSON object):
- `open`: the stream's starting position (also as its `id`, so a reconnect resumes from it).
- `commit` (`id`: its position): `{"position", "time", "changes": [...]}`, one per committed
  transaction in commit order; a change is `{"op": "insert"|"update", "table", "rowid", "row"}`,
  `{"op": "delete", "table", "rowid"}`, `{"op": "resync", "table", "reason"}` (rows of that
  table changed unseen) or `{"op": "schema"}` (the transaction changed the schema).
- `resync` (`id`: its position): `{"position", "time", "reason"}`: what the subscriber holds may
  be incomplete; reload from an export and go on from here.
- `heartbeat`: `{"position"}` every `changes_heartbeat` seconds while nothing else is sent
  (`null` before `open`: the tenant was busy when the stream began, its next request starts it).
- `end`: `{"reason"}`, then the stream closes (tenant deleted, token revoked, server stopping;
  in a cluster, `tenant_moved: ...` once this node stops serving the tenant: its slot moved in a
  drain or a join, or the node lost its lease or was fenced; the subscriber reconnects, through
  any node, and the new owner's feed goes on from a `resync`).

The tenant side (tenants.changes) encodes each event once, in the committing thread; a stream
only copies those bytes out of the tenant's ring, on the event loop, at most `_CHUNK` a time.
A subscriber whose connection takes nothing for twice `changes_heartbeat` is disconnected.
Whether the tenant is still served here is asked (the fleet's `admit`, in memory) every
ADMIT_SECONDS while a stream is idle, as a Hrana WebSocket session does (router.hrana.ws.moves).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncGenerator, Callable
from typing import Any, ClassVar

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from router.auth import require_tenant
from router.codec import dumps, encode_value
from router.context import Context, ctx
from router.hrana.ws.moves import ADMIT_SECONDS
from tenants.change_events import Commit, End, Resync
from tenants.changes import Subscription
from tenants.errors import SqlfleetError
from tenants.ids import validate_tenant_id
from tenants.rfc3339 import format_time

log = logging.getLogger(__name__)

_CHUNK = 64 << 10  # bytes of events copied out of the ring per send


def encode_event(event: Commit | Resync) -> bytes:
    """One event as the SSE bytes every subscriber receives (tenants.change_events.Encode)."""
    if isinstance(event, Resync):
        return _frame(
            "resync",
            {"position": event.position, "time": format_time(event.time), "reason": event.reason},
            event.position,
        )
    changes: list[dict[str, Any]] = []
    for change in event.changes:
        item: dict[str, Any] = {"op": change.op}
        if change.table is not None:
            item["table"] = change.table
        if change.rowid is not None:
            item["rowid"] = change.rowid
        if change.row is not None:
            item["row"] = {name: encode_value(value) for name, value in change.row.items()}
        if change.reason is not None:
            item["reason"] = change.reason
        changes.append(item)
    body = {"position": event.position, "time": format_time(event.time), "changes": changes}
    return _frame("commit", body, event.position)


def end_event(reason: str) -> bytes:
    """The `end` event saying `reason`, the stream's last (also sent by the cluster proxy when
    the owner's relayed stream breaks)."""
    return _frame("end", {"reason": reason})


def moved_reason(tenant: str) -> str:
    """Why a feed of `tenant` ended here: this node does not serve it any more."""
    return f"tenant_moved: tenant {tenant!r} is served by another node now: reconnect"


def _frame(kind: str, data: dict[str, Any], position: str | None = None) -> bytes:
    head = f"event: {kind}\n" if position is None else f"id: {position}\nevent: {kind}\n"
    return head.encode() + b"data: " + dumps(data) + b"\n\n"


async def changes(request: Request) -> Response:
    c = ctx(request)
    tenant = validate_tenant_id(request.path_params["tenant"])
    require_tenant(c.principal(request), tenant)  # ro is enough
    c.fleet.require(tenant)
    last_event_id = request.headers.get("last-event-id")
    fanout = _Fanout.of(asyncio.get_running_loop(), tenant)
    woken = asyncio.Event()
    fanout.events.add(woken)
    try:
        # subscribing may wait briefly for the tenant's lock (to hook its open connection)
        subscription = await c.blocking(c.feed.subscribe, tenant, last_event_id, fanout)
    except BaseException:
        fanout.leave(woken)
        raise

    def close() -> None:
        subscription.close()
        fanout.leave(woken)

    return _EventStream(_events(c, request, subscription, woken), close, 2 * c.feed.config.heartbeat)


class _Fanout:
    """The wake callback shared by the streams of one tenant on one event loop: a commit costs
    its writer one `call_soon_threadsafe` whatever the number of streams (the tenant's ring
    calls each distinct callback once). `events` and `leave` are for the loop's thread only."""

    # per loop, not per app: a fanout belongs to the loop its streams run on
    _all: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Fanout]]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, tenant: str) -> None:
        self._loop = loop
        self._tenant = tenant
        self.events: set[asyncio.Event] = set()

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop, tenant: str) -> _Fanout:
        fanouts = cls._all.setdefault(loop, {})
        fanout = fanouts.get(tenant)
        if fanout is None:
            fanout = fanouts[tenant] = cls(loop, tenant)
        return fanout

    def leave(self, event: asyncio.Event) -> None:
        self.events.discard(event)
        fanouts = self._all.get(self._loop, {})
        if not self.events and fanouts.get(self._tenant) is self:
            del fanouts[self._tenant]

    def __call__(self) -> None:  # from the committing thread
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody reads any more
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        for event in self.events:
            event.set()


async def _events(
    c: Context, request: Request, sub: Subscription, woken: asyncio.Event
) -> AsyncGenerator[bytes]:
    heartbeat = c.feed.config.heartbeat
    authorization = request.headers.get("authorization")
    served = _served(c, sub.tenant_id)
    while not sub.ready:  # the tenant was busy: its next request hooks it
        woken.clear()
        if served is not None and not served():
            yield end_event(moved_reason(sub.tenant_id))
            return
        if not sub.ready and not await _wait(woken, heartbeat, served):
            yield _frame("heartbeat", {"position": None})  # no position yet: `open` gives it
    yield _frame("open", {"position": sub.position}, sub.position)
    while True:
        woken.clear()
        try:  # the token may have been revoked, or the tenant deleted, since the last events
            require_tenant(c.auth.authenticate(authorization), sub.tenant_id)
        except SqlfleetError as exc:
            yield end_event(exc.message)
            return
        frames, notice = sub.read(_CHUNK)
        if frames:
            yield b"".join(frames)
        elif isinstance(notice, Resync):
            yield encode_event(notice)
        elif isinstance(notice, End):
            yield end_event(notice.reason)
            return
        elif served is not None and not served():
            # all committed here is sent; later commits are the new owner's
            yield end_event(moved_reason(sub.tenant_id))
            return
        elif not await _wait(woken, heartbeat, served):
            yield _frame("heartbeat", {"position": sub.position})


def _served(c: Context, tenant: str) -> Callable[[], bool] | None:
    """Whether this node serves `tenant` now; None for a single server (it serves every tenant
    for good)."""
    admit = c.fleet.admit
    if admit is None:
        return None

    def served() -> bool:
        try:
            admit(tenant)
        except SqlfleetError:
            return False
        return True

    return served


async def _wait(event: asyncio.Event, timeout: float, served: Callable[[], bool] | None) -> bool:
    """True once `event` is set, or `served()` (asked every ADMIT_SECONDS) turns false; False
    after `timeout` seconds of neither."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    step = timeout if served is None else ADMIT_SECONDS
    while (left := deadline - loop.time()) > 0:
        try:
            await asyncio.wait_for(event.wait(), min(left, step))
        except TimeoutError:
            if served is not None and not served():
                return True
        else:
            return True
    return False


class _EventStream(StreamingResponse):
    """A `text/event-stream` response that ends when the client goes away, or takes nothing
    for `send_timeout` seconds (its connection is then dropped), and always calls `on_close`."""

    def __init__(
        self, events: AsyncGenerator[bytes], on_close: Callable[[], None], send_timeout: float
    ) -> None:
        headers = {"cache-control": "no-store", "x-accel-buffering": "no"}
        super().__init__(events, headers=headers, media_type="text/event-stream")
        self._events = events
        self._on_close = on_close
        self._send_timeout = send_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._until_disconnect, receive, group.cancel_scope)
                await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
                if await self._stream(send):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                group.cancel_scope.cancel()
        finally:
            try:
                await self._events.aclose()
            finally:
                self._on_close()

    async def _stream(self, send: Send) -> bool:
        """Send every event; False when the client stopped taking them (drop it)."""
        try:
            async for chunk in self._events:
                with anyio.fail_after(self._send_timeout):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except TimeoutError:
            log.info("change feed: a subscriber took nothing for %g s: disconnected", self._send_timeout)
            return False
        return True

    @staticmethod
    async def _until_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()


ROUTES = [Route("/v1/tenants/{tenant}/changes", changes, methods=["GET"])]
