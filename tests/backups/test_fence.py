"""The data-path fence (backups/fence.py): conditional creates on every backend, segment keys
under an incarnation, a fenced writer that stops for good, and readers (rebuild, restore,
retention) that honour fences; on a local directory and on S3 (moto)."""

from __future__ import annotations

import dataclasses
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import apsw
import pytest
from botocore.exceptions import ClientError

from backups import restore, retention
from backups.catalog import BackupCatalog
from backups.errors import ObjectExists, ReplicaFenced, ReplicaUnavailable
from backups.fence import Writer, fence_incarnation, incarnation_segments, keep_newest, parse_key, top
from backups.keyring import Keyring
from backups.local_replica import LocalReplica
from backups.rekey import rekeyed_name
from backups.replica import ReplicaClient
from backups.s3_replica import _client_error
from backups.sealed_replica import SealedReplica
from backups.shipper import Shipper
from tests.support.shipper import Rig
from tests.support.waiting import wait_until

WRITER = Writer("node-a", "7f3a01")


# -- conditional create ---------------------------------------------------------------------------


def test_a_conditional_create_stores_once_and_refuses_every_later_one(replica: ReplicaClient) -> None:
    replica.put("segments/n/i/000000000001.seg", b"first", if_absent=True)
    with pytest.raises(ObjectExists) as caught:
        replica.put("segments/n/i/000000000001.seg", b"second", if_absent=True)
    assert not caught.value.transient
    with pytest.raises(ObjectExists):
        replica.put_file("segments/n/i/000000000001.seg", io.BytesIO(b"third"), if_absent=True)
    assert replica.get("segments/n/i/000000000001.seg") == b"first"
    assert [o.key for o in replica.list("segments/")] == ["segments/n/i/000000000001.seg"]
    replica.put_file("segments/n/i/000000000002.seg", io.BytesIO(b"x" * 300_000), if_absent=True)
    assert replica.head("segments/n/i/000000000002.seg").size == 300_000
    replica.put("segments/n/i/000000000001.seg", b"overwritten")  # a plain put still replaces
    assert replica.get("segments/n/i/000000000001.seg") == b"overwritten"


def _race(replica: ReplicaClient, key: str, writers: int) -> tuple[list[int], list[int]]:
    """`writers` threads create `key` conditionally at once: (who won, who lost)."""
    barrier = threading.Barrier(writers)
    won: list[int] = []
    lost: list[int] = []
    failed: list[BaseException] = []

    def create(n: int) -> None:
        barrier.wait()
        try:
            replica.put(key, f"writer {n}".encode(), if_absent=True)
            won.append(n)
        except ObjectExists:
            lost.append(n)
        except BaseException as exc:
            failed.append(exc)

    threads = [threading.Thread(target=create, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failed
    return won, lost


def test_racing_conditional_creates_have_exactly_one_winner(replica: ReplicaClient) -> None:
    for trial in range(3):
        won, lost = _race(replica, f"race/{trial}", 16)
        assert len(won) == 1 and len(lost) == 15
        assert replica.get(f"race/{trial}") == f"writer {won[0]}".encode()


def test_a_sealed_replica_creates_conditionally_too(tmp_path: Path) -> None:
    sealed = SealedReplica(LocalReplica(tmp_path), Keyring([("k1", b"\x01" * 32)]))
    sealed.put("a/b", b"secret", if_absent=True)
    with pytest.raises(ObjectExists):
        sealed.put_file("a/b", io.BytesIO(b"other"), if_absent=True)
    assert sealed.get("a/b") == b"secret"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b"]  # no temporary file left


def test_s3_precondition_failed_and_conditional_conflict_mean_the_object_exists() -> None:
    for status, code in ((412, "PreconditionFailed"), (409, "ConditionalRequestConflict")):
        response: Any = {
            "Error": {"Code": code, "Message": "no"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }
        error = _client_error(ClientError(response, "PutObject"), "k", "bucket")
        assert isinstance(error, ObjectExists) and not error.transient


# -- keys and fences ------------------------------------------------------------------------------


def test_segment_keys_of_an_incarnation_and_of_the_flat_form() -> None:
    assert WRITER.key(12) == "segments/node-a/7f3a01/000000000012.seg"
    assert parse_key(WRITER.key(12)) == (WRITER, 12)
    assert parse_key("segments/node-a/7f3a01/000000000012.r0a1b2c3d.seg") == (WRITER, 12)  # rekeyed
    assert parse_key(rekeyed_name(WRITER.key(12))) == (WRITER, 12)
    assert parse_key("segments/1732000000000-abcd1234-00000001.seg") is None
    assert parse_key("fleet/node-a/7f3a01/000000000001.seg") is None
    assert parse_key("segments/sqlfleet-0.headless/1/000000000003.seg") == (
        Writer("sqlfleet-0.headless", "1"),
        3,
    )
    for node, incarnation in (("", "1"), ("a/b", "1"), ("a", ".x"), ("a", "x" * 129)):
        with pytest.raises(ValueError):
            Writer(node, incarnation)


def test_fencing_goes_one_past_the_last_segment_and_is_reused(replica: ReplicaClient) -> None:
    assert fence_incarnation(replica, "node-b", "01") == 1  # nothing shipped: the fence is seq 1
    for seq in (1, 2, 3):
        replica.put(WRITER.key(seq), b"not read", if_absent=True)
    assert fence_incarnation(replica, WRITER.node, WRITER.incarnation, by="node-c") == 4
    assert fence_incarnation(replica, WRITER.node, WRITER.incarnation, by="node-d") == 4
    assert top(replica, WRITER) == (4, True)
    with pytest.raises(ObjectExists):
        replica.put(WRITER.key(4), b"the old writer's next segment", if_absent=True)
    assert incarnation_segments(replica, WRITER.node, WRITER.incarnation) == (
        [WRITER.key(1), WRITER.key(2), WRITER.key(3)],
        4,
    )


def test_racing_fencers_agree_on_one_fence(replica: ReplicaClient) -> None:
    replica.put(WRITER.key(1), b"x", if_absent=True)
    barrier = threading.Barrier(8)
    seqs: list[int] = []

    def fence() -> None:
        barrier.wait()
        seqs.append(fence_incarnation(replica, WRITER.node, WRITER.incarnation))

    threads = [threading.Thread(target=fence) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seqs == [2] * 8
    assert [o.key for o in replica.list(WRITER.prefix)] == [WRITER.key(1), WRITER.key(2)]


def test_retention_keeps_the_newest_segment_of_each_incarnation() -> None:
    old, new = WRITER, Writer("node-b", "02")
    flat = "segments/1732000000000-abcd1234-00000001.seg"
    doomed = [flat, old.key(1), old.key(2), new.key(1)]
    assert keep_newest(doomed, lambda: [new.key(2)]) == [flat, old.key(1), new.key(1)]
    copy = "segments/node-a/7f3a01/000000000002.r0a1b2c3d.seg"  # a rekeyed copy and its original
    assert keep_newest([copy, old.key(2)], lambda: []) == [old.key(2)]
    assert keep_newest([old.key(2)], lambda: [copy]) == [old.key(2)]
    assert keep_newest([flat], lambda: pytest.fail("not needed for flat keys")) == [flat]


# -- the shipper under a writer identity ----------------------------------------------------------


class LosesAnswers(LocalReplica):
    """Its next `lose` puts store the object, then fail as if the answer was lost."""

    lose = 0

    def put_file(self, key: str, source: IO[bytes], *, if_absent: bool = False) -> None:
        super().put_file(key, source, if_absent=if_absent)
        if self.lose:
            self.lose -= 1
            raise ReplicaUnavailable("injected: the answer was lost")


class FenceRig(Rig):
    """A Rig whose shipper writes under `writer` (None: flat keys) to `replica`, recording every
    on_fenced call in `fenced`."""

    def __init__(
        self, root: Path, replica: ReplicaClient | None = None, writer: Writer | None = WRITER
    ) -> None:
        self.writer = writer
        self.fenced: list[ReplicaFenced] = []
        super().__init__(root)
        if replica is not None:
            self.replica.close()
            self.replica = replica  # type: ignore[assignment]  # the rig's fault injection is not used
            self.new_shipper()

    def new_shipper(self) -> Shipper:
        self.shipper = Shipper(
            self.replica,
            self.catalog,
            self.layout,
            self.config,
            "test0001",
            self.lease,
            self.writer,
            self.fenced.append,
        )
        return self.shipper

    def restart(self, tenant_id: str, writer: Writer | None) -> None:
        """A new shipper under `writer` over the same files, the tenant reopened under it."""
        self.close(tenant_id)
        self.writer = writer
        self.new_shipper()
        self.open(tenant_id)


@pytest.fixture
def rig(tmp_path: Path, replica: ReplicaClient) -> Iterator[FenceRig]:
    """A FenceRig over each backend in turn."""
    rig = FenceRig(tmp_path / "rig", replica)
    yield rig
    rig.shipper.stop()
    rig.shutdown()


def _rebuilt_plan(rig: FenceRig, tenant: str) -> restore.RestorePlan:
    """A restore of the tenant to now, planned on a catalog read back from the bucket alone."""
    catalog = BackupCatalog(rig.root / f"rebuilt-{time.monotonic_ns()}.db")
    try:
        sealed = rig.replica if isinstance(rig.replica, SealedReplica) else SealedReplica(rig.replica, None)
        restore.rebuild_catalog(sealed, catalog)
        return restore.plan(tenant, catalog.chunks(tenant), time.time())
    finally:
        catalog.close()


def _rebuilt_rows(rig: FenceRig, tenant: str) -> list[Any]:
    """The tenant's rows restored to now through a catalog read back from the bucket alone."""
    plan = _rebuilt_plan(rig, tenant)
    target = rig.root / f"restored-{time.monotonic_ns()}.db"
    restore.materialize(plan, rig.replica.get_range, target)
    conn = apsw.Connection(str(target))
    try:
        return [r[0] for r in conn.execute("SELECT v FROM t ORDER BY rowid")]
    finally:
        conn.close()


def test_segments_go_under_the_incarnation_one_seq_at_a_time(rig: FenceRig) -> None:
    rig.create("acme")
    rig.insert("acme", 1)
    assert rig.shipper.flush()
    rig.insert("acme", 2)
    assert rig.shipper.flush()
    keys = [o.key for o in rig.replica.list("segments/")]
    assert keys == [WRITER.key(n) for n in range(1, len(keys) + 1)] and len(keys) >= 2
    assert _rebuilt_rows(rig, "acme") == [1, 2]


def test_a_fenced_writer_stops_keeps_its_data_and_says_so_once(rig: FenceRig) -> None:
    rig.create("acme")
    rig.insert("acme", 1, 2)
    assert rig.shipper.flush()
    shipped = [o.key for o in rig.replica.list("segments/")]
    fence = fence_incarnation(rig.replica, WRITER.node, WRITER.incarnation, by="node-b")
    assert fence == len(shipped) + 1
    rig.insert("acme", 3)  # acknowledged locally; its segment will be refused

    assert not rig.shipper.flush()
    assert not rig.shipper.flush()
    rig.shipper.stop()  # its last flush is refused too, quietly

    assert len(rig.fenced) == 1 and rig.shipper.fenced is rig.fenced[0]
    assert WRITER.key(fence) in str(rig.fenced[0])
    assert [o.key for o in rig.replica.list("segments/")] == [*shipped, WRITER.key(fence)]
    assert rig.live("acme") == [1, 2, 3]  # nothing local was dropped
    assert rig.shipper.backlog_bytes("acme") > 0
    assert not rig.shipper.writable("acme")
    health = rig.shipper.health()
    assert not health.ready and health.reason is not None and "fenced" in health.reason
    # a restore from the bucket alone is exact to the last shipped commit
    assert _rebuilt_rows(rig, "acme") == [1, 2]
    recorded = restore.plan("acme", rig.catalog.chunks("acme"), time.time())
    rebuilt = _rebuilt_plan(rig, "acme")
    assert (rebuilt.target_lsn, rebuilt.restored_to) == (recorded.target_lsn, recorded.restored_to)
    assert rig.restored("acme", time.time()) == [1, 2]


def test_the_loop_ends_when_fenced(rig: FenceRig) -> None:
    rig.config = dataclasses.replace(rig.config, flush_interval=0.02)
    rig.new_shipper()
    rig.create("acme")
    rig.shipper.start()
    rig.insert("acme", 1)
    wait_until(lambda: rig.shipper.backlog_bytes() == 0 and rig.catalog.chunks("acme"), 10)
    fence_incarnation(rig.replica, WRITER.node, WRITER.incarnation)
    rig.insert("acme", 2)
    wait_until(lambda: rig.fenced, 10)
    rig.shipper.stop()
    assert len(rig.fenced) == 1
    assert rig.live("acme") == [1, 2]
    assert _rebuilt_rows(rig, "acme") == [1]


def test_a_fence_placed_while_the_old_writer_put_lands_goes_after_it(rig: FenceRig) -> None:
    rig.create("acme")
    assert rig.shipper.flush()
    rig.insert("acme", 1)
    landed: list[int] = []

    class Racing:
        """The fencer's view of the bucket: its first conditional create finds the seq it listed
        as free taken by the old writer's PUT that was in flight."""

        def __init__(self, inner: ReplicaClient) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
            if not landed:
                landed.append(1)
                assert rig.shipper.flush()  # the old writer's segment lands at that very seq
            self.inner.put(key, data, if_absent=if_absent)

    before = len(list(rig.replica.list("segments/")))
    fence = fence_incarnation(Racing(rig.replica), WRITER.node, WRITER.incarnation)
    assert fence == before + 2
    rig.insert("acme", 2)
    assert not rig.shipper.flush()
    assert len(rig.fenced) == 1
    assert _rebuilt_rows(rig, "acme") == [1]  # what landed before the fence is history


def test_an_earlier_attempt_that_landed_is_passed_over_not_taken_for_a_fence(tmp_path: Path) -> None:
    bucket = LosesAnswers(tmp_path / "replica")
    rig = FenceRig(tmp_path / "rig", bucket)
    try:
        rig.create("acme")
        assert rig.shipper.flush()
        rig.insert("acme", 1)
        bucket.lose = 1
        assert not rig.shipper.flush()  # stored, but the shipper cannot know
        rig.insert("acme", 2)
        assert rig.shipper.flush()  # its seq is taken by that attempt: the next one
        assert not rig.fenced and rig.shipper.fenced is None
        keys = [o.key for o in bucket.list("segments/")]
        assert keys == [WRITER.key(n) for n in range(1, len(keys) + 1)]
        assert _rebuilt_rows(rig, "acme") == [1, 2]
    finally:
        rig.shipper.stop()
        rig.shutdown()


def test_a_writer_whose_incarnation_is_fenced_already_ships_nothing(rig: FenceRig) -> None:
    fence_incarnation(rig.replica, WRITER.node, WRITER.incarnation)
    rig.create("acme")
    assert not rig.shipper.flush()
    assert len(rig.fenced) == 1
    assert [o.key for o in rig.replica.list("segments/")] == [WRITER.key(1)]


def test_a_new_shipper_of_the_same_incarnation_continues_its_sequence(rig: FenceRig) -> None:
    rig.create("acme")
    rig.insert("acme", 1)
    assert rig.shipper.flush()
    count = len(list(rig.replica.list("segments/")))
    rig.restart("acme", WRITER)
    rig.insert("acme", 2)
    assert rig.shipper.flush()
    keys = [o.key for o in rig.replica.list("segments/")]
    assert keys[: count + 1] == [WRITER.key(n) for n in range(1, count + 2)]


def test_retention_never_deletes_a_fence_nor_the_top_of_an_incarnation(rig: FenceRig) -> None:
    rig.create("gone")
    rig.insert("gone", 1)
    assert rig.shipper.flush()
    rig.shipper.after_delete("gone")  # ships the tombstone
    fence = fence_incarnation(rig.replica, WRITER.node, WRITER.incarnation)
    time.sleep(0.05)

    retention.enforce(rig.replica, rig.catalog, 0.01)

    assert not rig.catalog.chunks("gone")
    left = [o.key for o in rig.replica.list("segments/")]
    assert left == [WRITER.key(fence - 1), WRITER.key(fence)]
    assert fence_incarnation(rig.replica, WRITER.node, WRITER.incarnation) == fence


def test_flat_keys_of_a_single_server_still_restore_alongside_an_incarnation(tmp_path: Path) -> None:
    rig = FenceRig(tmp_path / "rig", writer=None)  # no writer identity: today's flat keys
    try:
        rig.create("acme")
        rig.insert("acme", 1, 2)
        assert rig.shipper.flush()
        flat = [o.key for o in rig.replica.list("segments/")]
        assert flat and all(parse_key(k) is None for k in flat)
        rig.restart("acme", WRITER)  # the same data dir, now in a cluster
        rig.insert("acme", 3)
        assert rig.shipper.flush()
        assert parse_key(max(o.key for o in rig.replica.list("segments/node-a/"))) == (WRITER, 1)
        assert _rebuilt_rows(rig, "acme") == [1, 2, 3]
        fence_incarnation(rig.replica, WRITER.node, WRITER.incarnation)
        rig.insert("acme", 4)
        assert not rig.shipper.flush()
        assert _rebuilt_rows(rig, "acme") == [1, 2, 3]
    finally:
        rig.shipper.stop()
        rig.shutdown()


@pytest.mark.parametrize("fencer", ["sealed", "plain"])
def test_an_encrypted_writer_is_fenced_whether_the_fence_is_sealed_or_not(
    tmp_path: Path, fencer: str
) -> None:
    inner = LocalReplica(tmp_path / "replica")
    sealed = SealedReplica(inner, Keyring([("k1", b"\x01" * 32)]))
    rig = FenceRig(tmp_path / "rig", sealed)
    try:
        rig.create("acme")
        rig.insert("acme", 1)
        assert rig.shipper.flush()
        fence_incarnation(sealed if fencer == "sealed" else inner, WRITER.node, WRITER.incarnation)
        rig.insert("acme", 2)
        assert not rig.shipper.flush()
        assert len(rig.fenced) == 1
        assert _rebuilt_rows(rig, "acme") == [1]
    finally:
        rig.shipper.stop()
        rig.shutdown()
