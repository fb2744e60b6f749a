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

import math
import time
from collections.abc import Callable, Collection

from backups.catalog import BackupCatalog, ChunkRow
from backups.fence import SEGMENTS, keep_newest
from backups.replica import ReplicaClient
from backups.restore import generations
from backups.segment import FRAMES, SNAPSHOT, TOMBSTONE

FULL_EVERY = 3600.0  # seconds between the shipper's full retention passes (see Retention)


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
    replica: ReplicaClient,
    catalog: BackupCatalog,
    window: float,
    node: str | None = None,
    *,
    since: float = -math.inf,
    also: Collection[str] = (),
    now: float | None = None,
) -> tuple[int, int]:
    """Delete what no restore inside the last `window` seconds (before `now`, default the
    clock) needs: its catalog rows, then the segments no row refers to any more (`node`: a
    cluster node's id; only its own are deleted, others' forgotten). Reads the tenants with a
    chunk whose first time is within [`since`, horizon], and those in `also`: by default every
    tenant that can have anything to drop (one whose chunks all came after the horizon has
    none: no generation of it had started, nor was it deleted). Returns (chunks forgotten,
    segment objects deleted). Raises ReplicaError (what it forgot stays forgotten; the segments
    go on a later run)."""
    horizon = (time.time() if now is None else now) - window
    dropped = 0
    for tenant in sorted({*catalog.tenants_between(since, horizon), *also}):
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


class Retention:
    """The shipper's retention passes (from one thread): `run` every minute or so. A full pass
    first and every `full_every` seconds; in between, a pass reads only the tenants whose
    chunks can have expired since the last pass, not every tenant (at 100,000 tenants a full
    pass took 4.4 s of CPU, holding the catalog's lock for each tenant, every minute).

    Why that is enough: `expired(rows, horizon)` compares the horizon only with the chunks'
    first times (a generation starts at its oldest snapshot's), so what a tenant can drop
    changes only when the horizon passes one of its chunks' first times, or when it gains a
    chunk whose first time the horizon has passed already (a later one changes nothing until
    the horizon reaches it). The first kind is a range query (`BackupCatalog.tenants_between`
    from the last pass's horizon on); the second is never the shipper's own, new chunks, but
    rows from elsewhere (a handover, a takeover, a rebuild from the bucket), which the catalog
    marks (`mark_rows_below`). The periodic full pass is the backstop for anything else that
    changes a tenant's rows; skipping a tenant only delays what it drops, it never drops more."""

    def __init__(
        self,
        replica: ReplicaClient,
        catalog: BackupCatalog,
        window: float,
        node: str | None = None,
        full_every: float = FULL_EVERY,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.replica, self.catalog, self.window, self.node = replica, catalog, window, node
        self.full_every = full_every
        self._clock = clock
        self._covered = -math.inf  # the last pass's horizon: every earlier time was looked at
        self._full_at = -math.inf
        self._pending: set[str] = set()  # marked tenants of a pass that failed

    def run(self) -> tuple[int, int]:
        """One pass: as `enforce`. Raises what it raises (the next pass looks again)."""
        # time.time looked up at the call, as everywhere (tests/support/sim/clock.py replaces it)
        now = time.time() if self._clock is None else self._clock()
        horizon = now - self.window
        full = now - self._full_at >= self.full_every  # the first pass too: _full_at starts at -inf
        self.catalog.mark_rows_below(horizon)  # before the range query: nothing falls between
        marked = self._pending | self.catalog.take_marked()
        since = -math.inf if full else self._covered
        try:
            result = enforce(
                self.replica, self.catalog, self.window, self.node, since=since, also=marked, now=now
            )
        except BaseException:
            self._pending = marked
            raise
        self._pending = set()
        self._covered = max(self._covered, horizon)
        if full:
            self._full_at = now
        return result
