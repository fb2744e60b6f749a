"""retention.expired on hand-built catalog rows: what goes, and that no restore inside the window
changes because of it."""

from __future__ import annotations

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
