"""Restore to a moment: the newest snapshot at or before it, plus every commit at or before it.

The generation chosen is the one that was live at that moment (the latest to start at or before
it), so history before an in-place restore stays reachable. Frames are plain page writes, applied
in LSN order to the snapshot's page image in the destination file (chunks stream through a bounded
buffer: memory does not grow with the tenant's size); the result is checked with integrity_check.

Restores plan from the catalog; `rebuild_catalog` reads it back from the bucket. A chunk's place
in a tenant's history is its generation and LSN range; the segment holding it records its writer
(server, node and incarnation) and time. Of a fenced incarnation only the segments below its
FENCE are read (backups/fence.py): nothing its writer shipped after a takeover is history.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import apsw

from backups.catalog import BackupCatalog, ChunkRow
from backups.errors import BackupBroken, NoRestorePoint
from backups.fence import SEGMENTS, BelowFences
from backups.sealed_replica import SealedReplica
from backups.segment import FRAMES, SNAPSHOT, TOMBSTONE, RangeReader, copy_snapshot, read_frames, read_index


@dataclass(frozen=True)
class RestorePlan:
    tenant: str
    generation: str
    snapshot: ChunkRow
    frames: list[ChunkRow]
    target_lsn: int
    restored_to: float  # time of the last commit applied (or of the snapshot, if none)


def generations(rows: list[ChunkRow]) -> dict[str, float]:
    """Generation id -> start time: its oldest snapshot's time. That is the LSN-0 snapshot until
    retention drops it; then the oldest kept one, still at or before the retention horizon, so
    every restore inside the window picks the same generation as before."""
    starts: dict[str, float] = {}
    for r in rows:
        if r.kind == SNAPSHOT and r.first_time < starts.get(r.generation, float("inf")):
            starts[r.generation] = r.first_time
    return starts


def deleted_at(rows: list[ChunkRow]) -> float | None:
    """When the tenant was deleted, if its last event is a deletion (a tombstone at or after its
    newest generation's start); None otherwise."""
    deleted = max((r.first_time for r in rows if r.kind == TOMBSTONE), default=None)
    started = max(generations(rows).values(), default=0.0)
    return deleted if deleted is not None and deleted >= started else None


def newest_event(rows: list[ChunkRow]) -> float:
    """The time of the newest event `rows` hold (a commit, a snapshot, a deletion): seconds
    since the epoch, 0.0 for none."""
    return max((max(r.first_time, r.last_time) for r in rows), default=0.0)


def plan(tenant: str, rows: list[ChunkRow], at: float) -> RestorePlan:
    """Raises NoRestorePoint when nothing was backed up at or before `at`, BackupBroken on a gap.
    Moments compare in whole microseconds (see `micros`)."""
    limit = micros(at)
    started = {g: t for g, t in generations(rows).items() if micros(t) <= limit}
    if not started:
        raise NoRestorePoint(f"tenant {tenant!r} has no backup at or before that time")
    generation = max(started, key=lambda g: (started[g], g))
    mine = [r for r in rows if r.generation == generation]
    snapshots = [r for r in mine if r.kind == SNAPSHOT and micros(r.first_time) <= limit]
    snapshot = max(snapshots, key=lambda r: r.first_lsn)
    shipped = [(lsn, t) for r in mine if r.kind == FRAMES for lsn, t in r.commits]
    commits = [(lsn, t) for lsn, t in shipped if lsn > snapshot.first_lsn and micros(t) <= limit]
    if commits:
        target, restored_to = max(commits)
    else:  # the snapshot alone: report the last commit it holds, if that is still known
        held = [(lsn, t) for lsn, t in shipped if lsn <= snapshot.first_lsn]
        target, restored_to = snapshot.first_lsn, max(held)[1] if held else snapshot.first_time
    return RestorePlan(
        tenant, generation, snapshot, _cover(mine, snapshot.first_lsn, target), target, restored_to
    )


def rebuild_catalog(
    replica: SealedReplica, catalog: BackupCatalog, progress: Callable[[int, int], None] | None = None
) -> int:
    """Record in `catalog` every chunk of the segments in the bucket, of both key forms; returns
    the objects looked at. Segments made before encryption was turned on are read too (restore
    refuses them until `rekey` has sealed them); one sealed with a key this server lacks raises
    BackupKeyMissing, before anything is recorded. The caller holds `catalog.maintenance`."""
    return record_segments(replica, catalog, [o.key for o in replica.list(SEGMENTS)], progress)


def record_segments(
    replica: SealedReplica,
    catalog: BackupCatalog,
    keys: list[str],
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Record in `catalog` the chunks of the segments at `keys` (in key order, as `list` yields
    them), but of a fenced incarnation only those below its FENCE (which must be among `keys`,
    or left out with what is past it), and never a FENCE; returns len(keys). Raises as
    `rebuild_catalog` does, BackupKeyMissing before anything is recorded."""
    # all or nothing on keys: a catalog rebuilt from some segments would restore less
    replica.check_readable(keys)
    fences = BelowFences()

    def read(key: str, start: int, length: int) -> bytes:
        return replica.read_range(key, start, length, allow_plaintext=True)

    for done, key in enumerate(keys, 1):
        if fences.wanted(key):
            meta, refs = read_index(read, key)
            if not fences.fence(key, meta):  # a FENCE is no segment: never recorded, never deleted
                catalog.add_segment(key, float(meta.get("created", 0.0)), refs)  # type: ignore[arg-type]
        if progress:
            progress(done, len(keys))
    return len(keys)


def check_covered(plan: RestorePlan, rows: list[ChunkRow], shipped: tuple[str, int] | None) -> None:
    """Raise BackupBroken if the catalog lacks commits that reached the replica and that a
    restore to the plan's moment may need: `shipped` is (generation, last LSN) the shipper
    knows to be in the replica. A plan that stops before the last LSN the catalog knows of
    needs nothing after it (LSNs grow with time within a generation)."""
    if shipped is None or shipped[0] != plan.generation:
        return
    mine = [r for r in rows if r.generation == plan.generation and r.kind in (FRAMES, SNAPSHOT)]
    known = max((r.last_lsn for r in mine), default=0)
    if known >= shipped[1] or plan.target_lsn < known:
        return
    raise BackupBroken(
        f"the backup catalog lacks LSNs {known + 1}..{shipped[1]} of generation {plan.generation} of "
        f"tenant {plan.tenant!r}, which reached the replica: rebuild the catalog from the bucket "
        "(POST /v1/admin/backups/rebuild) and restore again"
    )


def micros(moment: float) -> int:
    """A unix time in whole microseconds, rounded the way RFC 3339 output (datetime) rounds it:
    so a reported `restored_to`, fed back as the target, includes that very commit."""
    whole = math.floor(moment)
    return whole * 1_000_000 + round((moment - whole) * 1_000_000)


def _cover(rows: list[ChunkRow], after: int, target: int) -> list[ChunkRow]:
    """Frame chunks covering LSNs after+1 .. target, in order (chunks may overlap after retries)."""
    frames = sorted((r for r in rows if r.kind == FRAMES), key=lambda r: (r.first_lsn, -r.last_lsn))
    chosen: list[ChunkRow] = []
    need = after + 1
    while need <= target:
        candidates = [r for r in frames if r.first_lsn <= need <= r.last_lsn]
        if not candidates:
            raise BackupBroken(f"backup has a gap at LSN {need}")
        best = max(candidates, key=lambda r: r.last_lsn)
        chosen.append(best)
        need = best.last_lsn + 1
    return chosen


def materialize(restore: RestorePlan, read: RangeReader, dest: Path) -> None:
    """Write the database `restore` describes to `dest` (durably) and integrity-check it.
    Raises BackupBroken if the result is not a sound database."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    for side in ("-wal", "-shm", "-journal"):
        Path(f"{dest}{side}").unlink(missing_ok=True)
    snap = restore.snapshot
    page_size = snap.page_size
    with open(dest, "w+b") as out:
        size_pages = copy_snapshot(read, snap.key, snap.offset, snap.length, out) // page_size
        for chunk in restore.frames:
            pages = read_frames(read, chunk.key, chunk.offset, chunk.length, chunk.page_size)
            with contextlib.closing(pages):
                for lsn, frame in enumerate(pages, chunk.first_lsn):
                    if lsn > restore.target_lsn:
                        break
                    if lsn <= snap.first_lsn:
                        continue
                    out.seek((frame.page_no - 1) * page_size)  # past the end: the gap reads as zeros
                    out.write(frame.data)
                    if frame.commit_size:
                        size_pages = frame.commit_size
        out.truncate(size_pages * page_size)
        out.flush()
        os.fsync(out.fileno())
    check(dest)


def check(path: Path) -> None:
    """Raise BackupBroken unless `path` passes PRAGMA integrity_check; what the local disk
    raises (an I/O error, a full disk) propagates as it is: the backup is not to blame."""
    conn = apsw.Connection(str(path))
    try:
        conn.execute("PRAGMA locking_mode=EXCLUSIVE").fetchall()
        result = conn.execute("PRAGMA integrity_check").fetchall()
    except (apsw.IOError, apsw.FullError, apsw.CantOpenError, apsw.NoMemError):
        raise
    except apsw.Error as exc:
        raise BackupBroken(f"restored database does not open: {exc}") from None
    finally:
        conn.close()
    Path(f"{path}-wal").unlink(missing_ok=True)
    if result != [("ok",)]:
        raise BackupBroken(f"restored database fails integrity_check: {result[:3]}")
