"""The cluster's keys in etcd, all under `/sqlfleet/<cluster>/`; values are JSON.

    nodes/<node>        {"url", "incarnation",   bound to the node's lease; "process": the
                         "process"}              incarnation of the process's first lease
    assign/<slot:05d>   "<node>" (JSON string),  no lease; written by the controller, and by
                        or {"node", "from"}      the giver of a planned move: while the slot's
                                                 owner ("from") has not handed it over, the
                                                 move is pending (the object); the giver's
                                                 release turns it into the plain string in the
                                                 same transaction that deletes its owner key.
                                                 Only the plain form can be claimed, so a slot
                                                 whose owner died mid-move waits for that
                                                 owner's takeover, never claimed unhanded
    owner/<slot:05d>    {"node", "incarnation"}  bound to the owner's lease; its create_revision
                                                 is the slot's fencing token
    controller          "<node>" (JSON string)   bound to the controller's lease; its
                                                 create_revision is the controller's epoch
    drain/<node>        {"since"}                no lease; an operator's `cluster drain`: the
                                                 controller assigns the node no slot
    incarnation/<node>  "<incarnation>"          no lease; the incarnation the node's newest
                                                 process joined as (its segments are written
                                                 under it): a controller that never saw the node
                                                 alive still knows what to fence when it takes
                                                 the node over
    takeover/<node>     {"reason", "since",      no lease; written by the controller while the
                         "overrun"}              takeover of a departed node fails (for
                                                 `cluster status`), deleted once it is done
    groups/<group>      the group's definition    no lease (cluster.fleetwork, ops.fleetwork)
    rollouts/<id>       a rollout's spec          no lease
    rollouts/<id>/progress/<node>  that node's part of the rollout

etcd holds O(slots + nodes + groups + rollouts x nodes) keys, never one per tenant.
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

    @property
    def groups(self) -> bytes:
        return self.root + b"groups/"

    @property
    def rollouts(self) -> bytes:
        return self.root + b"rollouts/"

    def group(self, name: str) -> bytes:
        return self.groups + name.encode()

    def rollout(self, rollout_id: str) -> bytes:
        return self.rollouts + rollout_id.encode()

    def progress(self, rollout_id: str, node_id: str) -> bytes:
        return self.rollouts + f"{rollout_id}/progress/{node_id}".encode()

    @property
    def takeovers(self) -> bytes:
        return self.root + b"takeover/"

    def takeover(self, node_id: str) -> bytes:
        return self.takeovers + node_id.encode()

    @property
    def incarnations(self) -> bytes:
        return self.root + b"incarnation/"

    def incarnation(self, node_id: str) -> bytes:
        return self.incarnations + node_id.encode()

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


def encode_assign(node_id: str, giver: str | None = None) -> bytes:
    """The value of `assign/<slot>` naming `node_id`: claimable (claims compare it byte for
    byte), or, with `giver`, a planned move that `giver` (the slot's owner) has yet to hand over."""
    if giver is None:
        return json.dumps(node_id).encode()
    return json.dumps({"node": node_id, "from": giver}, separators=(",", ":")).encode()


def decode_assign(value: bytes) -> str:
    """The node an `assign/<slot>` value names (pending or not)."""
    return decode_move(value)[0]


def decode_move(value: bytes) -> tuple[str, str | None]:
    """(node, giver) of an `assign/<slot>` value; giver None unless a move is pending."""
    decoded = json.loads(value)
    if isinstance(decoded, dict):
        return str(decoded["node"]), str(decoded["from"])
    return str(decoded), None


def encode_owner(node_id: str, incarnation: str) -> bytes:
    return json.dumps({"node": node_id, "incarnation": incarnation}, separators=(",", ":")).encode()


def decode_owner(value: bytes) -> tuple[str, str]:
    """(node, incarnation) of an `owner/<slot>` value."""
    owner = json.loads(value)
    return str(owner["node"]), str(owner["incarnation"])
