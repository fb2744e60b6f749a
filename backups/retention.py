"""Retention: which chunks no restore inside the window needs, per tenant, and deleting them.

For any moment T at or after the horizon, a restore uses the generation live at T and, in it,
the newest snapshot at or before T. So a tenant keeps: the generation live at the horizon from
its newest snapshot at or before the horizon on, and everything newer. A tenant deleted before
the horizon (no generation started after its tombstone) keeps nothing. A shared segment goes
only when no tenant keeps any chunk in it, and never the newest segment of an incarnation, nor a
FENCE (never in the catalog): a fencer must still see how far the incarnation went
(backups/fence.py).

In a cluster a node deletes only segments it wrote itself (`segments/<node>/...`). One it knows
from another node (rows of a tenant handed over or taken over) holds chunks of tenants that other
nodes keep, whom this catalog does not know: it is only forgotten here. Its writer keeps it as
long as its own rows of that tenant need it, which is at least as long as ours do (ours are its
rows plus newer ones, so our newest snapshot before the horizon is never older than its). A dead
node's segments are never deleted (a leak, not a loss).
"""

from __future__ import annotations

import time

from backups.catalog import BackupCatalog, ChunkRow
from backups.fence import SEGMENTS, keep_newest
from backups.replica import ReplicaClient
from backups.restore import generations
from backups.segment import FRAMES, SNAPSHOT, TOMBSTONE


def expired(rows: list[ChunkRow], horizon: float) -> list[ChunkRow]:
    """The chunks of one tenant that no restore to a moment >= `horizon` needs."""
    starts = generations(rows)
    deleted = max((r.first_time for r in rows if r.kind == TOMBSTONE), default=None)
    if deleted is not None and deleted < horizon and all(t <= deleted for t in starts.values()):
        return list(rows)
    live = [g for g, t in starts.items() if t <= horizon]
    if not live:
        return [r for r in rows if r.kind == TOMBSTONE and r.first_time < horizon]
    current = max(live, key=lambda g: (starts[g], g))
    snapshots = [
        r for r in rows if r.generation == current and r.kind == SNAPSHOT and r.first_time <= horizon
    ]
    keep_from = max(r.first_lsn for r in snapshots)
    old_generations = {g for g in live if g != current}
    drop = []
    for r in rows:
        superseded = r.generation == current and (
            (r.kind == SNAPSHOT and r.first_lsn < keep_from) or (r.kind == FRAMES and r.last_lsn <= keep_from)
        )
        if r.generation in old_generations or superseded or (r.kind == TOMBSTONE and r.first_time < horizon):
            drop.append(r)
    return drop


def enforce(
    replica: ReplicaClient, catalog: BackupCatalog, window: float, node: str | None = None
) -> tuple[int, int]:
    """Delete what no restore inside the last `window` seconds needs: its catalog rows, then
    the segments no row refers to any more (`node`: a cluster node's id; only its own are
    deleted, others' forgotten). Returns (chunks forgotten, segment objects deleted).
    Raises ReplicaError (what it forgot stays forgotten; the segments go on a later run)."""
    horizon = time.time() - window
    dropped = 0
    for tenant in catalog.tenants():
        rows = expired(catalog.chunks(tenant), horizon)
        catalog.delete_chunks(rows)
        dropped += len(rows)
    with catalog.maintenance:  # a segment being rekeyed is unreferenced until its rows move
        keys = catalog.unreferenced_segments()
        if node is not None:
            own = f"{SEGMENTS}{node}/"
            catalog.forget_segments(k for k in keys if not k.startswith(own))
            keys = [k for k in keys if k.startswith(own)]
        if keys:
            keys = keep_newest(keys, catalog.referenced_segments)
        if keys:
            replica.delete(keys)
            catalog.forget_segments(keys)
    return dropped, len(keys)
