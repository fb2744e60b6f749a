"""The controller: one node, elected through etcd, writes `assign/<slot>` for every slot.

Election: `controller` absent → put it on the node's own lease (a controller that loses its lease
loses the office with it); the key's create_revision is the controller's epoch. Every write the
controller makes is a transaction guarded by `create_revision(controller) == epoch`, so a deposed
or paused controller writes nothing, whatever it believes.

It watches `nodes/` and assigns slots to the live nodes by rendezvous hashing, writing only the
`assign/` keys that change, at most 128 to a transaction. A node that leaves keeps its slots for
`grace` seconds first (0 here; issue 17's takeover gives a restarted node time to come back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping

from cluster.errors import ClusterError, ControllerDeposed
from cluster.keys import decode_assign, encode_assign
from cluster.kv import Compare, Get, Lease, Put
from cluster.membership import Node
from cluster.mirror import PrefixMirror
from cluster.slots import assignment, changes

log = logging.getLogger(__name__)

TXN_OPS = 128  # etcd's default --max-txn-ops
WRITES_IN_FLIGHT = 4


class Controller:
    """Campaigns for and, once elected, acts as the cluster's controller. `epoch` (None unless
    this node is the controller) is safe to read from any thread."""

    def __init__(self, node: Node, *, grace: float = 0.0) -> None:
        if grace < 0:
            raise ValueError("grace must not be negative")
        self.node = node
        self.keys = node.keys
        self.grace = grace
        self.epoch: int | None = None
        self._departed: dict[str, float] = {}  # node → monotonic time its slots may move
        self._wake = asyncio.Event()
        self._quiet_since = 0.0  # monotonic time of the last change under nodes/ (or of the start)
        self._unsettled_since: float | None = None  # first change not yet acted on
        self.writes = 0  # assign keys written, for tests and metrics

    def is_leader(self) -> bool:
        return self.epoch is not None and self.node.alive()

    def start(self) -> None:
        self.node.call(self._attach())

    async def _attach(self) -> None:
        nodes = self.node.mirror(self.keys.nodes)
        assigns = self.node.mirror(self.keys.assigns)
        office = self.node.mirror(self.keys.controller)
        drains = self.node.mirror(self.keys.drains)
        nodes.listen(lambda changed, revision: self._nodes_changed())
        drains.listen(lambda changed, revision: self._nodes_changed())
        office.listen(lambda changed, revision: self._wake.set())
        self._nodes_changed()
        self.node.on_lease_change(self._wake.set)
        self.node.spawn(self._run(nodes, assigns, office, drains), "controller")

    def _nodes_changed(self) -> None:
        now = time.monotonic()
        self._quiet_since = now
        if self._unsettled_since is None:
            self._unsettled_since = now
        self._wake.set()

    async def _run(
        self, nodes: PrefixMirror, assigns: PrefixMirror, office: PrefixMirror, drains: PrefixMirror
    ) -> None:
        for mirror in (nodes, assigns, office, drains):
            await mirror.synced.wait()
        pause = 0.05
        while True:
            self._wake.clear()
            timeout: float | None = None
            try:
                lease = self.node.lease
                self.epoch = await self._campaign(lease, office) if lease is not None else None
                if self.epoch is not None:
                    timeout = await self._assign(self.epoch, nodes, assigns, drains)
                pause = 0.05
            except ControllerDeposed:
                # our view of the office is behind: look again once the watch has caught up
                self.epoch = None
                timeout = pause
                pause = min(pause * 2, 1.0)
            except ClusterError as e:
                log.info("controller: %s; trying again", e)
                timeout = pause
                pause = min(pause * 2, 1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _campaign(self, lease: Lease, office: PrefixMirror) -> int | None:
        """The epoch if this node holds the office (winning it if it is free), else None."""
        held = office.current().get(self.keys.controller)
        if held is not None:
            return held.create_revision if held.lease == lease.id else None
        key = self.keys.controller
        result = await self.node.etcd.txn(
            [Compare.absent(key)], [Put(key, encode_assign(self.node.node_id), lease.id)], [Get(key)]
        )
        if result.succeeded:
            log.info("node %s is the controller (epoch %d)", self.node.node_id, result.revision)
            await office.wait_revision(result.revision)
            return result.revision
        current = result.gets[0][0] if result.gets and result.gets[0] else None
        return current.create_revision if current is not None and current.lease == lease.id else None

    async def _assign(
        self, epoch: int, nodes: PrefixMirror, assigns: PrefixMirror, drains: PrefixMirror
    ) -> float | None:
        """Write what changed; the seconds until it should look again (membership still
        settling, or a departed node's grace running), None when nothing is pending."""
        now = time.monotonic()
        settle = self.node.config.membership_settle
        if self._unsettled_since is not None:
            # nodes come and go in bursts (a cluster starting, a rolling restart): act once the
            # burst is over, or after 4 settle periods at the latest, not once per node
            quiet_at = self._quiet_since + settle
            if now < quiet_at and now < self._unsettled_since + 4 * settle:
                return min(quiet_at, self._unsettled_since + 4 * settle) - now
            self._unsettled_since = None
        live = {self.keys.name_in(k, self.keys.nodes) for k in nodes.current()}
        current = {
            self.keys.slot_in(k, self.keys.assigns): decode_assign(kv.value)
            for k, kv in assigns.current().items()
        }
        assigned = set(current.values())
        for gone in assigned - live:
            self._departed.setdefault(gone, now + self.grace)
        # forget a node once it is back or holds no slot any more
        self._departed = {n: t for n, t in self._departed.items() if n in assigned and n not in live}
        waiting = {n: t for n, t in self._departed.items() if t > now}
        draining = {self.keys.name_in(k, self.keys.drains) for k in drains.current()}
        # a draining node gets no slot, unless every node drains (the slots must live somewhere)
        effective = (live | waiting.keys()) - draining or live | waiting.keys()
        if not effective:
            return None
        wanted = changes(current, assignment(effective))
        if wanted:
            revision = await self.write(wanted, epoch)
            await assigns.wait_revision(revision)
        return min(waiting.values()) - now if waiting else None

    async def write(self, assignments: Mapping[int, str], epoch: int) -> int:
        """Write `assign/<slot>` = node for each of `assignments` as controller of `epoch`, in
        transactions of at most 128 puts; the last commit revision. Raises ControllerDeposed
        (and writes nothing more) once `epoch` is not the office's. Runs on the cluster loop."""
        key = self.keys.controller
        items = sorted(assignments.items())
        chunks = iter([items[i : i + TXN_OPS] for i in range(0, len(items), TXN_OPS)])
        revisions = [0]

        async def writer() -> None:  # a few transactions in flight hide etcd's round trips
            for chunk in chunks:
                puts = [Put(self.keys.assign(s), encode_assign(n)) for s, n in chunk]
                result = await self.node.etcd.txn([Compare.created_at(key, epoch)], puts)
                if not result.succeeded:
                    raise ControllerDeposed(f"epoch {epoch} is over: another node is the controller")
                self.writes += len(puts)
                revisions.append(result.revision)

        results = await asyncio.gather(*(writer() for _ in range(WRITES_IN_FLIGHT)), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return max(revisions)
