"""Reading and writing a test cluster's keys from the test thread, as an operator would."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from cluster.etcd import Etcd
from cluster.keys import Keyspace, decode_assign, decode_owner, encode_assign
from cluster.kv import KeyValue, Put
from tests.cluster.peers import Peers

T = TypeVar("T")


def with_etcd(
    peers: Peers, action: Callable[[Etcd], Awaitable[T]], endpoints: tuple[str, ...] | None = None
) -> T:
    async def go() -> T:
        etcd = await Etcd.connect(endpoints or peers.etcd.endpoints, call_timeout=1, retry_for=10)
        try:
            return await action(etcd)
        finally:
            await etcd.close()

    return asyncio.run(go())


def keys(peers: Peers) -> Keyspace:
    return Keyspace(peers.name)


def listing(peers: Peers, prefix: bytes) -> dict[bytes, KeyValue]:
    found = with_etcd(peers, lambda etcd: etcd.get_prefix(prefix))
    return {kv.key: kv for kv in found.kvs}


def assigned(peers: Peers) -> dict[int, str]:
    ks = keys(peers)
    return {
        ks.slot_in(k, ks.assigns): decode_assign(kv.value) for k, kv in listing(peers, ks.assigns).items()
    }


def owners(peers: Peers) -> dict[int, tuple[str, int]]:
    """slot → (node, token) as etcd has it."""
    ks = keys(peers)
    return {
        ks.slot_in(k, ks.owners): (decode_owner(kv.value)[0], kv.create_revision)
        for k, kv in listing(peers, ks.owners).items()
    }


def assign(peers: Peers, slots: Mapping[int, str]) -> None:
    """Write `assign/<slot>` as a controller would (128 to a transaction)."""
    ks = keys(peers)
    items = sorted(slots.items())

    async def write(etcd: Etcd) -> None:
        for i in range(0, len(items), 128):
            await etcd.txn([], [Put(ks.assign(s), encode_assign(n)) for s, n in items[i : i + 128]])

    with_etcd(peers, write)


def node_record(peers: Peers, node_id: str) -> dict[str, str] | None:
    async def get(etcd: Etcd) -> dict[str, str] | None:
        kv, _ = await etcd.get(keys(peers).node(node_id))
        return None if kv is None else dict(json.loads(kv.value))

    return with_etcd(peers, get)


def revoke(peers: Peers, lease_id: int) -> None:
    with_etcd(peers, lambda etcd: etcd.revoke(lease_id))
