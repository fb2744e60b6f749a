"""Tenants to slots, slots to nodes.

`slot_of` is Redis Cluster's keyslot: CRC16-XMODEM (polynomial 0x1021, initial value 0, the
`binascii.crc_hqx(data, 0)` of the standard library) of the tenant id's UTF-8 bytes, modulo
16,384 — `slot_of("foo") == 12182`, as `CLUSTER KEYSLOT foo` answers. It never changes: a tenant's
slot is part of the cluster's on-disk and in-etcd state.

Slots go to nodes by rendezvous (highest random weight) hashing: each (slot, node) pair gets a
weight, the 64-bit BLAKE2b digest of `"<slot>:<node>"`, and the heaviest node owns the slot. A
joining node takes exactly the slots where it is heaviest (about 1/n of them, all from others to
it); a leaving node's slots go to each one's next heaviest node; no other slot moves.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable, Mapping
from hashlib import blake2b

SLOTS = 16384


def slot_of(tenant: str) -> int:
    """The slot of `tenant`, in [0, SLOTS)."""
    return binascii.crc_hqx(tenant.encode(), 0) % SLOTS


def _weight(slot: int, node: str) -> bytes:
    return blake2b(f"{slot}:{node}".encode(), digest_size=8).digest()


def rendezvous_owner(slot: int, nodes: Iterable[str]) -> str:
    """The node that owns `slot` among `nodes` (ties, which need equal digests, go to the
    greater node id, so the answer never depends on the order given). Raises ValueError when
    `nodes` is empty."""
    return max(nodes, key=lambda node: (_weight(slot, node), node))


def assignment(nodes: Iterable[str]) -> dict[int, str]:
    """Every slot's owner among `nodes`; empty when there are none."""
    members = sorted(set(nodes))
    if not members:
        return {}
    return {slot: rendezvous_owner(slot, members) for slot in range(SLOTS)}


def changes(current: Mapping[int, str], desired: Mapping[int, str]) -> dict[int, str]:
    """The slots whose owner must be written to go from `current` to `desired`: those `desired`
    names differently (or `current` lacks). Slots only `current` has are left as they are."""
    return {slot: node for slot, node in desired.items() if current.get(slot) != node}
