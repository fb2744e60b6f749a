"""The one module that talks to etcd: a small typed adapter over aetcd's gRPC stubs.

aetcd (the maintained asyncio client) is imported here and nowhere else, and only when a node
joins a cluster. It has no types (no py.typed), no multi-endpoint connect, no keep-alive loop
and no watch reconnect; this adapter adds the first two, `cluster.membership` the keep-alive and
`cluster.mirror` the watch recovery. Requests are built as etcd's own protobuf messages so that
every call gets its own short timeout and its response header (the store revision).

An `Etcd` is bound to the event loop it was connected on (grpc.aio objects are); use it from
that loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

# grpc's fork handlers (on by default in this grpcio) run in every child this process forks, and
# sqlfleet forks with a preexec_fn (ops/process.py): a child forked while grpc's threads were busy
# died of SIGSEGV in threading._after_fork. No child of ours uses grpc: off, before grpc loads.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

import aetcd
import aetcd.rpc as rpc
import aetcd.utils

from cluster.errors import ClusterError, EtcdRequestError, EtcdUnavailable, LeaseNotFound, RevisionCompacted
from cluster.kv import Compare, Delete, Event, KeyValue, Lease, Listing, Op, Put, TxnResult

log = logging.getLogger(__name__)
T = TypeVar("T")


_TARGETS = {
    "create": rpc.Compare.CREATE,
    "mod": rpc.Compare.MOD,
    "version": rpc.Compare.VERSION,
    "value": rpc.Compare.VALUE,
}
# what a retry cannot fix: the request itself is wrong (or not allowed)
_REFUSED = {
    rpc.StatusCode.INVALID_ARGUMENT,
    rpc.StatusCode.OUT_OF_RANGE,
    rpc.StatusCode.PERMISSION_DENIED,
    rpc.StatusCode.UNAUTHENTICATED,
    rpc.StatusCode.UNIMPLEMENTED,
    rpc.StatusCode.FAILED_PRECONDITION,
}


def grpc_target(endpoints: Sequence[str]) -> str:
    """A gRPC target naming every endpoint (`http://h:p` or `h:p`), for round-robin balancing.
    gRPC takes several addresses only as literal IPs (`ipv4:a:p,b:p`), so host names are
    resolved here, once; one endpoint goes to gRPC's DNS resolver as it is. Raises
    EtcdUnavailable when a name does not resolve."""
    hosts: list[tuple[str, int]] = []
    for endpoint in endpoints:
        parts = urlsplit(endpoint if "//" in endpoint else f"//{endpoint}")
        hosts.append((parts.hostname or "127.0.0.1", parts.port or 2379))
    if len(hosts) == 1:
        host, port = hosts[0]
        return f"{host}:{port}"
    addresses: list[str] = []
    for host, port in hosts:
        try:
            infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
        except OSError as e:
            raise EtcdUnavailable(f"cannot resolve etcd endpoint {host}: {e}") from None
        addresses.extend(f"{info[4][0]}:{port}" for info in infos[:1])
    return "ipv4:" + ",".join(addresses)


class _Client(aetcd.Client):  # type: ignore[misc]  # untyped base
    """aetcd's client with a whole gRPC target instead of one host:port (its `connect` joins
    host and port with a colon, so the target is split at its last one)."""

    def __init__(self, target: str, timeout: float, options: dict[str, Any]) -> None:
        host, _, port = target.rpartition(":")
        super().__init__(host=host, port=int(port), timeout=timeout, options=options)


class Etcd:
    """A connection to an etcd cluster. Every call has `call_timeout` seconds per attempt;
    calls that may be retried are, on another member when there are several, until
    `retry_for` seconds have passed. Raises (all `ClusterError`): EtcdUnavailable,
    LeaseNotFound, EtcdRequestError, RevisionCompacted (watches)."""

    def __init__(self, client: Any, call_timeout: float, retry_for: float) -> None:
        self._client = client
        self.call_timeout = call_timeout
        self.retry_for = retry_for

    @classmethod
    async def connect(cls, endpoints: Sequence[str], *, call_timeout: float, retry_for: float) -> Etcd:
        options = {
            "grpc.lb_policy_name": "round_robin",
            # a member that stops answering (paused, partitioned) is noticed by transport pings,
            # so a watch stream on it fails over; etcd answers pings more often than every 5 s,
            # or any without a call in flight, with GOAWAY
            "grpc.keepalive_time_ms": 10_000,
            "grpc.keepalive_timeout_ms": 3_000,
            "grpc.keepalive_permit_without_calls": 0,
            "grpc.max_receive_message_length": 64 << 20,
            "grpc.initial_reconnect_backoff_ms": 100,
            "grpc.max_reconnect_backoff_ms": 1_000,
        }
        client = _Client(grpc_target(endpoints), max(2.0, call_timeout), options)
        await _translated(client.connect())
        return cls(client, call_timeout, retry_for)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._client.close()

    # -- leases --------------------------------------------------------------------------------

    async def grant(self, ttl: int) -> Lease:
        reply = await self._call(
            lambda t: self._client.leasestub.LeaseGrant(rpc.LeaseGrantRequest(TTL=ttl), timeout=t)
        )
        return Lease(reply.ID, reply.TTL)

    async def keepalive(self, lease_id: int, *, timeout: float | None = None) -> int:
        """One keep-alive, one attempt: the lease's TTL from now, 0 when it is gone."""

        async def once(t: float) -> int:
            stream = self._client.leasestub.LeaseKeepAlive(
                [rpc.LeaseKeepAliveRequest(ID=lease_id)], timeout=t
            )
            async for reply in stream:
                return int(reply.TTL)
            return 0

        return await _translated(once(timeout or self.call_timeout))

    async def revoke(self, lease_id: int) -> None:
        """Revoke the lease (its keys go at once). Idempotent: a lease already gone is fine."""
        with contextlib.suppress(LeaseNotFound):
            await self._call(
                lambda t: self._client.leasestub.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease_id), timeout=t)
            )

    # -- keys ----------------------------------------------------------------------------------

    async def get(self, key: bytes) -> tuple[KeyValue | None, int]:
        """The key (None when absent) and the store revision of the read."""
        reply = await self._call(lambda t: self._client.kvstub.Range(rpc.RangeRequest(key=key), timeout=t))
        kvs = [_kv(kv) for kv in reply.kvs]
        return (kvs[0] if kvs else None), int(reply.header.revision)

    async def get_prefix(self, prefix: bytes) -> Listing:
        end = aetcd.utils.prefix_range_end(prefix)
        reply = await self._call(
            lambda t: self._client.kvstub.Range(rpc.RangeRequest(key=prefix, range_end=end), timeout=t)
        )
        return Listing(int(reply.header.revision), tuple(_kv(kv) for kv in reply.kvs))

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        """Write `key`; the commit revision. Retried (a put is idempotent)."""
        reply = await self._call(
            lambda t: self._client.kvstub.Put(rpc.PutRequest(key=key, value=value, lease=lease), timeout=t)
        )
        return int(reply.header.revision)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
        *,
        retry: bool = True,
    ) -> TxnResult:
        """One transaction (etcd allows 128 compares and 128 operations per branch). With
        `retry`, a transaction whose reply was lost runs again: its guards must make that safe
        (a second run of a create-if-absent fails, and its failure branch shows what is there)."""
        request = rpc.TxnRequest(
            compare=[_compare(c) for c in compares],
            success=[_op(o) for o in success],
            failure=[_op(o) for o in failure],
        )
        reply = await self._call(lambda t: self._client.kvstub.Txn(request, timeout=t), retry=retry)
        gets = tuple(
            tuple(_kv(kv) for kv in r.response_range.kvs)
            for r in reply.responses
            if r.WhichOneof("response") == "response_range"
        )
        return TxnResult(bool(reply.succeeded), int(reply.header.revision), gets)

    async def compact(self, revision: int) -> None:
        await self._call(
            lambda t: self._client.kvstub.Compact(rpc.CompactionRequest(revision=revision), timeout=t)
        )

    # -- watches -------------------------------------------------------------------------------

    async def watch_prefix(
        self, prefix: bytes, start_revision: int, on_created: Callable[[], None] | None = None
    ) -> AsyncGenerator[list[Event], None]:
        """Every change under `prefix` from `start_revision` (inclusive) on, in revision order,
        one list per etcd response (a transaction's changes come together), until the stream
        breaks: EtcdUnavailable (watch again from the last event's revision + 1) or
        RevisionCompacted (list again). Closing the generator cancels the watch. `on_created`
        is called once etcd confirmed the watch (it is reachable again, for a quiet prefix too).

        A stream of its own on etcd's Watch RPC rather than aetcd's shared watcher: this way
        events arrive in batches, and a failed create reports compaction rather than a timeout."""
        create = rpc.WatchRequest(
            create_request=rpc.WatchCreateRequest(
                key=prefix, range_end=aetcd.utils.prefix_range_end(prefix), start_revision=start_revision
            )
        )
        done = asyncio.Event()

        async def requests() -> AsyncIterator[Any]:
            yield create
            await done.wait()  # the request side stays open as long as the watch

        call = rpc.WatchStub(self._client.channel).Watch(requests())
        try:
            responses = call.__aiter__()
            while True:
                try:
                    response = await _translated(responses.__anext__())
                except StopAsyncIteration:
                    raise EtcdUnavailable("etcd watch stream ended") from None
                if response.compact_revision:
                    raise RevisionCompacted(int(response.compact_revision))
                if response.canceled:
                    raise EtcdUnavailable(f"etcd cancelled the watch: {response.cancel_reason}")
                if response.created and on_created is not None:
                    on_created()
                if response.events:
                    yield [_event(e) for e in response.events]
        finally:
            done.set()
            call.cancel()

    # -- calls ---------------------------------------------------------------------------------

    async def _call(self, call: Callable[[float], Awaitable[T]], *, retry: bool = True) -> T:
        deadline = time.monotonic() + self.retry_for
        pause = 0.02
        while True:
            try:
                return await _translated(call(self.call_timeout))
            except EtcdUnavailable:
                if not retry or time.monotonic() + pause > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.25)


async def _translated(awaitable: Awaitable[T]) -> T:
    """Await, turning gRPC's and aetcd's generic errors into ours (by status code: aetcd has no
    class for a missing lease, for one)."""
    try:
        return await awaitable
    except ClusterError:
        raise
    except rpc.AioRpcError as e:
        raise _from_status(e.code(), e.details() or "") from e
    except aetcd.RevisionCompactedError as e:
        raise RevisionCompacted(int(e.compacted_revision)) from e
    except (aetcd.ConnectionFailedError, aetcd.ConnectionTimeoutError, aetcd.WatchTimeoutError) as e:
        raise EtcdUnavailable(f"no etcd member answered ({e})") from e
    except aetcd.ClientError as e:
        cause = e.__cause__
        if isinstance(cause, rpc.AioRpcError):
            raise _from_status(cause.code(), cause.details() or "") from e
        raise EtcdUnavailable(f"etcd: {e}") from e
    except (TimeoutError, ConnectionError) as e:
        raise EtcdUnavailable(f"no etcd member answered ({e!r})") from e


def _from_status(code: Any, details: str) -> ClusterError:
    if code == rpc.StatusCode.NOT_FOUND and "lease" in details:
        return LeaseNotFound(details)
    if code in _REFUSED:
        return EtcdRequestError(f"etcd refused the request: {details}")
    # unavailable, deadline exceeded, and what a busy or electing cluster answers with other
    # codes ("context deadline exceeded", "leader changed", "too many requests"): try again
    # the cause alone: whoever logs it says "etcd unreachable" (cluster.membership), never twice
    return EtcdUnavailable(f"etcd could not answer now ({details})")


def _event(event: Any) -> Event:
    kv = event.kv
    if event.type == rpc.Event.PUT:
        return Event(bytes(kv.key), _kv(kv), int(kv.mod_revision))
    return Event(bytes(kv.key), None, int(kv.mod_revision))


def _kv(kv: Any) -> KeyValue:
    return KeyValue(
        bytes(kv.key), bytes(kv.value), int(kv.create_revision), int(kv.mod_revision), int(kv.lease)
    )


def _compare(c: Compare) -> Any:
    message = rpc.Compare(key=c.key, result=rpc.Compare.EQUAL, target=_TARGETS[c.target])
    if c.target == "create":
        message.create_revision = int(c.value)
    elif c.target == "mod":
        message.mod_revision = int(c.value)
    elif c.target == "version":
        message.version = int(c.value)
    else:
        message.value = bytes(c.value) if isinstance(c.value, bytes) else str(c.value).encode()
    return message


def _op(op: Op) -> Any:
    if isinstance(op, Put):
        return rpc.RequestOp(request_put=rpc.PutRequest(key=op.key, value=op.value, lease=op.lease))
    if isinstance(op, Delete):
        return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=op.key))
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=op.key))
