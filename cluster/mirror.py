"""A watched copy of every key under one etcd prefix, kept on a node's cluster loop.

List at revision R, watch from R + 1; when the stream breaks, watch again from the last event's
revision + 1 (so nothing is missed or seen twice); when etcd has compacted that revision away,
list again and report the difference. Only code on the loop reads it (`current()`); listeners
build what other threads read (the routing table, the owned slots).

While etcd is down a watch is retried up to once a second: the first failure of an outage is
logged (info), the retries of the same outage at debug, and its end (etcd confirmed a watch, or
a listing came back) once more at info. A node has a mirror per prefix: every second, each of
them would otherwise log a line for the same outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from cluster.errors import ClusterError, EtcdUnavailable, RevisionCompacted
from cluster.kv import Event, KeyValue

if TYPE_CHECKING:
    from cluster.etcd import Etcd

log = logging.getLogger(__name__)

# A listener gets each batch of changes, (key, new value or None when deleted), and the store
# revision they bring the mirror to, on the loop.
Listener = Callable[[list[tuple[bytes, KeyValue | None]], int], None]


class PrefixMirror:
    """Runs as a task on the loop of `etcd`; `synced` is set once the first listing is in."""

    def __init__(self, etcd: Etcd, prefix: bytes) -> None:
        self.prefix = prefix
        self._etcd = etcd
        self._data: dict[bytes, KeyValue] = {}
        self._listeners: list[Listener] = []
        self._revision_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.revision = 0  # every change up to this store revision is in `_data`
        self.synced = asyncio.Event()
        self.resyncs = 0  # listings after the first (compaction)
        self.reconnects = 0  # watches started again after a broken stream
        self._down = False  # an outage was logged and has not ended yet

    def current(self) -> Mapping[bytes, KeyValue]:
        """The keys as of `revision`, for code on the loop. Do not keep it across awaits."""
        return self._data

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def wait_revision(self, revision: int) -> None:
        """Return once every change up to `revision` is in (e.g. after our own write)."""
        if self.revision >= revision:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._revision_waiters.append((revision, future))
        await future

    async def run(self) -> None:
        """List and watch until cancelled; etcd being unreachable only delays it."""
        pause = 0.05
        while True:
            try:
                await self._relist()
                self._up()
                while True:
                    try:
                        watch = self._etcd.watch_prefix(self.prefix, self.revision + 1, self._up)
                        async for events in watch:
                            self._apply(events)
                            pause = 0.05
                    except EtcdUnavailable as e:
                        self.reconnects += 1
                        self._failed("watch of %r broke (%s); watching again from %d", e, self.revision + 1)
                        await asyncio.sleep(pause)
                        pause = min(pause * 2, 1.0)
            except RevisionCompacted:
                self.resyncs += 1
                log.info("watch of %r fell behind compaction; listing again", self.prefix)
            except ClusterError as e:  # unreachable while listing, or refused: list again
                self._failed("listing %r failed (%s); trying again", e)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)

    def _failed(self, message: str, error: ClusterError, *more: object) -> None:
        """Log a failure at info once per outage, its retries at debug (see the module doc)."""
        if self._down:
            log.debug(message, self.prefix, error, *more)
            return
        self._down = True
        log.info(
            message + " (until it works again, retries are logged at debug level)", self.prefix, error, *more
        )

    def _up(self) -> None:
        if self._down:
            self._down = False
            log.info("watch of %r works again", self.prefix)

    async def _relist(self) -> None:
        listing = await self._etcd.get_prefix(self.prefix)
        fresh = {kv.key: kv for kv in listing.kvs}
        changed: list[tuple[bytes, KeyValue | None]] = [
            (key, None) for key in self._data.keys() - fresh.keys()
        ]
        changed += [(key, kv) for key, kv in fresh.items() if self._data.get(key) != kv]
        self._data = fresh
        self._advance(listing.revision, changed)
        self.synced.set()

    def _apply(self, events: list[Event]) -> None:
        changed: list[tuple[bytes, KeyValue | None]] = []
        for event in events:
            if event.kv is None:
                self._data.pop(event.key, None)
            else:
                self._data[event.key] = event.kv
            changed.append((event.key, event.kv))
        self._advance(max(e.revision for e in events), changed)

    def _advance(self, revision: int, changed: list[tuple[bytes, KeyValue | None]]) -> None:
        self.revision = max(self.revision, revision)
        if changed:
            for listener in self._listeners:
                try:
                    listener(changed, self.revision)
                except Exception:
                    log.exception("mirror listener failed")
        still = []
        for wanted, future in self._revision_waiters:
            if self.revision >= wanted:
                if not future.done():
                    future.set_result(None)
            else:
                still.append((wanted, future))
        self._revision_waiters = still

    def close(self) -> None:
        for _, future in self._revision_waiters:
            with contextlib.suppress(asyncio.InvalidStateError):
                future.cancel()
