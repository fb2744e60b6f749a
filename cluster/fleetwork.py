"""Fleet-wide records in etcd: values under a prefix of the cluster (`groups/`, `rollouts/`, see
cluster.keys) that any node changes by compare-and-swap and every node follows through a watched
copy. What the values mean is the caller's (ops.fleetwork); here they are bytes.

Blocking calls, for worker threads (never the cluster loop): each runs on the node's loop and
waits for its answer.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from cluster.errors import ClusterError, EtcdUnavailable
from cluster.kv import Compare, KeyValue, Put
from cluster.membership import Node

T = TypeVar("T")
# (key, value or None when deleted) of each change, and the store revision they bring the copy to
Listener = Callable[[list[tuple[bytes, bytes | None]], int], None]


class RecordConflict(ClusterError):
    """Another change of the same record won the race (through this node or another): read it
    again and decide anew."""

    status = 409
    code = "conflict"


@dataclass(frozen=True, slots=True)
class Record:
    value: bytes | None
    revision: int  # the key's mod revision; 0 when absent


class Records:
    """`read`, `swap`, `put`, `follow` and `wait` are safe from any thread but the node's loop.
    Raises (ClusterError): EtcdUnavailable, RecordConflict (`swap`)."""

    def __init__(self, node: Node, timeout: float = 10.0) -> None:
        self.node = node
        self.timeout = timeout

    def read(self, key: bytes) -> Record:
        kv, _ = self._call(self.node.etcd.get(key))
        return Record(None, 0) if kv is None else Record(kv.value, kv.mod_revision)

    def read_prefix(self, prefix: bytes) -> dict[bytes, Record]:
        listing = self._call(self.node.etcd.get_prefix(prefix))
        return {kv.key: Record(kv.value, kv.mod_revision) for kv in listing.kvs}

    def swap(self, expected: Mapping[bytes, int], puts: Mapping[bytes, bytes]) -> int:
        """Write `puts` in one transaction if every key of `expected` is still at that mod
        revision (0: absent); its commit revision. Not retried when its answer is lost (a rerun
        would report its own write as a conflict): EtcdUnavailable then, and the caller reads again.
        Raises RecordConflict."""
        compares = [Compare(k, "mod", rev) if rev else Compare.absent(k) for k, rev in expected.items()]
        result = self._call(self.node.etcd.txn(compares, [Put(k, v) for k, v in puts.items()], retry=False))
        if not result.succeeded:
            raise RecordConflict("changed meanwhile (through another request or node): try again")
        return result.revision

    def put(self, key: bytes, value: bytes) -> int:
        return self._call(self.node.etcd.put(key, value))

    def follow(self, prefix: bytes, listener: Listener) -> int:
        """Call `listener` (on the cluster loop: keep it short, never block) with every change
        under `prefix`, the first time with every key there; returns once that first listing is
        in, with its revision."""

        def changed(changes: list[tuple[bytes, KeyValue | None]], revision: int) -> None:
            listener([(key, None if kv is None else kv.value) for key, kv in changes], revision)

        async def attach() -> int:
            mirror = self.node.mirror(prefix)
            mirror.listen(changed)
            await mirror.synced.wait()
            return mirror.revision

        return self._call(attach())

    def wait(self, prefix: bytes, revision: int) -> None:
        """Return once this node's copy of `prefix` has every change up to `revision`."""

        async def reached() -> None:
            await self.node.mirror(prefix).wait_revision(revision)

        self._call(reached())

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            return self.node.call(coro, self.timeout)
        except TimeoutError:
            raise EtcdUnavailable(f"etcd did not answer within {self.timeout:g} s") from None
