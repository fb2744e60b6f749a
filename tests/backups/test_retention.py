"""retention.expired on hand-built catalog rows: what goes, and that no restore inside the window
changes because of it."""

from __future__ import annotations

import dataclasses
import math
import random
import time
from pathlib import Path

import pytest

from backups import restore, retention
from backups.catalog import BackupCatalog, ChunkRow
from backups.errors import NoRestorePoint
from backups.local_replica import LocalReplica
from backups.segment import FRAMES, SNAPSHOT, TOMBSTONE


def snap(gen: str, lsn: int, at: float, key: str = "k") -> ChunkRow:
    return ChunkRow("t", gen, SNAPSHOT, lsn, lsn, at, at, 4096, key, 0, 1, ())


def frames(gen: str, commits: list[tuple[int, float]], first: int | None = None, key: str = "k") -> ChunkRow:
    start = commits[0][0] if first is None else first
    return ChunkRow(
        "t",
        gen,
        FRAMES,
        start,
        commits[-1][0],
        commits[0][1],
        commits[-1][1],
        4096,
        key,
        0,
        1,
        tuple(commits),
    )


def tombstone(at: float) -> ChunkRow:
    return ChunkRow("t", "", TOMBSTONE, 0, 0, at, at, 0, "k", 0, 1, ())


def ids(rows: list[ChunkRow]) -> set[tuple[str, str, int, int]]:
    return {(r.generation, r.kind, r.first_lsn, r.last_lsn) for r in rows}


ONE_GENERATION = [
    snap("g1", 0, 10.0),
    frames("g1", [(2, 11.0), (5, 12.0)], first=1),
    snap("g1", 5, 13.0),
    frames("g1", [(6, 14.0), (8, 15.0)]),
    snap("g1", 8, 16.0),
    frames("g1", [(9, 17.0)]),
]


def test_keeps_the_newest_snapshot_before_the_horizon_and_what_follows() -> None:
    assert ids(retention.expired(ONE_GENERATION, 14.5)) == {("g1", SNAPSHOT, 0, 0), ("g1", FRAMES, 1, 5)}
    assert ids(retention.expired(ONE_GENERATION, 100.0)) == ids(ONE_GENERATION[:4])
    assert retention.expired(ONE_GENERATION, 12.5) == []  # the first snapshot is still the newest
    assert retention.expired(ONE_GENERATION, 5.0) == []  # horizon before any backup


def test_an_older_generation_goes_once_a_newer_one_started_before_the_horizon() -> None:
    rows = [*ONE_GENERATION, snap("g2", 0, 20.0), frames("g2", [(1, 21.0), (3, 22.0)])]

    assert retention.expired(rows, 19.0) == retention.expired(ONE_GENERATION, 19.0)
    assert ids(retention.expired(rows, 20.5)) == ids(ONE_GENERATION)
    assert retention.expired(rows, 30.0) == ONE_GENERATION


def test_a_deleted_tenant_is_kept_for_the_window_then_dropped_entirely() -> None:
    rows = [*ONE_GENERATION, tombstone(18.0)]

    assert tombstone(18.0) not in retention.expired(rows, 17.5)
    assert sorted(ids(retention.expired(rows, 18.5))) == sorted(ids(rows))


def test_a_tenant_recreated_after_its_deletion_keeps_its_new_generation() -> None:
    rows = [*ONE_GENERATION, tombstone(18.0), snap("g2", 0, 19.0), frames("g2", [(1, 19.5)])]

    dropped = retention.expired(rows, 25.0)
    assert ids(dropped) == ids([*ONE_GENERATION, tombstone(18.0)])


def history(rng: random.Random) -> list[ChunkRow]:
    """Random generations of random commits, snapshots now and then, maybe a deletion between."""
    rows: list[ChunkRow] = []
    now = 0.0
    for g in range(rng.randint(1, 3)):
        gen = f"g{g}"
        now += rng.uniform(0.1, 5.0)
        rows.append(snap(gen, 0, now))
        lsn = 0
        for _ in range(rng.randint(0, 8)):
            commits = []
            first = lsn + 1
            for _ in range(rng.randint(1, 4)):
                lsn += rng.randint(1, 3)
                now += rng.uniform(0.1, 2.0)
                commits.append((lsn, now))
            rows.append(frames(gen, commits, first=first))
            if rng.random() < 0.3:
                now += rng.uniform(0.01, 1.0)
                rows.append(snap(gen, lsn, now))
        if rng.random() < 0.3:
            now += rng.uniform(0.1, 2.0)
            rows = [r for r in rows if r.kind != TOMBSTONE] + [tombstone(now)]  # the catalog keeps one
    return rows


def outcome(rows: list[ChunkRow], at: float) -> object:
    try:
        p = restore.plan("t", rows, at)
    except NoRestorePoint:
        return None
    # restored_to of a snapshot-only restore may fall back to the snapshot's time once the
    # frames that held its last commit expired: compared only when frames are applied
    reported = p.restored_to if p.frames else None
    return (
        p.generation,
        p.snapshot.first_lsn,
        p.target_lsn,
        reported,
        [(f.first_lsn, f.last_lsn) for f in p.frames],
    )


@pytest.mark.parametrize("seed", range(40))
def test_no_restore_inside_the_window_changes(seed: int) -> None:
    rng = random.Random(seed)
    rows = history(rng)
    end = max(r.last_time for r in rows) + 1.0
    for _ in range(10):
        horizon = rng.uniform(0.0, end)
        kept = [r for r in rows if r not in retention.expired(rows, horizon)]
        deleted = max((r.first_time for r in rows if r.kind == TOMBSTONE), default=None)
        starts = restore.generations(rows).values()
        if deleted is not None and deleted < horizon and all(t <= deleted for t in starts):
            assert kept == []  # deleted before the window: nothing left to restore
            continue
        for at in [horizon, end, *(rng.uniform(horizon, end) for _ in range(10))]:
            assert outcome(kept, at) == outcome(rows, at), (horizon, at)


def test_a_cluster_node_deletes_only_its_own_segments(tmp_path: Path) -> None:
    """Rows of a tenant handed over point at another node's shared segments: once they expire
    here they are forgotten, never deleted (that node's other tenants may still need them)."""
    replica = LocalReplica(tmp_path / "replica")
    catalog = BackupCatalog(tmp_path / "backups.db")
    theirs, mine = "segments/n1/a1/000000000001.seg", "segments/n2/b2/000000000001.seg"
    newest = "segments/n2/b2/000000000002.seg"
    for key in (theirs, mine, newest):
        replica.put(key, b"segment")
    catalog.add_rows(
        [snap("g1", 0, 10.0, key=theirs), snap("g1", 2, 11.0, key=mine), snap("g1", 4, 12.0, key=newest)]
    )
    try:
        retention.enforce(replica, catalog, window=time.time() - 15.0, node="n2")
        assert {info.key for info in replica.list("segments/")} == {theirs, newest}
        assert catalog.referenced_segments() == [newest]
        assert theirs not in catalog.unreferenced_segments()  # forgotten here, kept in the bucket
    finally:
        catalog.close()


# -- Retention: the shipper's passes read only the tenants whose chunks can have expired


class _NoBucket:
    """A replica whose deletes are noted, not done (these tests look at the catalog)."""

    def __init__(self) -> None:
        self.deleted: list[str] = []

    def delete(self, keys: list[str]) -> None:
        self.deleted += keys


def _of(tenant: str, rows: list[ChunkRow], shift: float = 0.0) -> list[ChunkRow]:
    return [
        dataclasses.replace(
            r,
            tenant=tenant,
            first_time=r.first_time + shift,
            last_time=r.last_time + shift,
            commits=tuple((lsn, at + shift) for lsn, at in r.commits),
        )
        for r in rows
    ]


def _all_rows(catalog: BackupCatalog) -> set[tuple[str, str, str, int, int]]:
    return {
        (r.tenant, r.generation, r.kind, r.first_lsn, r.last_lsn)
        for t in catalog.tenants()
        for r in catalog.chunks(t)
    }


def test_a_pass_reads_only_the_tenants_whose_chunks_the_horizon_passed(tmp_path: Path) -> None:
    catalog = BackupCatalog(tmp_path / "backups.db")
    clock = [100.0]
    try:
        for i, tenant in enumerate("abc"):
            catalog.add_rows(_of(tenant, ONE_GENERATION, shift=100.0 * i))  # a: 10-17, b: 110-117, ...
        read: list[str] = []
        real_chunks = catalog.chunks

        def chunks(tenant: str, generation: str | None = None) -> list[ChunkRow]:
            read.append(tenant)
            return real_chunks(tenant, generation)

        catalog.chunks = chunks  # type: ignore[method-assign]
        passes = retention.Retention(_NoBucket(), catalog, window=50.0, clock=lambda: clock[0])  # type: ignore[arg-type]

        passes.run()  # the first pass is full: horizon 50, a's whole history is before it
        assert read == ["a"]  # b and c: every chunk after the horizon, nothing to drop
        assert ids(real_chunks("a")) == ids(retention.expired(ONE_GENERATION, 50.0)) ^ ids(ONE_GENERATION)

        read.clear()
        clock[0] = 164.5  # horizon 114.5: past b's chunks up to 114
        passes.run()
        assert read == ["b"]
        assert ids(real_chunks("b")) == ids(ONE_GENERATION) - ids(retention.expired(ONE_GENERATION, 14.5))

        read.clear()
        clock[0] = 164.6  # the horizon passed no chunk's time
        passes.run()
        assert read == []
    finally:
        catalog.close()


def test_a_pass_reads_a_tenant_given_rows_the_horizon_had_passed(tmp_path: Path) -> None:
    """Rows from elsewhere (a handover, a takeover) may be older than the last pass's horizon:
    the catalog marks their tenant for the next pass."""
    catalog = BackupCatalog(tmp_path / "backups.db")
    clock = [100.0]
    try:
        passes = retention.Retention(_NoBucket(), catalog, window=50.0, clock=lambda: clock[0])  # type: ignore[arg-type]
        passes.run()
        catalog.add_rows(_of("handed", ONE_GENERATION))  # times 10-17: long before horizon 50
        clock[0] = 100.1
        passes.run()
        dropped = ids(retention.expired(ONE_GENERATION, 50.1))
        assert dropped and ids(catalog.chunks("handed")) == ids(ONE_GENERATION) - dropped
    finally:
        catalog.close()


@pytest.mark.parametrize("seed", range(12))
def test_passes_drop_what_full_passes_drop(tmp_path: Path, seed: int) -> None:
    """Random histories of several tenants, rows added as time goes (new ones, and now and then
    a history from elsewhere that is already old): after every pass the catalog holds exactly
    what it holds after a full pass at the same moment."""
    rng = random.Random(seed)
    incremental = BackupCatalog(tmp_path / "incremental.db")
    full = BackupCatalog(tmp_path / "full.db")
    clock = [0.0]
    try:
        passes = retention.Retention(
            _NoBucket(),  # type: ignore[arg-type]
            incremental,
            window=20.0,
            full_every=math.inf,
            clock=lambda: clock[0],
        )
        histories = {f"t{i}": _of(f"t{i}", history(rng), shift=rng.uniform(0.0, 60.0)) for i in range(8)}
        pending = sorted((r for rows in histories.values() for r in rows), key=lambda r: r.first_time)
        while clock[0] < 120.0:
            clock[0] += rng.uniform(0.5, 6.0)
            due = [r for r in pending if r.first_time <= clock[0]]  # recorded once it happened
            pending = [r for r in pending if r.first_time > clock[0]]
            if rng.random() < 0.2:  # a handover: a whole history, old already
                tenant = f"h{clock[0]:.0f}"
                due += _of(tenant, history(rng), shift=clock[0] - rng.uniform(10.0, 60.0))
            for catalog in (incremental, full):
                catalog.add_rows(due)
            passes.run()
            retention.enforce(_NoBucket(), full, 20.0, now=clock[0])  # type: ignore[arg-type]
            assert _all_rows(incremental) == _all_rows(full), clock[0]
    finally:
        incremental.close()
        full.close()
