"""Rekey (backups/rekey.py) over the shipper's real parts: segments shipped from a real WAL,
then re-encrypted while faults are injected at each step (the upload of the copy fails, the
upload succeeds but its answer is lost, the delete of the old object fails) and while retention
runs alongside. After each: every chunk still opens, a rerun finishes the job, and retention
leaves the bucket holding exactly the segments the catalog points at."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import apsw
import pytest

from backups import rekey, restore, retention
from backups.catalog import BackupCatalog
from backups.errors import ReplicaUnavailable
from backups.keyring import Keyring
from backups.local_replica import LocalReplica
from backups.rekey import RekeyBatch, rekey_batch, rekeyed_name
from backups.sealed_replica import SealedReplica
from tests.support.shipper import Rig

K1 = Keyring([("k1", b"\x01" * 32)])
K2 = Keyring([("k2", b"\x02" * 32), ("k1", b"\x01" * 32)])
WINDOW = 86400.0  # nothing expires: retention only deletes unreferenced segments


class Faulty(LocalReplica):
    """Fails the next put before storing (`fail_before`), after storing (`fail_after`: the
    answer is lost), or the next delete."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.fail_before = self.fail_after = self.fail_delete = 0

    def put_file(self, key: str, source: IO[bytes], *, if_absent: bool = False) -> None:
        if self.fail_before:
            self.fail_before -= 1
            raise ReplicaUnavailable("injected: put failed")
        super().put_file(key, source, if_absent=if_absent)
        if self.fail_after:
            self.fail_after -= 1
            raise ReplicaUnavailable("injected: put stored, answer lost")

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if self.fail_delete and any(k.startswith("segments/") for k in keys):
            self.fail_delete -= 1
            raise ReplicaUnavailable("injected: delete failed")
        super().delete(keys)


@pytest.fixture
def faulty(tmp_path: Path) -> Faulty:
    return Faulty(tmp_path / "replica")


@pytest.fixture
def rig(tmp_path: Path, faulty: Faulty) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    rig.replica = SealedReplica(faulty, K1)  # type: ignore[assignment]  # the server's wrapping
    rig.new_shipper()
    conn = rig.create("acme")
    for batch in range(5):  # five segments, sealed with k1
        rig.insert("acme", *[f"row {batch}.{i}" for i in range(3)])
        assert rig.shipper.flush()
    conn.execute("INSERT INTO t(v) SELECT randomblob(100000)")  # a segment of several blocks
    assert rig.shipper.flush()
    assert {SealedReplica(faulty, K1).key_id(k) for k in rig.catalog.referenced_segments()} == {"k1"}
    yield rig
    rig.shutdown()


def restored(rig: Rig, replica: SealedReplica) -> list[object]:
    plan = restore.plan("acme", rig.catalog.chunks("acme"), time.time())
    target = rig.root / f"restored-{len(list(rig.root.glob('restored-*')))}.db"
    restore.materialize(plan, replica.get_range, target)
    conn = apsw.Connection(str(target))
    try:
        return [r[0] if isinstance(r[0], str) else len(r[0]) for r in conn.execute("SELECT v FROM t")]
    finally:
        conn.close()


def run(rig: Rig, replica: SealedReplica, limit: int = 2) -> list[RekeyBatch]:
    batches, after = [], None
    while True:
        batch = rekey_batch(replica, rig.catalog, rig.shipper.spool, after, limit)
        batches.append(batch)
        after = batch.next
        if after is None:
            return batches


def settled(rig: Rig, replica: SealedReplica) -> None:
    """After retention the bucket holds exactly what the catalog points at, all under k2."""
    retention.enforce(replica, rig.catalog, WINDOW)
    stored = {o.key for o in replica.list("segments/")}
    assert stored == set(rig.catalog.referenced_segments())
    assert {replica.key_id(k) for k in stored} == {"k2"}


def test_rekey_rewrites_every_segment_and_the_old_key_can_go(rig: Rig, faulty: Faulty) -> None:
    expected = restored(rig, SealedReplica(faulty, K1))
    before = set(rig.catalog.referenced_segments())
    replica = SealedReplica(faulty, K2)
    batches = run(rig, replica, limit=2)
    assert sum(b.checked for b in batches) == len(before) == batches[0].total
    assert sum(b.rewritten for b in batches) == len(before)
    assert not before & set(rig.catalog.referenced_segments())  # all copies
    settled(rig, replica)
    assert restored(rig, SealedReplica(faulty, Keyring([("k2", b"\x02" * 32)]))) == expected
    assert sum(b.rewritten for b in run(rig, replica)) == 0  # a rerun finds nothing to do


@pytest.mark.parametrize("fault", ["fail_before", "fail_after", "fail_delete"])
def test_a_fault_at_any_step_leaves_every_chunk_readable(rig: Rig, faulty: Faulty, fault: str) -> None:
    expected = restored(rig, SealedReplica(faulty, K1))
    replica = SealedReplica(faulty, K2)
    setattr(faulty, fault, 1)
    with pytest.raises(ReplicaUnavailable):
        run(rig, replica, limit=100)
    assert restored(rig, replica) == expected  # old or new object: each chunk opens
    retention.enforce(replica, rig.catalog, WINDOW)  # clears what the fault left over
    assert restored(rig, replica) == expected
    run(rig, replica)
    settled(rig, replica)
    assert restored(rig, SealedReplica(faulty, Keyring([("k2", b"\x02" * 32)]))) == expected


class Racing(Faulty):
    """Stages the worst interleaving of retention with rekey: while the rekeyed copy is being
    uploaded, retention runs in another thread, and its delete of unreferenced segments waits
    (bounded) until the copy is stored and referenced, then goes ahead."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.catalog: BackupCatalog | None = None
        self.retention_deleting = threading.Event()
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def put_file(self, key: str, source: IO[bytes], *, if_absent: bool = False) -> None:
        if self.catalog is not None and ".r" in key:
            thread = threading.Thread(target=self._retain)
            thread.start()
            self.threads.append(thread)
            self.retention_deleting.wait(1.0)  # with the lock held it never gets there: go on
        super().put_file(key, source, if_absent=if_absent)

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if threading.current_thread() in self.threads and self.catalog is not None:
            self.retention_deleting.set()
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and not set(keys) & set(self.catalog.referenced_segments()):
                time.sleep(0.01)
        super().delete(keys)

    def _retain(self) -> None:
        assert self.catalog is not None
        try:
            retention.enforce(SealedReplica(self, K2), self.catalog, WINDOW)
        except BaseException as exc:  # the test reports it
            self.errors.append(exc)


def test_retention_running_alongside_never_deletes_a_copy_in_use(tmp_path: Path) -> None:
    racing = Racing(tmp_path / "replica")
    rig = Rig(tmp_path)
    try:
        rig.replica = SealedReplica(racing, K1)  # type: ignore[assignment]
        rig.new_shipper()
        rig.create("acme")
        rig.insert("acme", "one")
        assert rig.shipper.flush()
        expected = restored(rig, SealedReplica(racing, K1))
        racing.catalog = rig.catalog
        replica = SealedReplica(racing, K2)
        run(rig, replica, limit=1)
        for thread in racing.threads:
            thread.join()
        assert racing.threads and racing.errors == []
        settled(rig, replica)
        assert restored(rig, replica) == expected
    finally:
        rig.shutdown()


def test_unencrypted_segments_are_adopted(tmp_path: Path) -> None:
    rig = Rig(tmp_path)  # the shipper writes plain segments
    try:
        rig.create("acme")
        rig.insert("acme", "plain")
        assert rig.shipper.flush()
        replica = SealedReplica(rig.replica, K2)
        assert {replica.key_id(k) for k in rig.catalog.referenced_segments()} == {None}
        assert sum(b.rewritten for b in run(rig, replica)) >= 1
        settled(rig, replica)
        assert restored(rig, replica) == ["plain"]
    finally:
        rig.shutdown()


def test_reseal_prefixes_rewrites_small_objects_in_place(
    rig: Rig, faulty: Faulty, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rekey, "RESEAL_PREFIXES", ("fleet/",))
    SealedReplica(faulty, K1).put("fleet/groups.json", b'{"shop": 1}')
    faulty.put("fleet/legacy.json", b"{}")  # written before encryption
    replica = SealedReplica(faulty, K2)
    assert sum(b.rewritten for b in run(rig, replica)) >= 2
    assert replica.key_id("fleet/groups.json") == replica.key_id("fleet/legacy.json") == "k2"
    assert replica.get("fleet/groups.json") == b'{"shop": 1}'


def test_rekeyed_names_are_fresh_and_do_not_grow() -> None:
    first = rekeyed_name("segments/0001-abcd-00000001.seg")
    second = rekeyed_name(first)
    assert first.startswith("segments/0001-abcd-00000001.r") and first.endswith(".seg")
    assert len(second) == len(first) and second != first
