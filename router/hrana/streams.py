"""Hrana-over-HTTP streams and their batons.

A stream is a tenant's connection state carried across HTTP requests. Contract:
- A stream pins its tenant's handle (the pool never evicts it) from its first request until it
  is closed or expires. While a transaction is open it also holds the handle's lock, so other
  requests for that tenant wait (bounded by the pool's busy_timeout, then 503).
- Batons are single-use: each names (server tag, stream id, sequence number) under an HMAC with
  a key made per process, and each request advances the sequence. A baton is refused as
  BATON_INVALID (forged, unknown, another tenant's, or another server's: its tenant moved here
  from another node, or the server restarted, so the stream is gone), BATON_REUSED (an old one,
  or the stream is in use), or STREAM_EXPIRED.
- A stream idle for `idle_timeout` expires: its transaction is rolled back, lock and pin let go.
- Server work preempts a stream holding its tenant (delete, restore in place, migration,
  shutdown: see tenants.pool): the stream ends as if expired, and its next request hears
  STREAM_EXPIRED saying why. Requests on a stream whose tenant is going away are refused so.
- At most `max_per_tenant` streams per tenant and `max_total` in all (in-flight ones count).

Registry methods (`open`, `take`, `give_back`) are cheap and may run on the event loop;
`attach`, `detach`, `sweep` and `close` touch SQLite and run in worker threads.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import secrets
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import apsw

from router.hrana.errors import BatonInvalid, BatonReused, StreamExpired, StreamsExhausted, TooManyStreams
from tenants.pool import Handle, Pool

log = logging.getLogger(__name__)

_PAYLOAD = struct.Struct(">8sQQ")  # the issuing server's tag, stream id, sequence number
_MAC_BYTES = 16
_MASK64 = (1 << 64) - 1
# a well-formed baton of another process: a stream of a server that no longer serves its tenant
# (the tenant moved here: a drain, a takeover) or was restarted; its transaction is gone
FOREIGN_BATON = (
    "the stream has ended because its tenant moved to another node (or the server restarted); "
    "any transaction open on it was rolled back: open a new stream"
)
_TOMBSTONES = 10_000  # expired ids remembered, so a late client hears STREAM_EXPIRED


@dataclass(eq=False)
class Stream:
    """One stream. Its fields belong to whoever has taken it (a request, or the sweeper after
    unregistering it); the registry only reads `busy` and `deadline` under its lock."""

    id: int
    tenant: str
    seq: int
    busy: bool = True
    deadline: float = 0.0
    handle: Handle | None = None
    locked: bool = False  # holds handle.lock: a transaction is open
    closed: bool = False  # a `close` request (or a failure) ended it
    readonly_tx: bool = False  # inside BEGIN READONLY: query_only is on
    next_baton: str | None = None  # what the request that has it answers with
    sqls: dict[int, str] = field(default_factory=dict)
    # connection pragmas its SQL set (tenants.sandbox.SESSION_PRAGMAS), kept while it lets go
    # of the handle between requests, so they never reach another request or stream
    pragmas: dict[str, int] = field(default_factory=dict)
    preempted: str | None = None  # why server work ended it (set under the registry's lock)
    on_preempt: Callable[[str], None] | None = None  # what it sets as `handle.preempt`


class Streams:
    """Every open stream of one server. Thread-safe."""

    def __init__(
        self,
        pool: Pool,
        idle_timeout: float,
        max_per_tenant: int,
        max_total: int,
        writable: Callable[[str], bool] = lambda tenant: True,
        before_use: Callable[[Handle], None] = lambda handle: None,
    ) -> None:
        self._pool, self._writable, self._before_use = pool, writable, before_use
        self.idle_timeout, self.max_per_tenant, self.max_total = idle_timeout, max_per_tenant, max_total
        self._key = secrets.token_bytes(32)
        # in clear in each baton (under its MAC): a baton of another process is told from a forged one
        self._tag = secrets.token_bytes(8)
        self._lock = threading.Lock()
        self._streams: dict[int, Stream] = {}
        self._per_tenant: dict[str, int] = {}
        self._expired: OrderedDict[int, tuple[str, str]] = OrderedDict()  # id -> (tenant, why)
        self._stop = threading.Event()
        self._wake = threading.Event()  # sweep now: a preempted stream came back from its request
        self._sweeper = threading.Thread(target=self._sweep_loop, name="hrana-stream-sweeper", daemon=True)
        self._sweeper.start()

    def __len__(self) -> int:
        return len(self._streams)

    # -- batons ----------------------------------------------------------------------------------

    def baton(self, stream: Stream) -> str:
        payload = _PAYLOAD.pack(self._tag, stream.id, stream.seq)
        mac = hmac.digest(self._key, payload, "sha256")[:_MAC_BYTES]
        return base64.urlsafe_b64encode(payload + mac).decode("ascii").rstrip("=")

    def _decode(self, baton: str) -> tuple[int, int]:
        try:
            raw = base64.urlsafe_b64decode(baton + "=" * (-len(baton) % 4))
        except (binascii.Error, ValueError):
            raise BatonInvalid("the baton is not one this server issued") from None
        payload, mac = raw[: _PAYLOAD.size], raw[_PAYLOAD.size :]
        expected = hmac.digest(self._key, payload, "sha256")[:_MAC_BYTES]
        if len(raw) != _PAYLOAD.size + _MAC_BYTES:
            raise BatonInvalid("the baton is not one this server issued")
        tag, stream_id, seq = _PAYLOAD.unpack(payload)
        if tag != self._tag:
            raise BatonInvalid(FOREIGN_BATON)
        if not hmac.compare_digest(mac, expected):
            raise BatonInvalid("the baton is not one this server issued")
        return stream_id, seq

    # -- registry (event loop) -------------------------------------------------------------------

    def open(self, tenant: str) -> Stream:
        """A new stream, taken. Raises TooManyStreams, StreamsExhausted."""
        with self._lock:
            if len(self._streams) >= self.max_total:
                raise StreamsExhausted(f"the server has {self.max_total} Hrana streams open")
            if self._per_tenant.get(tenant, 0) >= self.max_per_tenant:
                raise TooManyStreams(f"tenant {tenant!r} has {self.max_per_tenant} Hrana streams open")
            stream_id = secrets.randbits(64)
            while stream_id in self._streams or stream_id in self._expired:
                stream_id = secrets.randbits(64)
            stream = Stream(stream_id, tenant, secrets.randbits(64))
            stream.on_preempt = partial(self._preempt, stream)
            self._streams[stream_id] = stream
            self._per_tenant[tenant] = self._per_tenant.get(tenant, 0) + 1
        return stream

    def take(self, tenant: str, baton: str) -> Stream:
        """The stream `baton` names, taken for one request. Raises BatonInvalid, BatonReused,
        StreamExpired."""
        stream_id, seq = self._decode(baton)
        with self._lock:
            stream = self._streams.get(stream_id)
            if stream is None or stream.tenant != tenant:
                expired = self._expired.get(stream_id) if stream is None else None
                if expired is not None and expired[0] == tenant:
                    raise StreamExpired(expired[1])
                raise BatonInvalid("the baton names no open stream of this tenant")
            if stream.busy or stream.seq != seq:
                raise BatonReused("the baton was already used: send the one from the latest response")
            stream.busy = True
            stream.seq = (stream.seq + 1) & _MASK64
        return stream

    def retake(self, stream: Stream) -> None:
        """Take `stream` again for one request, without a baton: a WebSocket stream, which its
        connection names (and uses for one request at a time). Raises StreamExpired if it
        expired, was preempted or ended since."""
        with self._lock:
            if self._streams.get(stream.id) is not stream:
                expired = self._expired.get(stream.id)
                raise StreamExpired(expired[1] if expired is not None else "the stream has ended")
            stream.busy = True

    def give_back(self, stream: Stream) -> str | None:
        """End a request on `stream` (after `detach`): its next baton, or None if it closed."""
        with self._lock:
            if stream.closed:
                self._unregister(stream)
                return None
            stream.busy = False
            stream.deadline = time.monotonic() + self.idle_timeout
            if stream.preempted is not None:
                # preempted after its request let go of the handle: the sweeper ends it now
                stream.deadline = 0.0
                self._wake.set()
            return self.baton(stream)

    def _tombstone(self, stream: Stream) -> None:
        # caller holds self._lock; remembered so that a late client hears why
        if stream.preempted is not None:
            why = f"the stream was ended because {stream.preempted}; its transaction was rolled back"
        else:
            why = f"the stream expired after {self.idle_timeout:g} s idle; its transaction was rolled back"
        self._expired[stream.id] = (stream.tenant, why)
        if len(self._expired) > _TOMBSTONES:
            self._expired.popitem(last=False)

    def _unregister(self, stream: Stream) -> None:
        # caller holds self._lock
        if self._streams.pop(stream.id, None) is None:
            return
        left = self._per_tenant[stream.tenant] - 1
        if left:
            self._per_tenant[stream.tenant] = left
        else:
            del self._per_tenant[stream.tenant]

    # -- the tenant handle (worker threads) ------------------------------------------------------

    def attach(self, stream: Stream, readonly: bool) -> bool:
        """Pin and lock the stream's handle and set its access; whether the tenant is frozen
        (read-only for now, as `writable` says: e.g. its backup is too far behind). Raises what
        the pool raises (TenantNotFound, TenantBusy, ...), and StreamExpired for a stream that
        server work preempted or whose tenant is going away with its transaction open."""
        if stream.preempted is not None:
            raise StreamExpired(f"the stream was ended because {stream.preempted}")
        handle = stream.handle
        if handle is not None and handle.discarded:
            if stream.locked:  # its transaction dies with the handle: say why, let go (detach)
                raise StreamExpired(f"the stream was ended because {handle.discard_reason}")
            # The tenant was closed under this stream (restored, deleted): pin it afresh; the
            # pool then opens it again or says why it cannot.
            stream.handle = None
            self._pool.unpin(handle)
        if stream.handle is None:
            stream.handle = self._pool.pin(stream.tenant)
        if not stream.locked:
            self._pool.acquire(stream.handle)
            stream.locked = True
            stream.handle.preempt = stream.on_preempt
            try:
                self._before_use(stream.handle)  # the fleet's per-request work (a schema catch-up)
                stream.handle.apply_session(stream.pragmas)
            except BaseException:
                self._release(stream, stream.handle)
                raise
        frozen = not readonly and not self._writable(stream.tenant)
        stream.handle.set_query_only(readonly or frozen or stream.readonly_tx)
        return frozen

    def detach(self, stream: Stream) -> None:
        """After a request: keep the lock only while a transaction is open; a closed stream
        rolls back and lets go of its handle. Never raises for SQLite trouble."""
        handle = stream.handle
        if handle is None:
            return
        if stream.closed or stream.preempted is not None:
            self._dispose(stream)
        elif stream.locked and (handle.conn is None or handle.conn.get_autocommit()):
            self._release(stream, handle)

    def _release(self, stream: Stream, handle: Handle) -> None:
        try:
            stream.pragmas = handle.reset_session()
        except apsw.Error:
            log.exception("resetting the connection pragmas of tenant %s failed", stream.tenant)
        stream.locked = False
        if handle.preempt is stream.on_preempt:
            handle.preempt = None
        handle.lock.release()

    def _dispose(self, stream: Stream) -> None:
        handle, stream.handle = stream.handle, None
        if handle is None:
            return
        try:
            if stream.locked and handle.conn is not None and not handle.conn.get_autocommit():
                handle.conn.execute("ROLLBACK")
        except apsw.Error:
            log.exception("rolling back stream of tenant %s failed", stream.tenant)
        finally:
            if stream.locked:
                self._release(stream, handle)
            self._pool.unpin(handle)

    def _preempt(self, stream: Stream, reason: str, holders_only: bool = True) -> None:
        """`handle.preempt` of a stream holding its tenant's lock: end it for `reason`. An idle
        stream is rolled back and let go here and now; one in a request, when the request ends
        (`detach`, or the sweeper if the request had let go of the handle already). With
        `holders_only`, an idle stream that holds no lock (it let go meanwhile) is left alone."""
        with self._lock:
            if holders_only and not stream.busy and not stream.locked:
                return
            if stream.preempted is None:
                stream.preempted = reason
            idle = not stream.busy and self._streams.get(stream.id) is stream
            if idle:
                self._unregister(stream)
                self._tombstone(stream)
        if idle:
            log.info("hrana stream of tenant %s preempted: %s", stream.tenant, reason)
            self._dispose(stream)

    # -- expiry ----------------------------------------------------------------------------------

    def sweep(self) -> int:
        """Expire every stream idle past its deadline; how many expired."""
        now = time.monotonic()
        with self._lock:
            victims = [s for s in self._streams.values() if not s.busy and s.deadline <= now]
            for stream in victims:
                self._unregister(stream)
                self._tombstone(stream)
        for stream in victims:
            log.info(
                "hrana stream of tenant %s expired (transaction rolled back: %s)",
                stream.tenant,
                stream.locked,
            )
            self._dispose(stream)
        return len(victims)

    def _sweep_loop(self) -> None:
        interval = min(1.0, max(0.05, self.idle_timeout / 4))
        while not self._stop.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.sweep()
            except Exception:  # the sweeper must outlive one bad stream
                log.exception("sweeping hrana streams failed")

    def close(self) -> None:
        """Stop the sweeper; end every stream (preempted: the server is shutting down), idle
        ones rolled back and let go now, those in a request when it ends. Idempotent."""
        self._stop.set()
        self._wake.set()
        if self._sweeper.is_alive() and self._sweeper is not threading.current_thread():
            self._sweeper.join(5)
        with self._lock:
            streams = list(self._streams.values())
        for stream in streams:
            self._preempt(stream, "the server is shutting down", holders_only=False)
