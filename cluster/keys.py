"""The cluster's keys in etcd, all under `/sqlfleet/<cluster>/`; values are JSON.

    nodes/<node>        {"url", "incarnation"}   bound to the node's lease
    assign/<slot:05d>   "<node>" (JSON string)   no lease; written only by the controller
    owner/<slot:05d>    {"node", "incarnation"}  bound to the owner's lease; its create_revision
                                                 is the slot's fencing token
    controller          "<node>" (JSON string)   bound to the controller's lease; its
                                                 create_revision is the controller's epoch
    drain/<node>        {"since"}                no lease; an operator's `cluster drain`: the
                                                 controller assigns the node no slot

etcd holds O(slots + nodes) keys, never one per tenant.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Keyspace:
    """The keys of one cluster (`name`)."""

    name: str

    @property
    def root(self) -> bytes:
        return f"/sqlfleet/{self.name}/".encode()

    @property
    def nodes(self) -> bytes:
        return self.root + b"nodes/"

    @property
    def assigns(self) -> bytes:
        return self.root + b"assign/"

    @property
    def owners(self) -> bytes:
        return self.root + b"owner/"

    @property
    def controller(self) -> bytes:
        return self.root + b"controller"

    @property
    def drains(self) -> bytes:
        return self.root + b"drain/"

    def drain(self, node_id: str) -> bytes:
        return self.drains + node_id.encode()

    def node(self, node_id: str) -> bytes:
        return self.nodes + node_id.encode()

    def assign(self, slot: int) -> bytes:
        return self.assigns + b"%05d" % slot

    def owner(self, slot: int) -> bytes:
        return self.owners + b"%05d" % slot

    @staticmethod
    def slot_in(key: bytes, prefix: bytes) -> int:
        """The slot number of an `assign/` or `owner/` key under `prefix`. Raises ValueError."""
        return int(key[len(prefix) :])

    @staticmethod
    def name_in(key: bytes, prefix: bytes) -> str:
        return key[len(prefix) :].decode()


def encode_assign(node_id: str) -> bytes:
    """The value of `assign/<slot>` naming `node_id` (claims compare it byte for byte)."""
    return json.dumps(node_id).encode()


def decode_assign(value: bytes) -> str:
    node: str = json.loads(value)
    return node


def encode_owner(node_id: str, incarnation: str) -> bytes:
    return json.dumps({"node": node_id, "incarnation": incarnation}, separators=(",", ":")).encode()


def decode_owner(value: bytes) -> tuple[str, str]:
    """(node, incarnation) of an `owner/<slot>` value."""
    owner = json.loads(value)
    return str(owner["node"]), str(owner["incarnation"])
