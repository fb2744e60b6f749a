"""Handing tenants to another node through the replica (issue 16 planned moves, issue 17
takeovers).

A node giving up slots ships every commit of their tenants, then writes one manifest per range of
RANGE_SLOTS (256) slots: `handoff/range/<range:02d>/<token:020d>-<slots:064x>.json.zst`, the slots
it speaks for a bitmap in its key, token the highest fencing token of those slots the giver held
(a takeover: the revision its controller read), so of the manifests that speak for a slot the
newest has the highest token: whoever claims the slot next does so after the manifest exists, at
a higher revision. Per slot, it holds what a restore needs and the new owner's backup catalog
lacks: each tenant's record (creation time, group, incarnation, token generation: its tokens keep
working) and its chunk rows (where in which segments its snapshot and frames are). The new owner
reads the newest manifest of the slot when a tenant it has no copy of is first asked for, adds
the rows to its catalog and restores the tenant from them (backups.service.Backups.recover).

A manifest is its slots' whole directory of tenants living in the bucket only: a node giving up a
slot carries over the entries of the slot's previous manifest for tenants it never restored (and
did not delete), so the newest manifest alone always says where every tenant of the slot is. One
manifest per range, not per slot: a node holds thousands of slots, and a PUT per slot made a
takeover of 8,161 slots spend 5.3 s writing them (an 11.5 s failover). The segments manifests
point at stay subject to retention as ever. A node gaining slots deletes the manifests superseded
twice in every slot they speak for (`Handoffs.handed_over`): the newest says all, the one before
it stays for a takeover retried under the same token.
"""

from __future__ import annotations

import contextlib
import dataclasses
import operator
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import orjson
import zstandard

from backups.catalog import BackupCatalog, ChunkRow
from backups.fleet_doc import TenantRecord
from backups.sealed_replica import SealedReplica
from tenants.catalog import Catalog

# Tenants the current request has looked for in the manifests already and found in none (the
# cluster proxy does so first, on threads of its own, within the request's deadline: see
# router.proxy.arrivals). `Handoffs.adopt` does not look again for them in the same request, so a
# request reads the replica for its tenant once, bounded, and never hangs on it a second time.
_LOOKED_UP: ContextVar[frozenset[str]] = ContextVar("handoffs_looked_up", default=frozenset())


@contextlib.contextmanager
def looked_up(tenant: str) -> Iterator[None]:
    """For the block (and the threads it starts with its context): `tenant` is in no manifest."""
    reset = _LOOKED_UP.set(_LOOKED_UP.get() | {tenant})
    try:
        yield
    finally:
        _LOOKED_UP.reset(reset)


PREFIX = "handoff/range/"
RANGE_SLOTS = 256


@dataclass(frozen=True)
class Moved:
    """One tenant handed over: its record (None: unknown, a tenant created on a node that died
    before publishing it; the new owner asks the fleet metadata) and chunk rows."""

    tenant: str
    record: TenantRecord | None
    rows: list[ChunkRow]


@dataclass(frozen=True)
class Manifest:
    """A manifest as listed: its key, its token, the slots it speaks for, and the listing's size
    and time (seconds since the epoch) of the object (a retried handoff may write its key again:
    `Reader` tells them apart)."""

    key: str
    token: int
    slots: frozenset[int]
    stamp: tuple[int, float] = (0, 0.0)

    @staticmethod
    def parse(key: str, stamp: tuple[int, float] = (0, 0.0)) -> Manifest | None:
        """The manifest at `key`, or None for a key no manifest has (a stray object)."""
        part, _, name = key.removeprefix(PREFIX).partition("/")
        token, _, mask = name.removesuffix(".json.zst").partition("-")
        try:
            bits, first = int(mask, 16), int(part) * RANGE_SLOTS
            slots = frozenset(first + i for i in range(RANGE_SLOTS) if bits >> i & 1)
            return Manifest(key, int(token), slots, stamp)
        except ValueError:
            return None


def range_prefix(slot: int) -> str:
    return f"{PREFIX}{slot // RANGE_SLOTS:02d}/"


class Listing:
    """The manifests of one LIST, by slot, oldest first (by token)."""

    def __init__(self, manifests: Iterable[Manifest]) -> None:
        self.by_slot: dict[int, list[Manifest]] = {}
        for manifest in sorted(manifests, key=lambda m: (m.token, m.key)):
            for slot in manifest.slots:
                self.by_slot.setdefault(slot, []).append(manifest)

    @classmethod
    def of(cls, replica: SealedReplica, prefix: str = PREFIX) -> Listing:
        """What a LIST of `prefix` (default: every manifest) shows. Raises ReplicaError."""
        found = (Manifest.parse(o.key, (o.size, o.modified.timestamp())) for o in replica.list(prefix))
        return cls(m for m in found if m is not None)

    @classmethod
    def of_slot(cls, replica: SealedReplica, slot: int) -> Listing:
        """The manifests of `slot`'s range (one LIST). Raises ReplicaError."""
        return cls.of(replica, range_prefix(slot))

    def newest(self, slot: int, before: int | None = None) -> Manifest | None:
        """The newest manifest of `slot` (of a token below `before`, if given)."""
        found = [m for m in self.by_slot.get(slot, ()) if before is None or m.token < before]
        return found[-1] if found else None

    def superseded(self, slots: Collection[int]) -> list[str]:
        """Keys of manifests with two newer ones for every slot they speak for, among the
        manifests of `slots` (a range manifest also speaks for slots outside them)."""
        keep = {m.key for manifests in self.by_slot.values() for m in manifests[-2:]}
        return sorted({m.key for s in slots for m in self.by_slot.get(s, ()) if m.key not in keep})


# a row's fields but its commits, shallow (dataclasses.astuple deep-copies: it was half the CPU
# of a takeover's manifests)
_ROW_FIELDS = operator.attrgetter(*[f.name for f in dataclasses.fields(ChunkRow)][:-1])


def _entries(moved: Iterable[Moved]) -> dict[str, object]:
    return {
        m.tenant: {
            "record": dataclasses.asdict(m.record) if m.record is not None else None,
            # as the catalog stores them (ChunkRow.from_row reads them back)
            "rows": [[*_ROW_FIELDS(r), orjson.dumps(r.commits).decode()] for r in m.rows],
        }
        for m in moved
    }


def put_range(replica: SealedReplica, token: int, slots: Mapping[int, list[Moved]]) -> str:
    """Write one manifest at `token` for `slots` (slot -> its tenants; every slot in one range of
    RANGE_SLOTS); returns its key. Raises ReplicaError; ValueError for slots of several ranges."""
    ranges = {slot // RANGE_SLOTS for slot in slots}
    if len(ranges) != 1:
        raise ValueError(f"a range manifest speaks for the slots of one range, not of {sorted(ranges)}")
    first = ranges.pop() * RANGE_SLOTS
    mask = sum(1 << (slot - first) for slot in slots)
    body = {"token": token, "slots": {str(slot): _entries(moved) for slot, moved in slots.items()}}
    key = f"{range_prefix(first)}{token:020d}-{mask:064x}.json.zst"
    replica.put(key, zstandard.compress(orjson.dumps(body)))
    return key


class Reader:
    """Reads manifests' tenants for a slot, keeping the last `keep` bodies (a range manifest
    speaks for up to RANGE_SLOTS slots: its tenants are asked for one by one). A body is kept by
    key, size and time as listed: a handoff retried after a failed PUT writes its key again,
    maybe with more commits, and the listing shows the new object."""

    def __init__(self, replica: SealedReplica, keep: int = 4) -> None:
        self.replica, self._keep = replica, keep
        self._bodies: OrderedDict[tuple[str, tuple[int, float]], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def entries(self, manifest: Manifest, slot: int) -> dict[str, Any]:
        """tenant -> its raw entry in `manifest` for `slot`. Raises ReplicaError, ValueError."""
        kept = (manifest.key, manifest.stamp)
        with self._lock:
            body = self._bodies.get(kept)
            if body is not None:
                self._bodies.move_to_end(kept)
        if body is None:
            body = orjson.loads(zstandard.decompress(self.replica.get(manifest.key)))
            with self._lock:
                self._bodies[kept] = body
                while len(self._bodies) > self._keep:
                    self._bodies.popitem(last=False)
        slots = body.get("slots") if isinstance(body, dict) else None
        entries = slots.get(str(slot), {}) if isinstance(slots, dict) else None
        if not isinstance(entries, dict):
            raise ValueError(f"handoff manifest {manifest.key} is malformed")
        return entries

    def tenants(self, manifest: Manifest | None, slot: int) -> dict[str, Moved]:
        """The tenants `manifest` hands over in `slot` (empty for None). Raises ReplicaError,
        ValueError for a manifest that does not parse."""
        if manifest is None:
            return {}
        return {tenant: _moved(tenant, entry) for tenant, entry in self.entries(manifest, slot).items()}

    def one(self, manifest: Manifest | None, slot: int, tenant: str) -> Moved | None:
        """`tenant`'s entry in `manifest` for `slot`, or None."""
        entry = self.entries(manifest, slot).get(tenant) if manifest is not None else None
        return _moved(tenant, entry) if entry is not None else None


def latest_handoff(replica: SealedReplica, slot: int) -> dict[str, Moved]:
    """The tenants of the newest manifest of `slot` (empty when there is none). Raises
    ReplicaError; ValueError for a manifest that does not parse."""
    return Reader(replica).tenants(Listing.of_slot(replica, slot).newest(slot), slot)


def carry_over(
    previous: Mapping[str, Moved], moved: dict[str, Moved], deleted: Callable[[str], bool]
) -> None:
    """Add to `moved` (a slot's tenants handed over now) the entries of the slot's previous
    manifest for tenants it lacks (the giver never restored them) unless `deleted` says the
    giver deleted them: the newest manifest alone must say where every tenant of the slot is."""
    for tenant, entry in previous.items():
        if tenant not in moved and not deleted(tenant):
            moved[tenant] = entry


def _moved(tenant: str, entry: dict[str, object]) -> Moved:
    record, rows = entry.get("record"), entry.get("rows")
    if not isinstance(record, dict | None) or not isinstance(rows, list):
        raise ValueError(f"handoff of tenant {tenant!r} lacks its record or rows")
    return Moved(
        tenant,
        TenantRecord(**record) if record is not None else None,
        [ChunkRow.from_row(tuple(row)) for row in rows],
    )


class Handoffs:
    """A cluster node's side of planned moves: the manifests of the slots it gives up, the
    tenants of those it gains. `slot_of` (cluster.slots.slot_of) is set by a cluster node; on a
    single server it stays None and no tenant is ever looked for in a manifest."""

    def __init__(
        self,
        replica: SealedReplica,
        catalog: BackupCatalog,
        tenants: Catalog,
        ship: Callable[[], None],
        deleted: Callable[[list[ChunkRow]], bool],
    ) -> None:
        self.replica, self.catalog, self.tenants = replica, catalog, tenants
        self._ship, self._deleted = ship, deleted
        self.reader = Reader(replica)
        self.slot_of: Callable[[str], int] | None = None

    def hand_off(self, tokens: Mapping[int, int], tenants: Mapping[int, Sequence[str]]) -> None:
        """Give up slots (slot -> its fencing token) holding `tenants` (slot -> tenant ids, their
        handles closed, no request opening them meanwhile): ship every commit, then write each
        slot's manifest, carrying over what the slot's previous manifest says of tenants this node
        never restored. Raises ReplicaError (then the move waits)."""
        self._ship()  # raises when the upload failed: no manifest then, the move waits
        listing = Listing.of(self.replica)
        by_range: dict[int, dict[int, list[Moved]]] = {}
        for slot in sorted(tokens):
            local, previous = tenants.get(slot, ()), listing.newest(slot)
            if not local and previous is None:
                continue
            moved = {m.tenant: m for m in self._records(local)}
            before = self.reader.tenants(previous, slot)
            carry_over(before, moved, lambda tenant: self._deleted(self.catalog.chunks(tenant)))
            by_range.setdefault(slot // RANGE_SLOTS, {})[slot] = list(moved.values())
        for slots in by_range.values():
            put_range(self.replica, max(tokens[slot] for slot in slots), slots)

    def _records(self, tenants: Sequence[str]) -> list[Moved]:
        moved = []
        for tenant in tenants:
            row = self.tenants.get(tenant)
            if row is not None:
                r = TenantRecord(
                    row.created_at, row.group, row.incarnation, row.token_generation, time.time()
                )
                moved.append(Moved(tenant, r, self.catalog.chunks(tenant)))
        return moved

    def handed_over(self, slots: Collection[int]) -> list[str]:
        """The tenants the newest manifests of `slots` (slots this node gained) name (one LIST,
        one GET per manifest), after deleting those slots' manifests older than the newest two
        (a range manifest once that holds for every slot it speaks for). Raises ReplicaError."""
        listing = Listing.of(self.replica)
        superseded = listing.superseded(slots)
        if superseded:
            self.replica.delete(superseded)
        by_manifest: dict[Manifest, list[int]] = {}
        for slot in sorted(slots):
            newest = listing.newest(slot)
            if newest is not None:
                by_manifest.setdefault(newest, []).append(slot)
        reader = Reader(self.replica, keep=1)  # each manifest is read once here
        return [t for m, ss in by_manifest.items() for s in ss for t in reader.entries(m, s)]

    def _newest(self, tenant: str) -> Moved | None:
        assert self.slot_of is not None
        slot = self.slot_of(tenant)
        return self.reader.one(Listing.of_slot(self.replica, slot).newest(slot), slot, tenant)

    def moved_at(self, tenant: str) -> float | None:
        """When the newest manifest of `tenant`'s slot was written (the replica's clock, seconds
        since the epoch), or None: a single server, or a slot that never moved. Raises
        ReplicaError."""
        if self.slot_of is None:
            return None
        slot = self.slot_of(tenant)
        newest = Listing.of_slot(self.replica, slot).newest(slot)
        return None if newest is None else newest.stamp[1]

    def names(self, tenant: str) -> bool:
        """Whether `tenant`, which this node has no row of, is taken all the same: the newest
        manifest of its slot names it and nobody deleted it since (its restore failed, or has not
        run yet), so its id must not be created anew, empty. False on a single server and for a
        tenant this request `looked_up` already. Raises ReplicaError."""
        if self.slot_of is None or tenant in _LOOKED_UP.get():
            return False
        moved = self._newest(tenant)
        return moved is not None and not self._deleted([*self.catalog.chunks(tenant), *moved.rows])

    def adopt(self, tenant: str) -> Moved | None:
        """The newest handoff of `tenant` to this node, its rows added to the catalog (so a
        restore finds them), or None (also for a tenant this request `looked_up` already).
        Raises ReplicaError."""
        if self.slot_of is None or tenant in _LOOKED_UP.get():
            return None
        moved = self._newest(tenant)
        if moved is not None:
            self.catalog.add_rows(moved.rows)
        return moved
