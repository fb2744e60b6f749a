"""One Hrana WebSocket connection after its handshake: hello, then requests, until either side
closes (HRANA_3_SPEC.md, "Hrana over WebSocket").

- Reading: one message at a time, in order. `hello` is answered before the next message is
  read (clients pipeline requests behind it). SQL ids are resolved when a request is read, so a
  `close_sql` right after a request does not pull its text away (@libsql/client relies on it).
  Past MAX_IN_FLIGHT requests, or max_body_bytes of them, in flight, reading waits: TCP
  back-pressure, as the spec asks.
- Streams are the HTTP batons' streams (router.hrana.streams, via router.hrana.jobs): the same
  limits, idle expiry, preemption, scheduler and budgets; each request (or cursor) on a stream is
  one job of the tenant with a Budget of its own. A stream's requests run in order (its Lane);
  other streams go on meanwhile.
- The connection's credential is checked again before every request: once its token has
  expired (or was revoked) the connection is closed with 1008, and its streams rolled back; a
  re-sent `hello` with a fresh token (same tenant) keeps it going.
- Errors: a request that fails is its `response_error`; a message that is not one (bad JSON or
  protobuf, no such message type) closes with 1007; a protocol violation (a request before
  hello, a duplicate stream, cursor or SQL id, an unknown stream, a request the negotiated
  version lacks) with 1008; a bug with 1011. Requests read before such a message are answered
  first. However it ends, every stream is rolled back and let go.
- A response the client does not take within `request_timeout` ends the connection.
- Each message read, and each request's work, is tracked (router.request_writes) in the task
  that sends its response: under `ack = replica` a refused response says whether it wrote.
- Close reasons: a code-like word first, fitted into a close frame (router.hrana.ws.close).
- In a cluster (the fleet has an `admit` hook), a session whose tenant this node stops serving
  (its slot moved: a drain, a join; the node lost its lease or was fenced) stops reading, lets
  the requests in flight answer (within `request_timeout`), and closes with 1012 (service
  restart) and `tenant_moved: ...`: the client reconnects, through any node, to the new owner.
  Checked every few tenths of a second (router.hrana.ws.moves), so an idle connection too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import anyio
from anyio.abc import TaskGroup
from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from router.context import Context
from router.hrana.errors import ProtocolError, SqlExists, StreamClosed
from router.hrana.executor import HRANA, Steps, StreamExecutor
from router.hrana.jobs import learn_inline, point_read, run_on_stream, run_or_inline, try_inline
from router.hrana.protocol import (
    Batch,
    ClientMsg,
    Error,
    Hello,
    HelloError,
    HelloOk,
    InvalidMessage,
    InvalidRequest,
    Request,
    Response,
    ResponseError,
    ResponseOk,
    ServerMsg,
    StreamResult,
    WsRequest,
)
from router.hrana.ws.close import close_reason, error_reason, fitted
from router.hrana.ws.cursor import CursorClosed, WsCursor
from router.hrana.ws.hello import Identity, authenticate, expired
from router.hrana.ws.lane import Lane
from router.hrana.ws.moves import moved
from router.hrana.ws.stored_sql import StoredSql
from router.hrana.ws.stream import SocketStream
from router.hrana.ws.versions import lacks
from router.request_writes import Tracked, current, tracking
from tenants.errors import SqlfleetError

log = logging.getLogger(__name__)

# Larger results of a read run inline are encoded in a worker thread (as the REST API's).
INLINE_MAX_ROWS = 200
INLINE_MAX_BYTES = 64 << 10
MAX_IN_FLIGHT = 128  # requests read but not answered (@libsql/client pipelines up to ~60)

Close = tuple[int, str]  # a close code and reason (router.hrana.ws.close)
PROTOCOL = "PROTOCOL_ERROR"  # the word of a protocol violation's close reason, as Hrana's Error code
NO_HELLO = close_reason(PROTOCOL, "Received a request before hello message")  # sqld's words
INTERNAL = (1011, close_reason("INTERNAL_ERROR", "Internal server error"))
Decode = Callable[[str | bytes], ClientMsg]
Encode = Callable[[ServerMsg], str | bytes]


@dataclass(frozen=True)
class Codec:
    """The negotiated encoding: JSON in text frames or protobuf in binary ones."""

    binary: bool
    decode: Decode
    encode: Encode


class _Gone(Exception):
    """The client is gone, or did not read a response in time: nothing more can be sent."""


class Session:
    """Serves one accepted WebSocket (`serve`). Event loop only."""

    def __init__(self, c: Context, websocket: WebSocket, codec: Codec, version: int) -> None:
        self.c = c
        self.ws = websocket
        self.codec = codec
        self.version = version
        self.identity: Identity | None = None  # from the first hello on
        self.sqls = StoredSql(c.fleet.config.max_sql_length)
        self.streams: dict[int, SocketStream] = {}
        self.cursors: dict[int, WsCursor] = {}
        # asyncio's: taking a free one costs no trip through the event loop (anyio's yields on
        # every acquire, a tenth of a WebSocket answer's server time); the server runs on asyncio
        self._send_lock = asyncio.Lock()
        self._in_flight = 0
        self._in_flight_bytes = 0
        self._room = anyio.Event()
        self._fatal: Close | None = None
        self._gone = False
        self._tasks: TaskGroup | None = None
        self._moved: Close | None = None
        # what each message wrote is asked only by the ack gate (ack=replica): else not tracked,
        # a context manager and an allocation less per message
        backups = c.backups
        self._tracks = backups is not None and backups.shipper.acks is not None

    async def serve(self) -> None:
        """Until the connection ends; then every stream is rolled back and let go. Never raises
        (but cancellation)."""
        close: Close | None = None
        try:
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                with contextlib.suppress(_Gone):
                    close = await self._read_while_admitted()
                self._stop()
        except Exception:
            log.exception("hrana websocket of tenant %s failed", self.tenant)
            close = INTERNAL
        finally:
            with anyio.CancelScope(shield=True):
                await self._release()
        close = self._fatal or close
        if close is not None and not self._gone:
            await self._close(*close)

    # -- reading ---------------------------------------------------------------------------------

    async def _read_while_admitted(self) -> Close | None:
        """`_read`, until this node stops serving the tenant (see the module's doc): then the
        requests in flight are answered, and the connection is to close as moved."""
        admit = self.c.fleet.admit
        if admit is None:  # a single server serves every tenant for good
            return await self._answered(await self._read())
        assert self._tasks is not None
        watching = anyio.CancelScope()
        with anyio.CancelScope() as reading:
            self._tasks.start_soon(self._watch_admission, admit, reading, watching)
            close = await self._read()
            watching.cancel()
            return await self._answered(close)
        assert self._moved is not None  # only the watch cancels `reading` from outside
        return await self._answered(self._moved)

    async def _answered(self, close: Close | None) -> Close | None:
        """`close`, once the requests already read are answered (each within its own bounds,
        all within `request_timeout`): however reading ends (a bad message, a protocol
        violation, an expired token, the tenant moving), what came before it is answered.
        Nothing waits for a client that has gone (None)."""
        if close is not None:
            with anyio.move_on_after(self.c.config.request_timeout):
                while self._in_flight:
                    self._room = anyio.Event()
                    await self._room.wait()
        return close

    async def _watch_admission(
        self, admit: Callable[[str], None], reading: anyio.CancelScope, watching: anyio.CancelScope
    ) -> None:
        """Cancels `reading` once `admit` refuses the tenant; ends with `watching`."""
        with watching:
            self._moved = await moved(admit, lambda: self.tenant)
            reading.cancel()

    async def _read(self) -> Close | None:
        """Read and dispatch messages until the client leaves (None) or the connection must
        close (how)."""
        while True:
            await self._wait_for_room()
            message: Message | None = None
            # a client that never says hello holds a connection this long
            with anyio.move_on_after(self.c.config.body_timeout if self.identity is None else math.inf):
                message = await self.ws.receive()
            if message is None:
                return 1008, close_reason(
                    PROTOCOL, f"no hello message within {self.c.config.body_timeout:g} s"
                )
            if message["type"] == "websocket.disconnect":
                self._gone = True
                return None
            data: str | bytes | None = message.get("bytes") if self.codec.binary else message.get("text")
            if data is None:
                kind = "text" if self.codec.binary else "binary"
                return 1003, close_reason(
                    PROTOCOL, f"Received a {kind} WebSocket message, which is not supported in this encoding"
                )
            with self._tracking():  # what it answers here wrote nothing
                close = await self._message(data)
            if close is not None:
                return close

    async def _message(self, data: str | bytes) -> Close | None:
        try:
            msg = self.codec.decode(data)
        except InvalidRequest as exc:
            if self.identity is None:
                return 1008, NO_HELLO
            await self._send(ResponseError(exc.request_id, Error.of(exc)))
            return None
        except InvalidMessage as exc:
            return 1007, error_reason(exc)
        except ProtocolError as exc:
            return 1008, error_reason(exc)
        if isinstance(msg, Hello):
            return await self._hello(msg)
        if self.identity is None:
            return 1008, NO_HELLO
        problem = expired(self.c, self.identity)
        if problem is not None:
            return 1008, problem
        return await self._request(msg, len(data))

    def _tracking(self) -> contextlib.AbstractContextManager[object]:
        """A Tracked for the work of one message (router.request_writes), if the gate asks."""
        return tracking(Tracked(complete=True)) if self._tracks else contextlib.nullcontext()

    async def _wait_for_room(self) -> None:
        while self._in_flight >= MAX_IN_FLIGHT or self._in_flight_bytes >= self.c.config.max_body_bytes:
            self._room = anyio.Event()
            await self._room.wait()

    def _in_flight_op(self, size: int, op: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """`op`, counted in flight from now until it is over; a failure in it ends the session."""
        self._in_flight += 1
        self._in_flight_bytes += size

        async def counted() -> None:
            try:
                # its writes are its statements', each with a budget it makes (the ack gate asks)
                with self._tracking():
                    await op()
            except _Gone:
                self._gone = True
                self._stop()
            except Exception:
                log.exception("hrana websocket request of tenant %s failed", self.tenant)
                self._fatal = self._fatal or INTERNAL
                self._stop()
            finally:
                self._in_flight -= 1
                self._in_flight_bytes -= size
                self._room.set()

        return counted

    # -- hello -----------------------------------------------------------------------------------

    async def _hello(self, hello: Hello) -> Close | None:
        if self.identity is not None and self.version < 2:
            return 1008, close_reason(
                PROTOCOL, "Repeated hello message is only supported in protocol version hrana2 and higher"
            )
        try:
            self.identity = authenticate(self.c, self.ws, hello.jwt, self.tenant)
        except SqlfleetError as exc:
            error = Error.of(exc)
            await self._send(HelloError(Error(f"Authentication failed: {error.message}", error.code)))
            return 1000, close_reason(error.code or "AUTH_FAILED", "Authentication failed")
        await self._send(HelloOk())
        return None

    @property
    def tenant(self) -> str | None:
        return self.identity.tenant if self.identity is not None else None

    @property
    def readonly(self) -> bool:
        return self.identity is None or self.identity.readonly

    # -- requests --------------------------------------------------------------------------------

    async def _request(self, req: WsRequest, size: int) -> Close | None:
        lacking = lacks(self.version, req)
        if lacking is not None:
            return 1008, close_reason(PROTOCOL, lacking)
        kind, rid = req.kind, req.request_id
        if kind in ("store_sql", "close_sql"):
            return await self._stored_sql(req)
        if kind in ("fetch_cursor", "close_cursor"):
            return await self._cursor_request(req, size)
        found = self.streams.get(req.stream_id)
        if kind == "open_stream":
            if found is not None:
                return 1008, close_reason(PROTOCOL, f"stream {req.stream_id} is already open")
            opened = self.streams[req.stream_id] = SocketStream(req.stream_id, self._lane())
            opened.lane.push(self._in_flight_op(size, lambda: self._open(opened, rid)))
            return None
        if found is None:
            return 1008, close_reason(PROTOCOL, f"stream {req.stream_id} is not open")
        ws = found
        if ws.closing:
            await self._send(ResponseError(rid, Error.of(StreamClosed("the stream is being closed"))))
            return None
        if kind == "close_stream":
            ws.closing = True
            if ws.cursor is not None:
                ws.cursor.close()
            ws.lane.push(self._in_flight_op(size, lambda: self._close_stream(ws, rid)))
            return None
        if kind == "open_cursor":
            return await self._open_cursor(ws, req, size)
        try:
            assert req.request is not None
            request = self.sqls.resolve(req.request)
        except SqlfleetError as exc:
            await self._send(ResponseError(rid, Error.of(exc)))
            return None
        ws.lane.push(self._in_flight_op(size, lambda: self._on_stream(ws, rid, request)))
        return None

    # -- stored SQL ------------------------------------------------------------------------------

    async def _stored_sql(self, req: WsRequest) -> Close | None:
        request = req.request
        assert request is not None and request.sql_id is not None
        if req.kind == "close_sql":
            self.sqls.close(request.sql_id)
        else:
            assert request.sql is not None
            try:
                self.sqls.store(request.sql_id, request.sql)
            except SqlExists as exc:
                return 1008, error_reason(exc)
            except SqlfleetError as exc:
                await self._send(ResponseError(req.request_id, Error.of(exc)))
                return None
        await self._send(ResponseOk(req.request_id, Response(req.kind)))
        return None

    # -- streams ---------------------------------------------------------------------------------

    async def _open(self, ws: SocketStream, rid: int) -> None:
        assert self.tenant is not None
        await self._respond(rid, ws.open(self.c, self.tenant) or Response("open_stream"))

    async def _on_stream(self, ws: SocketStream, rid: int, request: Request) -> None:
        budget = self.c.budget(HRANA)
        try:
            try:
                stream = ws.take(self.c)
                work = partial(self._work, rid=rid, request=request)
                # a point read runs on the loop, at once or when its turn comes (jobs.py)
                inline = partial(try_inline, self.c, stream, request, budget)
                reads = partial(point_read, stream, [request])  # asked only when the tenant has jobs
                outcome = await run_or_inline(
                    self.c,
                    stream,
                    self.readonly,
                    work,
                    budget,
                    inline,
                    end_on_error=False,
                    waits_as_read=reads,
                )
                if isinstance(outcome, Response):  # ran inline: not encoded yet
                    data = await self._encode(ResponseOk(rid, outcome), outcome)
                else:
                    data = outcome
            except SqlfleetError as exc:
                data = self.codec.encode(ResponseError(rid, await ws.failed(self.c, exc)))
            await self._send(data)
        finally:
            budget.release()

    def _work(self, executor: StreamExecutor, rid: int, request: Request) -> Steps[str | bytes]:
        """The request's response, encoded in the worker thread (a result of megabytes would
        otherwise hold the event loop while it is encoded)."""
        result = yield from executor.result_steps(request)
        learn_inline(executor, request, result)
        return self.codec.encode(_response(rid, result))

    async def _encode(self, msg: ResponseOk, response: Response) -> str | bytes:
        """`msg` encoded: here if small, else in a worker thread."""
        result = response.result.result if response.result is not None else None
        if result is None or (len(result.rows) <= INLINE_MAX_ROWS and result.size <= INLINE_MAX_BYTES):
            return self.codec.encode(msg)
        return await self.c.blocking(self.codec.encode, msg)

    async def _close_stream(self, ws: SocketStream, rid: int) -> None:
        await ws.close(self.c)
        if self.streams.get(ws.id) is ws:
            del self.streams[ws.id]
        await self._send(ResponseOk(rid, Response("close_stream")))

    # -- cursors ---------------------------------------------------------------------------------

    async def _open_cursor(self, ws: SocketStream, req: WsRequest, size: int) -> Close | None:
        if req.cursor_id in self.cursors:
            return 1008, close_reason(PROTOCOL, f"cursor {req.cursor_id} is already open")
        assert req.batch is not None
        # its id is taken from now on, even if it fails
        cursor = self.cursors[req.cursor_id] = WsCursor(self._lane())
        try:
            batch = self.sqls.resolve_batch(req.batch)
        except SqlfleetError as exc:
            cursor.failed = Error.of(exc)
            await self._send(ResponseError(req.request_id, cursor.failed))
            return None
        ws.cursor = cursor
        ws.lane.push(self._in_flight_op(size, lambda: self._run_cursor(ws, req.request_id, cursor, batch)))
        return None

    async def _run_cursor(self, ws: SocketStream, rid: int, cursor: WsCursor, batch: Batch) -> None:
        try:
            stream = ws.take(self.c)
        except SqlfleetError as exc:
            cursor.failed = await ws.failed(self.c, exc)
            await self._send(ResponseError(rid, cursor.failed))
            return
        budget = self.c.budget(HRANA)
        cursor.start(budget)
        error: Error | None = None
        try:
            await self._send(ResponseOk(rid, Response("open_cursor")))
            await run_on_stream(
                self.c,
                stream,
                self.readonly,
                lambda s: s.cursor_steps(batch, cursor.emit),
                budget,
                end_on_error=False,
            )
        except CursorClosed:
            pass
        except SqlfleetError as exc:
            error = Error.of(exc)
        finally:
            cursor.finish(error)
            if ws.cursor is cursor:
                ws.cursor = None

    async def _cursor_request(self, req: WsRequest, size: int) -> Close | None:
        cursor, rid = self.cursors.get(req.cursor_id), req.request_id
        if cursor is None:
            if req.kind == "close_cursor":  # closing what is not open is harmless, as close_sql
                await self._send(ResponseOk(rid, Response(req.kind)))
                return None
            return 1008, close_reason(PROTOCOL, f"cursor {req.cursor_id} is not open")
        if req.kind == "close_cursor":
            cursor.lane.push(self._in_flight_op(size, lambda: self._close_cursor(req.cursor_id, cursor, rid)))
        else:
            cursor.lane.push(self._in_flight_op(size, lambda: self._fetch(cursor, rid, req.max_count)))
        return None

    async def _fetch(self, cursor: WsCursor, rid: int, max_count: int) -> None:
        if cursor.failed is not None:
            await self._respond(rid, cursor.failed)
            return
        tracked = current()
        if tracked is not None and cursor.budget is not None:
            tracked.budgets.append(cursor.budget)  # the entries were formed by the cursor's batch
        entries, done = await cursor.fetch(max_count)
        await self._respond(rid, Response("fetch_cursor", entries=entries, done=done))

    async def _close_cursor(self, cursor_id: int, cursor: WsCursor, rid: int) -> None:
        cursor.close()
        if self.cursors.get(cursor_id) is cursor:
            del self.cursors[cursor_id]
        await self._send(ResponseOk(rid, Response("close_cursor")))

    # -- sending and ending ----------------------------------------------------------------------

    async def _respond(self, rid: int, result: StreamResult) -> None:
        await self._send(_response(rid, result))

    async def _send(self, msg: ServerMsg | str | bytes) -> None:
        """Send one message (or one encoded already), waiting for the client to take it at
        most `request_timeout`. Raises _Gone when it does not, or is gone."""
        if self._gone:
            raise _Gone
        data = msg if isinstance(msg, str | bytes) else self.codec.encode(msg)
        message = {"type": "websocket.send", "bytes" if isinstance(data, bytes) else "text": data}
        async with self._send_lock:
            try:
                # asyncio's timeout: one timer; anyio's cancel scope cost several times that
                async with asyncio.timeout(self.c.config.request_timeout):
                    try:
                        await self.ws.send(message)
                    except (WebSocketDisconnect, WebSocketDisconnected):
                        self._gone = True
            except TimeoutError:
                log.info("hrana websocket of tenant %s: the client does not read; dropped", self.tenant)
                self._gone = True
        if self._gone:
            raise _Gone

    def _lane(self) -> Lane:
        assert self._tasks is not None
        return Lane(self._tasks)

    def _stop(self) -> None:
        """End every request in flight: cursors first (their threads may wait for fetches)."""
        for cursor in self.cursors.values():
            cursor.close()
        if self._tasks is not None:
            self._tasks.cancel_scope.cancel()

    async def _release(self) -> None:
        """Roll back and let go of every stream of the connection."""
        for cursor in self.cursors.values():
            cursor.close()
        for ws in self.streams.values():
            await ws.close(self.c)
        self.streams.clear()
        self.cursors.clear()
        self.sqls.clear()

    async def _close(self, code: int, reason: str) -> None:
        reason = fitted(reason)  # `expired` (hello.py) builds its own; the others come fitted
        with anyio.move_on_after(1.0):  # a client that reads nothing does not get this either
            with contextlib.suppress(WebSocketDisconnect, WebSocketDisconnected):
                await self.ws.close(code, reason)


def _response(rid: int, result: StreamResult) -> ResponseOk | ResponseError:
    return ResponseOk(rid, result) if isinstance(result, Response) else ResponseError(rid, result)
