"""Issue 11, item 3: fast, correct checkpoints under sustained writes. A checkpoint never uploads
with the tenant held: the commits the last flush did not ship are carried (durable on local
disk) into the next regular segment. So a slow replica never stalls a tenant's writes, hot
tenants add no PUTs, the WAL is still checkpointed, and restore stays exact."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from tenants.pool import Handle
from tests.support.shipper import FlakyReplica, Rig


class SlowReplica(FlakyReplica):
    """A LocalReplica whose puts take `latency` seconds; with `hold` set, every put after the
    first `allowed` waits for `released` (fault injection: a replica that hangs)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.latency = 0.0
        self.allowed: int | None = None
        self.released = threading.Event()
        self.during_first_put: Callable[[], object] | None = None
        self.started = 0

    def put_file(self, key: str, source: IO[bytes], *, if_absent: bool = False) -> None:
        self.started += 1
        if self.started == 1 and self.during_first_put is not None:
            self.during_first_put()
        if self.allowed is not None and self.started > self.allowed:
            self.released.wait(60)
        time.sleep(self.latency)
        super().put_file(key, source, if_absent=if_absent)


class LockingRig(Rig):
    """A Rig whose tenants have a lock each, as the pool's handles do: the shipper's lease waits
    for it (at most `wait` seconds, as Fleet.lease_if_open), writers hold it per commit."""

    def __init__(self, root: Path, **config: Any) -> None:
        super().__init__(root, **config)
        self.replica.close()
        self.replica = self.slow = SlowReplica(root / "replica")
        self.locks: dict[str, threading.Lock] = {}
        self.new_shipper()

    @contextlib.contextmanager
    def lease(self, tenant_id: str) -> Iterator[Handle | None]:
        lock = self.locks.setdefault(tenant_id, threading.Lock())
        if not lock.acquire(timeout=0.5):
            yield None
            return
        try:
            with super().lease(tenant_id) as handle:
                yield handle
        finally:
            lock.release()

    def write(self, tenant_id: str, value: Any, wait: float) -> float:
        """Commit `value` holding the tenant's lock; returns how long it took. Raises
        AssertionError if the lock did not come within `wait` seconds."""
        started = time.monotonic()
        lock = self.locks.setdefault(tenant_id, threading.Lock())
        assert lock.acquire(timeout=wait), f"tenant held for more than {wait} s"
        try:
            self.insert(tenant_id, value)
        finally:
            lock.release()
        return time.monotonic() - started


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[LockingRig]:
    rig = LockingRig(tmp_path, checkpoint_frames=4)
    yield rig
    rig.slow.released.set()
    rig.shutdown()


def test_a_checkpoint_never_holds_a_tenant_for_an_upload(rig: LockingRig) -> None:
    rig.create("hot")
    rig.insert("hot", *range(6))
    # a commit lands while the flush uploads: the checkpoint after it finds it unshipped
    rig.slow.during_first_put = lambda: rig.write("hot", "during upload", wait=5)
    rig.slow.allowed = 1  # and any further upload hangs until released
    flush = threading.Thread(target=rig.shipper.flush)
    flush.start()
    try:
        flush.join(10)
        assert not flush.is_alive(), "the flush waits for an upload it should not make"
        for i in range(20):  # the tenant takes writes; the replica still hangs
            rig.write("hot", f"after {i}", wait=5)
    finally:
        rig.slow.released.set()
        flush.join(30)
    assert rig.slow.started == 1  # the checkpoint added no PUT
    assert rig.shipper.flush()
    assert rig.restored("hot", time.time()) == [
        *range(6),
        "during upload",
        *(f"after {i}" for i in range(20)),
    ]


def test_sustained_writes_with_a_slow_replica_keep_bounded_latency(rig: LockingRig) -> None:
    rig.create("hot")
    assert rig.shipper.flush()
    rig.slow.latency = 2.0  # every upload takes this long
    stop = threading.Event()
    written: list[int] = []
    latencies: list[float] = []
    truncations = 0

    def writer() -> None:
        nonlocal truncations
        previous = 0
        while not stop.is_set():
            latencies.append(rig.write("hot", len(written), wait=30))
            written.append(len(written))
            size = rig.wal("hot").stat().st_size
            truncations += size < previous
            previous = size

    def flusher() -> None:
        while not stop.is_set():
            rig.shipper.flush()

    threads = [threading.Thread(target=writer), threading.Thread(target=flusher)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 60
        while truncations < 2 and time.monotonic() < deadline:  # two checkpoints under load
            time.sleep(0.1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert truncations >= 2, "the WAL was not checkpointed under load"
    # a write waits for local work at most (a checkpoint: read, fsync, truncate), never for an
    # upload (2 s each)
    assert max(latencies) < 1.5, sorted(latencies)[-5:]
    rig.slow.latency = 0.0
    assert rig.shipper.flush()
    assert rig.restored("hot", time.time()) == written
