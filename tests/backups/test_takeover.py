"""Taking over a dead node (backups/takeover.py): real nodes in-process (a Fleet and its Backups
with a writer identity, as a cluster node wires them, no loop running: the test flushes), on a
local replica and on S3 (moto), sealed. The cluster side (when, which slots, the token) is in
tests/cluster/test_failover.py."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backups import takeover
from backups.catalog import BackupCatalog
from backups.catalog_upload import catalog_key, download
from backups.errors import ReplicaFenced, SegmentCorrupt
from backups.fence import Writer, top
from backups.fleet_meta import FleetMeta
from backups.handoff import latest_handoff
from backups.keyring import Keyring
from backups.local_replica import LocalReplica
from backups.rekey import rekeyed_name
from backups.replica import ReplicaClient
from backups.sealed_replica import SealedReplica
from backups.service import Backups
from backups.shipper import Shipper, server_id
from cluster.slots import slot_of
from ops.settings import Settings
from router.auth import Authenticator
from tenants.fleet import Fleet
from tenants.hooks import FleetHooks
from tests.support.s3 import MotoServer, unique_prefix
from tests.support.sim.process import NoGroups

KEYRING = Keyring([("k1", b"\x07" * 32)])
SIGNING = Ed25519PrivateKey.generate()


class Node:
    """One cluster node's fleet and backups over `data_dir`, shipping as `writer`; nothing runs
    on its own. `die` lets go of it without any shutdown work (kill -9)."""

    def __init__(self, data_dir: Path, bucket: Callable[[], ReplicaClient], writer: Writer) -> None:
        settings = Settings.load(environ={})
        self.fenced: list[ReplicaFenced] = []
        self.backups: Backups | None = None

        def hooks(fleet: Fleet) -> list[FleetHooks]:
            replica = SealedReplica(bucket(), KEYRING)
            catalog = BackupCatalog(fleet.layout.system_dir / "backups.db")
            config = settings.shipper_config()
            server = server_id(fleet.layout)
            shipper = Shipper(
                replica,
                catalog,
                fleet.layout,
                config,
                server,
                fleet.lease_if_open,
                writer,
                self.fenced.append,
            )
            meta = FleetMeta(replica, fleet.catalog, NoGroups(), server, 1.0, config.retention)
            self.backups = Backups(replica, catalog, shipper, fleet, meta)
            self.backups.handoffs.slot_of = slot_of
            return self.backups.fleet_hooks()

        self.fleet = Fleet(data_dir, settings.db_config(), settings.pool_config(), hooks)
        self.service.prepare(None)

    @property
    def service(self) -> Backups:
        assert self.backups is not None
        return self.backups

    def make(self, tenant: str, *values: int) -> None:
        self.fleet.create(tenant)
        self.sql(tenant, "CREATE TABLE t(v)")
        self.write(tenant, *values)

    def write(self, tenant: str, *values: int) -> None:
        for v in values:  # one commit each
            self.sql(tenant, "INSERT INTO t(v) VALUES (?)", v)

    def sql(self, tenant: str, statement: str, *args: Any) -> list[Any]:
        with self.fleet.lease(tenant) as handle:
            assert handle.conn is not None
            return [r[0] for r in handle.conn.execute(statement, args)]

    def values(self, tenant: str) -> list[Any]:
        return self.sql(tenant, "SELECT v FROM t ORDER BY rowid")

    def token(self, tenant: str) -> str:
        return Authenticator(SIGNING, "admin", self.fleet.catalog.get).mint(tenant, "rw", 3600)[0]

    def verifies(self, token: str) -> bool:
        principal = Authenticator(SIGNING, "admin", self.fleet.catalog.get).authenticate(f"Bearer {token}")
        return principal.tenant is not None

    def close(self) -> None:
        self.service.stop(time.monotonic() + 30)
        self.fleet.close()
        self.service.close()

    def die(self) -> None:
        with contextlib.suppress(BaseException):
            self.fleet.close()
        with contextlib.suppress(BaseException):
            self.service.close()


@pytest.fixture(params=["local", "s3"])
def bucket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], ReplicaClient]]:
    """A new client of one shared bucket per call (each node closes its own)."""
    if request.param == "local":
        yield lambda: LocalReplica(tmp_path / "replica")
        return
    server: MotoServer = request.getfixturevalue("s3")
    prefix = unique_prefix()
    yield lambda: server.replica(prefix)


@pytest.fixture
def nodes(tmp_path: Path, bucket: Callable[[], ReplicaClient]) -> Iterator[Callable[[str, str], Node]]:
    """Builds nodes (name, incarnation) over the bucket; closes the ones still alive."""
    built: list[Node] = []

    def build(name: str, incarnation: str) -> Node:
        node = Node(tmp_path / f"{name}-{incarnation}", bucket, Writer(name, incarnation))
        built.append(node)
        return node

    yield build
    for node in built:
        node.die()


@pytest.mark.parametrize("uploaded", [True, False], ids=["catalog-uploaded", "died-before-upload"])
def test_a_dead_nodes_tenants_come_back_exact_elsewhere(
    nodes: Callable[[str, str], Node], uploaded: bool
) -> None:
    b = nodes("node-b", "b1")  # up before anything shipped: it knows only what it is handed
    # node c gives tenant "carried" to node a in a planned move; a never restores it
    c = nodes("node-c", "c1")
    c.make("carried", 70)
    c.service.flush()
    carried_slot = slot_of("carried")
    c.fleet.let_go(
        ["carried"], lambda ids: c.service.handoffs.hand_off({carried_slot: 5}, {carried_slot: ids})
    )
    c.close()

    a = nodes("node-a", "a1")
    a.make("acme", 1, 2)
    a.make("gone", 9)
    a.make("late", 5)
    tokens = {t: a.token(t) for t in ("acme", "late")}
    a.service.flush()
    a.fleet.delete("gone")  # ships its tombstone
    if uploaded:
        assert a.service.uploader is not None
        covered = a.service.uploader.upload()
        assert covered is not None and covered.covers["a1"] >= 1
    a.write("acme", 3, 4)  # shipped after the upload: read from segments
    a.write("late", 6)
    a.service.flush()
    a.write("acme", 5)  # never shipped: lost with the node (default ack)

    # a is gone (unresponsive, not stopped); b takes its slots over
    slots = {slot_of(t) for t in ("acme", "gone", "late", "carried")}
    handed = b.service.take_over("node-a", ["a1"], slots, 20)
    assert handed == 3  # acme, late, carried: not gone
    fence, fenced = top(b.service.replica, Writer("node-a", "a1"))
    assert fenced
    a.write("acme", 6)
    with pytest.raises(ReplicaFenced):
        a.service.shipper.ship()  # a zombie's next upload is refused
    assert len(a.fenced) == 1
    manifests = {slot: latest_handoff(b.service.replica, slot) for slot in slots}
    assert b.service.take_over("node-a", ["a1"], slots, 20) == 3  # retried: the same result
    assert {slot: latest_handoff(b.service.replica, slot) for slot in slots} == manifests
    assert top(b.service.replica, Writer("node-a", "a1")) == (fence, True)  # the fence reused
    # even if something landed past the fence, nobody reads it
    b.service.replica.put(Writer("node-a", "a1").key(fence + 1), b"not a segment")
    assert b.service.take_over("node-a", ["a1"], slots, 20) == 3
    assert {slot: latest_handoff(b.service.replica, slot) for slot in slots} == manifests
    assert sorted(t for m in manifests.values() for t in m) == ["acme", "carried", "late"]
    for tenant in ("acme", "late"):  # who they are, as a published it
        record, row = manifests[slot_of(tenant)][tenant].record, a.fleet.catalog.get(tenant)
        assert record is not None and row is not None
        assert (record.incarnation, record.token_generation) == (row.incarnation, row.token_generation)
    a.die()
    assert not b.service.catalog.chunks("acme")  # what b restores, it learns from the manifest

    assert b.service.recover("acme") and b.service.recover("late") and b.service.recover("carried")
    assert not b.service.recover("gone")
    assert b.values("acme") == [1, 2, 3, 4]
    assert b.values("late") == [5, 6]
    assert b.values("carried") == [70]
    assert all(b.verifies(token) for token in tokens.values())  # minted on a: still good on b


def test_a_node_that_never_shipped_is_fenced_at_seq_one_and_hands_over_what_it_was_given(
    nodes: Callable[[str, str], Node],
) -> None:
    b = nodes("node-b", "b1")
    c = nodes("node-c", "c1")
    c.make("carried", 70)
    c.service.flush()
    slot = slot_of("carried")
    c.fleet.let_go(["carried"], lambda ids: c.service.handoffs.hand_off({slot: 5}, {slot: ids}))
    c.close()
    a = nodes("node-a", "a1")  # joined, got the slot, died before its first flush
    a.die()
    b.service.replica.put(catalog_key("node-a"), b"not a catalog")  # unusable: segments tell
    assert b.service.take_over("node-a", [], {slot}, 20) == 1  # none listed: none to fence
    assert top(b.service.replica, Writer("node-a", "a1")) == (0, False)
    assert b.service.take_over("node-a", ["a1"], {slot}, 20) == 1
    assert top(b.service.replica, Writer("node-a", "a1")) == (1, True)
    assert b.service.recover("carried") and b.values("carried") == [70]


def test_incarnations_found_in_the_bucket_are_fenced_when_none_is_named(
    nodes: Callable[[str, str], Node],
) -> None:
    b = nodes("node-b", "b1")
    old = nodes("node-a", "a1")
    old.make("acme", 1)
    old.service.flush()
    old.close()
    new = nodes("node-a", "a2")  # the same node restarted on a new disk
    new.make("beta", 2)
    new.service.flush()
    assert new.service.uploader is not None and new.service.uploader.upload() is not None
    new.write("beta", 3)
    new.service.flush()
    new.die()
    slots = {slot_of("acme"), slot_of("beta")}
    assert b.service.take_over("node-a", [], slots, 30) == 2
    for incarnation in ("a1", "a2"):
        assert top(b.service.replica, Writer("node-a", incarnation))[1]
    assert b.service.recover("acme") and b.values("acme") == [1]
    assert b.service.recover("beta") and b.values("beta") == [2, 3]
    assert b.service.replica.exists(catalog_key("node-a"))


def test_a_node_uploads_its_catalog_when_it_stops_cleanly(nodes: Callable[[str, str], Node]) -> None:
    a = nodes("node-a", "a1")
    a.service.start(None)
    a.make("acme", 1)
    a.close()  # the last flush, then the last upload
    b = nodes("node-b", "b1")
    covered = download(b.service.replica, "node-a", b.fleet.layout.system_dir / "copy.db")
    assert covered is not None and covered.covers == {"a1": top(b.service.replica, Writer("node-a", "a1"))[0]}
    assert b.service.take_over("node-a", ["a1"], {slot_of("acme")}, 20) == 1
    assert b.service.recover("acme") and b.values("acme") == [1]


def test_a_segment_rekeyed_after_the_upload_is_read_from_its_copy(nodes: Callable[[str, str], Node]) -> None:
    b = nodes("node-b", "b1")
    a = nodes("node-a", "a1")
    a.make("acme", 1, 2)
    a.service.flush()
    assert a.service.uploader is not None and a.service.uploader.upload() is not None
    replica = a.service.replica
    for info in list(replica.list(Writer("node-a", "a1").prefix)):  # a rekey, then its retention
        replica.put(rekeyed_name(info.key), replica.get(info.key))
        replica.delete([info.key])
    a.die()
    assert b.service.take_over("node-a", ["a1"], {slot_of("acme")}, 20) == 1
    assert b.service.recover("acme") and b.values("acme") == [1, 2]


def test_segment_indexes_are_read_in_parallel_and_recorded_in_order_up_to_a_fence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no catalog upload every segment's index is read: INDEX_WORKERS at a time (under
    ack=replica a write can be a segment; one GET at a time made 173 of them 3.6 s), recorded in
    key order; past another's FENCE nothing is recorded and a read error there is not raised."""
    writer, other = Writer("node-a", "a1"), Writer("node-a", "a2")
    keys = [writer.key(seq) for seq in range(1, 41)] + [other.key(1), other.key(2), other.key(3)]
    lock, running, peak = threading.Lock(), [0], [0]

    def read_index(read: object, key: str) -> tuple[dict[str, object], list[object]]:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            time.sleep(0.02)
            if key == other.key(3):
                raise SegmentCorrupt("past the fence: never to be read")
            return ({"fence": {"by": "x"}} if key == other.key(2) else {"created": 1.0}), []
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(takeover, "read_index", read_index)
    view = BackupCatalog(tmp_path / "view.db")
    try:
        started = time.monotonic()
        takeover._record_segments(cast(SealedReplica, object()), view, keys)
        elapsed = time.monotonic() - started
        recorded = [r[0] for r in view._db.execute("SELECT key FROM segments ORDER BY key")]
    finally:
        view.close()
    assert recorded == keys[:41]  # the FENCE and what is past it: not segments of the backups
    assert 1 < peak[0] <= takeover.INDEX_WORKERS
    assert elapsed < 0.02 * len(keys) * 0.75  # serially it would take 0.86 s
