"""In-process cluster nodes for tests: each a `Node` (its own thread and loop) with the parts
a test asks for, all stopped when the `Peers` block ends."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cluster.config import ClusterConfig
from cluster.controller import Controller, TakeOver
from cluster.membership import Node
from cluster.ownership import Ownership
from cluster.routing import RoutingTable
from tests.support.etcd import EtcdCluster


@dataclass
class Peer:
    node: Node
    ownership: Ownership | None
    controller: Controller | None
    routing: RoutingTable | None

    @property
    def id(self) -> str:
        return self.node.node_id

    def owns(self) -> dict[int, int]:
        return dict(self.ownership.owned()) if self.ownership is not None else {}


class Peers:
    def __init__(self, etcd: EtcdCluster) -> None:
        self.etcd = etcd
        self.name = f"c-{uuid.uuid4().hex[:8]}"
        self.started: list[Peer] = []

    def config(self, node_id: str, ttl: int = 3, endpoints: tuple[str, ...] | None = None) -> ClusterConfig:
        return ClusterConfig(
            endpoints=endpoints or self.etcd.endpoints,
            name=self.name,
            node_id=node_id,
            node_url=f"http://{node_id}.invalid:8080",
            lease_ttl=ttl,
            takeover_grace=0.0,
        )

    def start(
        self,
        node_id: str,
        *,
        ttl: int = 3,
        ownership: bool = True,
        controller: bool = False,
        grace: float = 0.0,
        take_over: TakeOver | None = None,
        routing: bool = False,
        before_release: Callable[[Mapping[int, int]], None] | None = None,
        endpoints: tuple[str, ...] | None = None,
        **node_args: Any,
    ) -> Peer:
        node = Node(self.config(node_id, ttl, endpoints), **node_args)
        node.start()
        peer = Peer(node, None, None, None)
        self.started.append(peer)
        if routing:
            peer.routing = RoutingTable(node)
            peer.routing.start()
        if ownership:
            peer.ownership = Ownership(node, before_release=before_release)
            peer.ownership.start()
        if controller:
            peer.controller = Controller(node, grace=grace, take_over=take_over)
            peer.controller.start()
        return peer

    def __enter__(self) -> Peers:
        return self

    def __exit__(self, *exc: object) -> None:
        for peer in self.started:
            peer.node.stop()
