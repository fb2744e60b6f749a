"""Every node's routing table: slot → the owner's node, URL and fencing token.

Built on the node's cluster loop from its watched copies of `owner/` and `nodes/`, and published
as an immutable tuple (one entry per slot) swapped whole: `route()` from any thread is one index,
no lock. A slot has a route only while its owner's key and the owner node's registration name the
same incarnation (a node that lost its lease is gone from both).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from cluster.keys import decode_owner
from cluster.kv import KeyValue
from cluster.membership import Node
from cluster.slots import SLOTS, slot_of

log = logging.getLogger(__name__)

# Seconds a burst of changes may gather before the table is rebuilt (a claim of 16,384 slots is
# 16,384 events: a copy per event would be quadratic).
PUBLISH_DELAY = 0.005


@dataclass(frozen=True, slots=True)
class NodeInfo:
    node: str
    url: str
    incarnation: str


@dataclass(frozen=True, slots=True)
class Lost:
    """A node whose registration went (its lease ran out or was revoked) while this node
    watched: what it was, and when (unix seconds) its key went."""

    info: NodeInfo
    since: float


@dataclass(frozen=True, slots=True)
class Route:
    """Where a slot is served: `node` at `url`, owning it with fencing token `token`."""

    node: str
    url: str
    token: int
    incarnation: str


class RoutingTable:
    """The cluster's routing state as this node sees it (at most PUBLISH_DELAY behind its
    watches). `route`, `route_tenant`, `nodes` and `ready` are safe from any thread."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.keys = node.keys
        self._owners: list[tuple[str, str, int] | None] = [None] * SLOTS  # node, incarnation, token
        self._nodes: dict[str, NodeInfo] = {}
        self._table: tuple[Route | None, ...] = (None,) * SLOTS
        self._published_nodes: Mapping[str, NodeInfo] = MappingProxyType({})
        self._lost: dict[str, Lost] = {}  # by node id, until it registers again
        self._published_lost: Mapping[str, Lost] = MappingProxyType({})
        self._publish: asyncio.TimerHandle | None = None
        self.ready = False  # both watches have listed once
        self.version = 0  # bumped on every publish

    def route(self, slot: int) -> Route | None:
        return self._table[slot]

    def route_tenant(self, tenant: str) -> Route | None:
        return self._table[slot_of(tenant)]

    def nodes(self) -> Mapping[str, NodeInfo]:
        """Every registered node by id."""
        return self._published_nodes

    def lost(self) -> Mapping[str, Lost]:
        """Nodes whose registration went while this node watched and that have not registered
        again (those that left cleanly too: whether they still hold slots is the caller's to
        ask), by id."""
        return self._published_lost

    def table(self) -> tuple[Route | None, ...]:
        """Every slot's route, one consistent snapshot."""
        return self._table

    def start(self) -> None:
        self.node.call(self._attach())

    async def _attach(self) -> None:
        owners = self.node.mirror(self.keys.owners)
        nodes = self.node.mirror(self.keys.nodes)
        owners.listen(self._owners_changed)
        nodes.listen(self._nodes_changed)
        # what the mirrors already hold (they may have started before us)
        self._nodes_changed(list(nodes.current().items()), nodes.revision)
        self._owners_changed(list(owners.current().items()), owners.revision)
        self.node.spawn(self._ready_when_synced(owners.synced, nodes.synced), "routing")

    async def _ready_when_synced(self, *synced: asyncio.Event) -> None:
        for event in synced:
            await event.wait()
        self._do_publish()
        self.ready = True

    def _owners_changed(self, changed: list[tuple[bytes, KeyValue | None]], revision: int) -> None:
        for key, kv in changed:
            slot = self.keys.slot_in(key, self.keys.owners)
            if kv is None:
                self._owners[slot] = None
            else:
                node, incarnation = decode_owner(kv.value)
                self._owners[slot] = (node, incarnation, kv.create_revision)
        self._schedule()

    def _nodes_changed(self, changed: list[tuple[bytes, KeyValue | None]], revision: int) -> None:
        for key, kv in changed:
            name = self.keys.name_in(key, self.keys.nodes)
            if kv is None:
                gone = self._nodes.pop(name, None)
                if gone is not None:
                    self._lost[name] = Lost(gone, time.time())
            else:
                info = _decode_node(kv.value)
                self._nodes[name] = NodeInfo(name, str(info["url"]), str(info["incarnation"]))
                self._lost.pop(name, None)
        self._schedule()

    def _schedule(self) -> None:
        if self._publish is None:
            self._publish = asyncio.get_running_loop().call_later(PUBLISH_DELAY, self._do_publish)

    def _do_publish(self) -> None:
        self._publish = None
        nodes = self._nodes
        routes: dict[tuple[str, str, int], Route | None] = {}
        table: list[Route | None] = []
        for owner in self._owners:
            if owner is None:
                table.append(None)
                continue
            if owner not in routes:  # one Route per owner: a batched claim shares its token
                info = nodes.get(owner[0])
                live = info is not None and info.incarnation == owner[1]
                routes[owner] = Route(owner[0], info.url, owner[2], owner[1]) if live and info else None
            table.append(routes[owner])
        self._table = tuple(table)
        self._published_nodes = MappingProxyType(dict(nodes))
        self._published_lost = MappingProxyType(dict(self._lost))
        self.version += 1


def _decode_node(value: bytes) -> dict[str, object]:
    decoded: dict[str, object] = json.loads(value)
    return decoded
