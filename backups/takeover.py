"""Taking over a dead node's slots (issue 17): what a planned move's giver does itself
(backups/handoff.py), done for it by another node from the bucket alone.

1. Fence the node's incarnations (backups/fence.py; one that never wrote gets its fence at seq 1):
   from then on nothing it ships can become history, so what is read below is final.
2. Build its view in a temporary catalog: its newest uploaded catalog (backups/catalog_upload.py),
   if any, plus the chunk rows of its segments after what that upload covers and below each fence
   (only its own prefix, `segments/<node>/`, is listed; a rekeyed copy of a covered segment is
   read too, its rows then point at the copy). Rows live in that SQLite file, not in memory.
3. Its tenants' identities: the records of its fleet metadata namespaces (the server ids its
   upload and its segments name), newest first.
4. Per range of 256 slots, one manifest at `token` (backups/handoff.py), saying per slot what a
   planned move's manifest says: the slot's tenants the view knows and that are not deleted,
   plus the previous manifest's entries for tenants the node never restored
   (`handoff.carry_over`, the rule a planned move follows). A tenant whose record the node never
   published is handed over without one (the new owner asks the fleet metadata, else it gets a
   new identity: its data is what matters).

Idempotent: the fences are reused, the view is built anew, and the manifests are written again
under the same keys with the same tenants (the previous manifest is the newest one below `token`).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import apsw

from backups import catalog_upload, fleet_doc, restore
from backups.catalog import BackupCatalog, ChunkRow
from backups.catalog_upload import Covered
from backups.errors import BackupBroken, BackupTampered, SegmentCorrupt
from backups.fence import SEGMENTS, BelowFences, Writer, fence_incarnation, is_fence, parse_key
from backups.fleet_doc import TenantRecord
from backups.handoff import RANGE_SLOTS, Listing, Moved, Reader, carry_over, put_range
from backups.sealed_replica import SealedReplica
from backups.segment import ChunkRef, read_index

log = logging.getLogger(__name__)
_T = TypeVar("_T")

_SERVER_PROBES = 3  # segments of an incarnation looked at, newest first, for its server id
MANIFEST_WORKERS = 16  # manifests written at once
# Segment indexes read at once, and read ahead of the one being recorded at most (each is a
# range GET of a few KiB to a few MiB: under ack=replica every write can be a segment, and one
# GET at a time made 173 segments 3.6 s).
INDEX_WORKERS = 16
INDEXES_AHEAD = 4 * INDEX_WORKERS


def take_over(
    replica: SealedReplica,
    node: str,
    incarnations: Collection[str],
    slots: Collection[int],
    token: int,
    slot_of: Callable[[str], int],
    work_dir: Path,
    by: str = "",
) -> int:
    """Fence `node`'s `incarnations` (none given: every incarnation found under its prefix) and
    write a handoff manifest at `token` for each of `slots` that has tenants or had a manifest
    (see the module docstring); returns the number of tenants handed over. `by` names the
    fencer; temporary files go under `work_dir`. Raises ReplicaError (nothing is half-done that
    a retry would not finish), BackupBroken for an upload or metadata that does not decode."""
    took = _Stopwatch()
    fences = took("fence", fence_all(replica, node, incarnations, by))
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="takeover-") as tmp:
        path = Path(tmp) / "view.db"
        covered = took("catalog", _download(replica, node, path))
        keys, servers = took("list", _segments_to_read(replica, node, fences, covered, path))
        view = BackupCatalog(path)
        try:
            _record_segments(replica, view, keys)
            took("segments", None)
            records = took("identities", _records(replica, servers))
            handed = took("manifests", _write_manifests(replica, view, records, slots, token, slot_of))
        finally:
            view.close()
    log.warning(
        "took over node %s (incarnations %s fenced): %d tenants of %d slots handed over at token %d, "
        "%d segments read after its catalog upload%s (seconds: %s)",
        node,
        ", ".join(f"{i}@{s}" for i, s in sorted(fences.items())) or "none",
        handed,
        len(slots),
        token,
        len(keys),
        "" if covered is not None else " (none found)",
        took,
    )
    return handed


class _Stopwatch:
    """`took(stage, value)` notes the seconds since the previous stage ended; str() lists them
    (the takeover's log line: where a slow one spends its time)."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self._stages: list[tuple[str, float]] = []

    def __call__(self, stage: str, value: _T) -> _T:
        now = time.monotonic()
        self._stages.append((stage, now - self._last))
        self._last = now
        return value

    def __str__(self) -> str:
        return ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in self._stages)


def _record_segments(replica: SealedReplica, view: BackupCatalog, keys: list[str]) -> None:
    """What `restore.record_segments` does, with the indexes read INDEX_WORKERS at a time and
    recorded in key order (a FENCE, another's, stops its incarnation there: what is past it
    may be read ahead, but is never recorded, nor is its error raised); at most INDEXES_AHEAD
    indexes are held in memory. Raises what reading a recorded index raises."""
    fences = BelowFences()
    for key, index in _indexes(replica, keys):
        if fences.wanted(key):
            meta, refs = index.result()
            if not fences.fence(key, meta):
                view.add_segment(key, float(meta.get("created", 0.0)), refs)  # type: ignore[arg-type]


_Index = tuple[dict[str, object], list[ChunkRef]]


def _indexes(replica: SealedReplica, keys: list[str]) -> Iterator[tuple[str, Future[_Index]]]:
    """(key, its index being read) for each of `keys`, in order, read ahead in threads."""

    def read(key: str) -> _Index:
        return read_index(lambda k, at, n: replica.read_range(k, at, n, allow_plaintext=True), key)

    with ThreadPoolExecutor(INDEX_WORKERS, thread_name_prefix="sqlfleet-takeover-read") as pool:
        ahead: deque[tuple[str, Future[_Index]]] = deque()
        try:
            for key in keys:
                ahead.append((key, pool.submit(read, key)))
                if len(ahead) >= INDEXES_AHEAD:
                    yield ahead.popleft()
            while ahead:
                yield ahead.popleft()
        finally:
            for _, future in ahead:  # an error: what was not read yet need not be
                future.cancel()


def _download(replica: SealedReplica, node: str, path: Path) -> Covered | None:
    """The node's uploaded catalog at `path`, or None: none uploaded, or one that does not
    decode (then its segments alone tell, which is slower, never wrong)."""
    try:
        return catalog_upload.download(replica, node, path)
    except (BackupBroken, BackupTampered) as exc:
        log.error("the catalog node %s uploaded is unusable (%s); reading all its segments", node, exc)
        path.unlink(missing_ok=True)
        return None


def fence_all(replica: SealedReplica, node: str, incarnations: Collection[str], by: str) -> dict[str, int]:
    """incarnation -> its fence's seq, for each of `incarnations` of `node`, or when none is
    given every incarnation listed under `segments/<node>/`. Idempotent. Raises ReplicaError."""
    wanted = set(incarnations)
    if not wanted:
        wanted = {w.incarnation for w, _, _ in _listed(replica, node)}
    return {incarnation: fence_incarnation(replica, node, incarnation, by) for incarnation in sorted(wanted)}


def _listed(replica: SealedReplica, node: str) -> Iterable[tuple[Writer, int, str]]:
    """(writer, seq, key) of every object of `node`'s incarnations, in key order."""
    for info in replica.list(f"{SEGMENTS}{node}/"):
        parsed = parse_key(info.key)
        if parsed is not None and parsed[0].node == node:
            yield parsed[0], parsed[1], info.key


def _segments_to_read(
    replica: SealedReplica, node: str, fences: dict[str, int], covered: Covered | None, copy: Path
) -> tuple[list[str], set[str]]:
    """(the keys of `node`'s segments whose rows the uploaded copy at `copy` lacks, below the
    fences we placed (another's, placed earlier, is among them: the reader stops at it), in key
    order; the server ids of the node's incarnations)."""
    covers = covered.covers if covered is not None else {}
    recorded = apsw.Connection(str(copy)) if covered is not None else None
    keys: list[str] = []
    # incarnation -> its highest keys below the fence (the top may be no segment: past a fence)
    tops: dict[str, deque[str]] = {}
    try:
        for writer, seq, key in _listed(replica, node):
            fence = fences.get(writer.incarnation)
            if fence is not None and seq >= fence:
                continue
            tops.setdefault(writer.incarnation, deque(maxlen=_SERVER_PROBES)).append(key)
            if seq > covers.get(writer.incarnation, 0) or not _recorded(recorded, key):
                keys.append(key)
    finally:
        if recorded is not None:
            recorded.close()
    servers = {covered.server} if covered is not None else set()
    for highest in tops.values():
        found = (_server_of(replica, key) for key in sorted(highest, reverse=True))
        server = next((s for s in found if s is not None), None)
        if server is not None:
            servers.add(server)
    return sorted(keys), servers


def _recorded(copy: apsw.Connection | None, key: str) -> bool:
    return (
        copy is not None
        and copy.execute("SELECT 1 FROM segments WHERE key = ?", (key,)).fetchone() is not None
    )


def _server_of(replica: SealedReplica, key: str) -> str | None:
    """The server id the segment at `key` names (None: a FENCE, or not a segment)."""

    def read(k: str, start: int, length: int) -> bytes:
        return replica.read_range(k, start, length, allow_plaintext=True)

    try:
        meta, _ = read_index(read, key)
    except SegmentCorrupt:
        return None
    server = meta.get("server")
    return server if isinstance(server, str) and not is_fence(meta) else None


def _records(replica: SealedReplica, servers: Iterable[str]) -> dict[str, TenantRecord]:
    """Tenant -> its newest record across the fleet metadata namespaces of `servers`."""
    records: dict[str, TenantRecord] = {}
    for server in sorted(servers):
        try:
            space = fleet_doc.read_namespace(replica, server)
        except (BackupBroken, BackupTampered) as exc:  # its tenants come without identities then
            log.error(
                "fleet metadata of server %s unreadable (%s): tenants handed over without it", server, exc
            )
            continue
        for tenant, record in space.records.items():
            if tenant not in records or record.updated > records[tenant].updated:
                records[tenant] = record
    return records


def _write_manifests(
    replica: SealedReplica,
    view: BackupCatalog,
    records: dict[str, TenantRecord],
    slots: Collection[int],
    token: int,
    slot_of: Callable[[str], int],
) -> int:
    wanted = set(slots)
    by_slot: dict[int, list[str]] = {}
    for tenant in view.tenants():
        slot = slot_of(tenant)
        if slot in wanted:
            by_slot.setdefault(slot, []).append(tenant)
    listing = Listing.of(replica)
    previous = {slot: m for slot in wanted if (m := listing.newest(slot, before=token)) is not None}
    by_range: dict[int, list[int]] = {}  # ours, from an earlier attempt, is not "previous"
    for slot in sorted(wanted):
        if slot in by_slot or slot in previous:
            by_range.setdefault(slot // RANGE_SLOTS, []).append(slot)

    def write(range_slots: list[int]) -> int:
        reader = Reader(replica, keep=2)
        befores = {slot: reader.tenants(previous.get(slot), slot) for slot in range_slots}
        named = {t for slot in range_slots for t in (*by_slot.get(slot, ()), *befores[slot])}
        chunks = view.chunks_of(named)  # one query per range, not one per tenant
        moved = {slot: _moved(chunks, records, by_slot.get(slot, []), befores[slot]) for slot in range_slots}
        put_range(replica, token, {slot: list(m.values()) for slot, m in moved.items()})
        return sum(map(len, moved.values()))

    # one manifest per range of slots (at most 64), a few at a time
    with ThreadPoolExecutor(MANIFEST_WORKERS, thread_name_prefix="sqlfleet-takeover") as pool:
        return sum(pool.map(write, by_range.values()))


def _moved(
    chunks: dict[str, list[ChunkRow]],
    records: dict[str, TenantRecord],
    tenants: list[str],
    before: dict[str, Moved],
) -> dict[str, Moved]:
    """A slot's manifest: its `tenants` with their `chunks` in the view, less those deleted or
    gone, with the previous manifest's (`before`) entries for tenants the node never restored."""
    moved: dict[str, Moved] = {}
    for tenant in tenants:
        rows, record, entry = chunks.get(tenant, []), records.get(tenant), before.get(tenant)
        if restore.deleted_at(rows) is not None:
            continue
        if entry is not None:  # handed to the node before: what it had then, and what since
            live = [r for r in (record, entry.record) if r is not None and r.deleted is None]
            rows, record = _union(rows, entry.rows), max(live, key=lambda r: r.updated, default=None)
        elif _gone(rows, record):
            continue
        moved[tenant] = Moved(tenant, record, rows)
    # the rule a planned move follows: what the node never restored goes on, unless deleted
    carry_over(before, moved, lambda t: restore.deleted_at(chunks.get(t, [])) is not None)
    return moved


def _gone(rows: list[ChunkRow], record: TenantRecord | None) -> bool:
    """Whether a tenant the previous manifest does not name, whose last shipped event is no
    deletion, left the node anyway: its published record says it went after its newest
    generation began (deleted with the tombstone not shipped, or moved away while the slot was
    another node's, and deleted there)."""
    if record is None or record.deleted is None:
        return False
    return record.deleted >= max(restore.generations(rows).values(), default=0.0)


def _union(mine: list[ChunkRow], theirs: list[ChunkRow]) -> list[ChunkRow]:
    """Both sets of chunk rows, ours winning for the same chunk (it may point at a rekeyed copy)."""
    merged = {(r.generation, r.kind, r.first_lsn, r.last_lsn): r for r in theirs}
    merged.update({(r.generation, r.kind, r.first_lsn, r.last_lsn): r for r in mine})
    return sorted(merged.values(), key=lambda r: (r.generation, r.first_lsn, r.kind))
