"""Everything one server process runs in a cluster, built whole: membership, ownership, the
routing table and a controller candidate, on the node's own thread. What the server wires in."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Mapping

from cluster.config import ClusterConfig
from cluster.controller import Controller, TakeOver
from cluster.errors import EtcdUnavailable
from cluster.keys import decode_assign
from cluster.kv import Compare, Delete, Put
from cluster.membership import Node
from cluster.ownership import Ownership
from cluster.routing import Lost, Route, RoutingTable
from cluster.slots import slot_of

# etcd takes at most 128 compares per transaction: a drain guards that many other nodes at most
# (any one of them left serving is enough)
MAX_GUARDS = 128


class Agent:
    """`start()` joins (raises EtcdUnavailable when etcd does not answer in time), `stop()`
    leaves. Every method here is safe from any thread and never blocks on etcd.

    `before_release(tokens)`: the server's drain of the slots this node is giving up (slot ->
    fencing token; worker thread; they are not served any more when it runs);
    `on_lease_lost(reason)`: called on the cluster thread the moment the lease is known lost;
    `take_over(node, incarnations, slots, token)`: what the controller, on whichever node it
    runs, does in a thread of its own before it moves the slots of a node that departed
    `config.takeover_grace` seconds ago (cluster.controller); None: it just moves them;
    `before_rejoin()`: whether to join again after losing the lease; `previous_process`: the
    process incarnation the data dir last ran as (both cluster.membership)."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        before_release: Callable[[Mapping[int, int]], None] | None = None,
        on_lease_lost: Callable[[str], None] | None = None,
        take_over: TakeOver | None = None,
        before_rejoin: Callable[[], bool] | None = None,
        previous_process: str | None = None,
    ) -> None:
        self.node = Node(
            config,
            on_lease_lost=on_lease_lost,
            before_rejoin=before_rejoin,
            previous_process=previous_process,
        )
        self.routing = RoutingTable(self.node)
        self.ownership = Ownership(self.node, before_release=before_release)
        self.controller = Controller(self.node, grace=config.takeover_grace, take_over=take_over)

    def start(self) -> None:
        self.node.start()
        try:
            self.routing.start()
            self.ownership.start()
            self.controller.start()
            self.node.call(self._watch_takeovers())
        except BaseException:
            self.node.stop()
            raise

    def stop(self) -> None:
        self.node.stop()

    async def _watch_takeovers(self) -> None:
        self.node.mirror(self.node.keys.takeovers)  # started on the loop; read by `takeovers`

    def route(self, tenant: str) -> Route | None:
        """Who serves `tenant` now, as this node sees it; None while its slot has no owner."""
        return self.routing.route(slot_of(tenant))

    def serves(self, tenant: str, token: int | None = None) -> bool:
        """Whether this node may serve `tenant` now (holding its slot with `token`, if given)."""
        return self.ownership.owns(slot_of(tenant), token)

    def set_draining(
        self, node_id: str, draining: bool, keep: Collection[str] = (), timeout: float = 10.0
    ) -> bool:
        """Mark `node_id` draining (the controller moves its slots to the other nodes, each a
        planned move) or not any more. A drain is written only if no node of `keep` is marked
        draining at that moment (one etcd transaction: two drains sent at once cannot both take
        the last nodes); False when one is (nothing written). Blocking: not from the cluster
        loop. Returns once this node's view has the mark (the status it answers next shows it).
        Raises ClusterError."""
        key = self.node.keys.drain(node_id)

        async def write() -> bool:
            if draining:
                guards = [Compare.absent(self.node.keys.drain(k)) for k in sorted(keep)[:MAX_GUARDS]]
                mark = Put(key, json.dumps({"since": time.time()}).encode())
                result = await self.node.etcd.txn(guards, [mark])
                done = changed = result.succeeded
            else:  # deleted only if there: else no event would ever bring the view to it
                result = await self.node.etcd.txn([Compare.absent(key)], [], [Delete(key)])
                done, changed = True, not result.succeeded
            if changed:
                await self.node.mirror(self.node.keys.drains).wait_revision(result.revision)
            return done

        try:
            return self.node.call(write(), timeout)
        except TimeoutError:
            raise EtcdUnavailable(f"etcd did not take the drain mark within {timeout:g} s") from None

    def draining_now(self, timeout: float = 10.0) -> frozenset[str]:
        """The nodes marked draining as etcd has them now (not as the watch last saw them).
        Blocking. Raises ClusterError."""
        drains = self.node.keys.drains
        try:
            listing = self.node.call(self.node.etcd.get_prefix(drains), timeout)
        except TimeoutError:
            raise EtcdUnavailable(f"etcd did not list the drain marks within {timeout:g} s") from None
        return frozenset(self.node.keys.name_in(kv.key, drains) for kv in listing.kvs)

    def draining(self) -> frozenset[str]:
        """The nodes an operator has marked draining, as this node's watch sees them."""
        drains = self.node.keys.drains
        return frozenset(self.node.keys.name_in(k, drains) for k in self.node.mirror(drains).current())

    def takeovers(self) -> dict[str, str]:
        """Departed nodes whose takeover fails, and why (as the controller shows it in etcd)."""
        prefix = self.node.keys.takeovers
        shown: dict[str, str] = {}
        for key, kv in list(self.node.mirror(prefix).current().items()):
            try:
                shown[self.node.keys.name_in(key, prefix)] = str(json.loads(kv.value)["reason"])
            except (ValueError, KeyError, TypeError):
                continue
        return shown

    def departed(self) -> dict[str, tuple[int, Lost | None]]:
        """Nodes that hold slots by the controller's assignment but are not registered (their
        lease ran out, or they left without handing their slots over): node -> (slots assigned
        to it, what this node saw of its going, None if it went before this node watched)."""
        assigns, registered = self.node.mirror(self.node.keys.assigns), self.routing.nodes()
        counts: dict[str, int] = {}
        for kv in list(assigns.current().values()):
            node = decode_assign(kv.value)
            if node not in registered:
                counts[node] = counts.get(node, 0) + 1
        lost = self.routing.lost()
        return {node: (n, lost.get(node)) for node, n in sorted(counts.items())}

    def why_not_serving(self) -> str | None:
        """For /readyz: None while the node can prove its lease alive."""
        return self.node.why_not_serving()
