"""A node's membership: its lease, `nodes/<id>` on it, and the proof that it may still serve.

The node runs a thread of its own with its own event loop (the "cluster loop"), so that a busy or
blocked server loop never delays a keep-alive; the controller, the slot claims and the routing
watches of this node run on that loop too. Other threads read plain attributes swapped whole.

Self-fencing: a keep-alive sent at monotonic time t and answered with TTL d proves the lease
alive until t + d (etcd counts from when it received it, later). The node serves while
`monotonic() < t + d - margin`; it does not wait for etcd to say the lease is gone. On a TTL of 0
(the lease expired or was revoked) it stops at once, tells `on_lease_lost`, and joins again with
a new lease, which is a new incarnation.

One node id, one live node: `nodes/<id>` is created only where absent. A key held by this node's
own previous life (its `process` is the one the data dir last ran as, and the data dir's lock,
taken before joining, proves that process dead) is replaced at once; one held by anyone else is
waited for at most two lease TTLs (a killed node's key goes with its lease), then the start is
refused (NodeIdInUse): a second process with a live node's id must not take that node's place.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from cluster.config import ClusterConfig
from cluster.errors import ClusterError, EtcdUnavailable, LeaseNotFound, NodeIdInUse, NotServing
from cluster.kv import Compare, Get, KeyValue, Put
from tenants.rfc3339 import format_time

if TYPE_CHECKING:
    from cluster.etcd import Etcd
    from cluster.kv import Lease
    from cluster.mirror import PrefixMirror

log = logging.getLogger(__name__)
T = TypeVar("T")

REJOIN_CHECK = 5.0  # seconds `before_rejoin` may take
# Seconds past the lease TTL a starting node waits for `nodes/<id>` held by another to vanish: a
# killed holder's lease runs out within the TTL of its last keep-alive; etcd's expiry is not exact.
ID_WAIT_MARGIN = 2.0
ID_POLL = 0.25  # seconds between looks at a held `nodes/<id>`


class Node:
    """This process as a member of the cluster of `config`.

    `start()` joins (raises EtcdUnavailable if etcd does not answer within `join_timeout`, by default
    `config.join_timeout`);
    `stop()` leaves (revokes the lease: its keys, slots included, go at once). `alive()`,
    `why_not_serving()`, `incarnation` and `valid_until` are safe to read from any thread.
    `on_lease_lost(reason)` runs on the cluster thread: keep it short, never block.
    `before_rejoin()` runs in a worker thread before the node joins again after losing its
    lease: False keeps it out (the server's: another node took it over meanwhile).
    `previous_process`: the process incarnation this node's data dir last ran as (read while
    the data dir's lock proves that process dead), whose `nodes/<id>` `start()` replaces at once;
    `start()` raises NodeIdInUse when another live node holds `nodes/<id>`."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        on_lease_lost: Callable[[str], None] | None = None,
        before_rejoin: Callable[[], bool] | None = None,
        join_timeout: float | None = None,
        previous_process: str | None = None,
    ) -> None:
        self.config = config
        self.keys = config.keys
        self.node_id = config.node_id
        self._on_lease_lost = on_lease_lost
        self._before_rejoin = before_rejoin
        self._join_timeout = config.join_timeout if join_timeout is None else join_timeout
        self._previous_process = previous_process
        self.valid_until = 0.0
        self.incarnation: str | None = None
        # the incarnation of the first lease: this process's segments are written under it
        # (a lease lost and granted again makes a new incarnation, not a new writer)
        self.process_incarnation: str | None = None
        self._lease: Lease | None = None
        self._lease_lost = False
        self._unreachable_since: float | None = None  # wall clock, for people
        self._stopping = False
        self.keepalives_paused = False  # fault injection for tests: keep-alives are not sent
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"cluster-{self.node_id}", daemon=True
        )
        self._tasks: list[asyncio.Task[Any]] = []
        self._mirrors: dict[bytes, PrefixMirror] = {}
        self._etcd: Etcd | None = None
        self._lease_changed = asyncio.Event()  # replaced on each change; bound on first wait
        self._lease_listeners: list[Callable[[], None]] = []

    # -- any thread ----------------------------------------------------------------------------

    def alive(self) -> bool:
        """Whether the lease is provably alive right now (one float compare)."""
        return time.monotonic() < self.valid_until

    def why_not_serving(self) -> str | None:
        """None while alive; else why, for /readyz."""
        if self.alive():
            return None
        if self._stopping:
            return "left the cluster"
        if self._unreachable_since is not None:
            return f"etcd unreachable since {format_time(self._unreachable_since)}"
        if self._lease_lost:
            return "etcd lease lost"
        if self._lease is None:
            return "not registered with etcd yet"
        return "etcd lease not renewed in time"

    def check(self) -> None:
        """Raise NotServing (with the reason) unless alive."""
        reason = self.why_not_serving()
        if reason is not None:
            raise NotServing(reason)

    def run(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run `coro` on the cluster loop; its result through the returned future."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run `coro` on the cluster loop and wait for its result (not from the loop itself)."""
        return self.run(coro).result(timeout)

    def start(self) -> None:
        self._thread.start()
        # on top of reaching etcd: the wait for a `nodes/<id>` held by another to vanish
        budget = self._join_timeout + self.id_wait
        try:
            try:
                self.call(asyncio.wait_for(self._join(), budget), budget + 5)
            except TimeoutError:
                raise EtcdUnavailable(
                    f"could not join through etcd at {', '.join(self.config.endpoints)} within "
                    f"{self._join_timeout:g} s"
                ) from None
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Leave: stop every task, revoke the lease, close the connection, end the thread.
        Idempotent."""
        if self._thread.ident is None:  # never started
            self._loop.close()
            return
        if not self._thread.is_alive():
            return
        self._stopping = True
        self.valid_until = 0.0
        try:
            self.call(self._leave(), 10)
        except Exception:
            log.exception("leaving the cluster failed")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    # -- the cluster loop ------------------------------------------------------------------------

    @property
    def id_wait(self) -> float:
        """Seconds `start()` waits at most for `nodes/<id>` held by another to vanish: twice the
        TTL and a margin (etcd expires leases late on a busy machine; a refusal may come late)."""
        return 2 * self.config.lease_ttl + ID_WAIT_MARGIN

    @property
    def etcd(self) -> Etcd:
        if self._etcd is None:
            raise NotServing("not connected to etcd")
        return self._etcd

    @property
    def lease(self) -> Lease | None:
        """The current lease (None between losing one and getting the next)."""
        return self._lease

    async def next_lease(self, after: Lease | None) -> Lease:
        """Wait until the lease is another than `after` (a new incarnation), and return it."""
        while self._lease is None or self._lease == after:
            await self._lease_changed.wait()
        return self._lease

    def mirror(self, prefix: bytes) -> PrefixMirror:
        """The node's one watched copy of `prefix` (started on first use)."""
        from cluster.mirror import PrefixMirror

        if prefix not in self._mirrors:
            mirror = PrefixMirror(self.etcd, prefix)
            self._mirrors[prefix] = mirror
            self.spawn(mirror.run(), f"mirror {prefix!r}")
        return self._mirrors[prefix]

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run `coro` on the cluster loop until the node stops; a crash is logged."""
        task = self._loop.create_task(coro, name=name)
        task.add_done_callback(_log_crash)
        self._tasks.append(task)
        return task

    async def _join(self) -> None:
        from cluster.etcd import Etcd  # the grpc import happens here, only in cluster mode

        cfg = self.config
        self._etcd = await Etcd.connect(
            cfg.endpoints, call_timeout=cfg.call_timeout, retry_for=self._join_timeout
        )
        await self._register(wait=self.id_wait)
        self._etcd.retry_for = cfg.call_timeout * 2  # after joining, callers retry at their own pace
        self.spawn(self._keep_alive(), "keepalive")

    async def _register(self, wait: float = 0.0) -> None:
        """Grant a lease, bind `nodes/<id>` to it (unless another live node holds it: waited for
        at most `wait` seconds, then NodeIdInUse), and publish it."""
        etcd = self.etcd
        key = self.keys.node(self.node_id)
        deadline = time.monotonic() + wait
        while True:
            sent = time.monotonic()
            lease = await etcd.grant(self.config.lease_ttl)
            incarnation = f"{lease.id:x}"
            process = self.process_incarnation or incarnation
            value = json.dumps(
                {"url": self.config.node_url, "incarnation": incarnation, "process": process}
            ).encode()
            puts = [
                Put(key, value, lease.id),
                Put(self.keys.incarnation(self.node_id), json.dumps(process).encode()),
            ]
            try:
                held = await self._claim_id(key, puts, incarnation)
            except BaseException:
                await asyncio.shield(_quietly(etcd.revoke(lease.id)))
                raise
            if held is None:
                break
            await _quietly(etcd.revoke(lease.id))  # a new one next time: this one would run out
            if time.monotonic() >= deadline:
                raise NodeIdInUse(
                    f"node id {self.node_id} is in use by a live node at {_url_of(held)}: give this "
                    "node an id of its own (or stop that one first)"
                )
            log.info(
                "node %s: its id is held by the node at %s; waiting for it to go", self.node_id, _url_of(held)
            )
            await self._vanished(key, held, deadline)
        self.incarnation = incarnation
        self.process_incarnation = process
        self._lease = lease
        self._lease_lost = False
        self._unreachable_since = None
        self.valid_until = sent + lease.ttl - self.config.margin
        log.info("node %s joined as incarnation %s (TTL %d s)", self.node_id, incarnation, lease.ttl)
        self._signal_lease_change()

    async def _claim_id(self, key: bytes, puts: list[Put], incarnation: str) -> KeyValue | None:
        """Run `puts` if `key` is absent or this node's own (its previous life's, or this
        process's), and return None; else return the key as another node holds it."""
        etcd = self.etcd
        result = await etcd.txn([Compare.absent(key)], puts, [Get(key)])
        while not result.succeeded:
            found = result.gets[0]
            if not found:  # gone meanwhile
                result = await etcd.txn([Compare.absent(key)], puts, [Get(key)])
                continue
            held = found[0]
            record = _record(held)
            if record.get("incarnation") == incarnation:
                return None  # ours: the reply to a first try was lost and the txn ran again
            own = {self._previous_process, self.process_incarnation} - {None}
            if record.get("process") not in own:
                return held
            log.info("node %s replaces the registration of its own previous life", self.node_id)
            result = await etcd.txn([Compare(key, "mod", held.mod_revision)], puts, [Get(key)])
        return None

    async def _vanished(self, key: bytes, held: KeyValue, deadline: float) -> None:
        """Return once `key` is no longer `held` (gone or rewritten), or at `deadline`."""
        while time.monotonic() < deadline:
            await asyncio.sleep(min(ID_POLL, max(0.0, deadline - time.monotonic())))
            now, _ = await self.etcd.get(key)
            if now is None or now.mod_revision != held.mod_revision:
                return

    def on_lease_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` (on the loop) whenever the lease is lost or a new one is in."""
        self._lease_listeners.append(listener)

    def _signal_lease_change(self) -> None:
        self._lease_changed.set()
        self._lease_changed = asyncio.Event()
        for listener in self._lease_listeners:
            listener()

    async def _keep_alive(self) -> None:
        while True:
            try:
                await self._keep_alive_once()
            except Exception:  # never let the keep-alive die: the node would stop serving for good
                log.exception("keep-alive failed")
                await asyncio.sleep(self.config.call_timeout)

    async def _keep_alive_once(self) -> None:
        """One turn: a keep-alive (or a new lease), then the wait until the next."""
        cfg = self.config
        lease = self._lease
        if lease is None:
            if self._lease_lost and not await self._may_rejoin():
                await asyncio.sleep(cfg.keepalive_interval)
                return
            try:
                await self._register()
            except NodeIdInUse as e:  # another took this id while the lease was lost: not ours now
                log.warning("node %s: %s", self.node_id, e)
                await asyncio.sleep(cfg.lease_ttl)  # a look (and a line) a TTL: it may go any time
            except ClusterError as e:
                self._note_unreachable(e)
                await asyncio.sleep(cfg.call_timeout / 2)
            return
        if self.keepalives_paused:
            await asyncio.sleep(cfg.keepalive_interval / 4)
            return
        sent = time.monotonic()
        try:
            ttl = await self.etcd.keepalive(lease.id)
        except LeaseNotFound:
            ttl = 0
        except ClusterError as e:
            self._note_unreachable(e)
            # again soon: another member may answer, and the lease is running out
            await asyncio.sleep(min(cfg.keepalive_interval, cfg.call_timeout / 2))
            return
        if ttl <= 0:
            self._lose_lease("etcd lease lost")
            return
        self._unreachable_since = None
        self.valid_until = max(self.valid_until, sent + ttl - cfg.margin)
        await asyncio.sleep(max(0.0, sent + cfg.keepalive_interval - time.monotonic()))

    async def _may_rejoin(self) -> bool:
        """`before_rejoin()` in a thread, at most REJOIN_CHECK seconds: whether to join again
        after losing the lease (the server says no once another node took this one over). If
        it cannot tell in time, yes: the server checks again once joined, serving nothing meanwhile."""
        if self._before_rejoin is None:
            return True
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._before_rejoin), REJOIN_CHECK)
        except Exception as e:
            log.info("node %s: joining again without knowing whether it may (%r)", self.node_id, e)
            return True

    def _note_unreachable(self, error: Exception) -> None:
        if self._unreachable_since is None:
            self._unreachable_since = time.time()
            log.warning("node %s: etcd unreachable: %s", self.node_id, error)

    def _lose_lease(self, reason: str) -> None:
        self.valid_until = 0.0
        self._lease = None
        self._lease_lost = True
        self.incarnation = None
        log.warning("node %s: %s; joining again with a new lease", self.node_id, reason)
        self._signal_lease_change()
        if self._on_lease_lost is not None:
            try:
                self._on_lease_lost(reason)
            except Exception:
                log.exception("on_lease_lost failed")

    async def _leave(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.valid_until = 0.0  # again: a keep-alive may have answered since `stop` set it
        for mirror in self._mirrors.values():
            mirror.close()
        if self._etcd is not None:
            if self._lease is not None:
                await _quietly(self._etcd.revoke(self._lease.id))
                self._lease = None
            await self._etcd.close()
        # grpc's own tasks for the closed calls: done here, not destroyed pending with the loop
        others = asyncio.all_tasks() - {asyncio.current_task()}
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)


def _record(kv: KeyValue) -> dict[str, Any]:
    """A `nodes/<id>` value as written by `_register` ({} if it is not one)."""
    try:
        record = json.loads(kv.value)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _url_of(kv: KeyValue) -> str:
    return str(_record(kv).get("url", "an unknown URL"))


async def _quietly(coro: Coroutine[Any, Any, Any]) -> None:
    try:
        await coro
    except Exception as e:
        log.info("ignored: %r", e)


def _log_crash(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("cluster task %s crashed", task.get_name(), exc_info=task.exception())
