"""Handing tenants to another node through the replica (issue 16, planned moves).

A node giving up a slot ships every commit of the slot's tenants, then writes one manifest:
`handoff/<slot:05d>/<token:020d>.json.zst`, where token is the slot's fencing token of the
giver, so the newest handoff of a slot sorts last. It holds, per tenant, what a restore needs
and the new owner's backup catalog lacks: the tenant's record (creation time, group,
incarnation, token generation: its tokens keep working) and its chunk rows (where in which
segments its snapshot and frames are). The new owner reads the newest manifest of the slot when
a tenant it has no copy of is first asked for, adds the rows to its catalog and restores the
tenant from them (backups.service.Backups.recover).

A manifest is the slot's whole directory of tenants living in the bucket only: a node giving up
a slot carries over the entries of the slot's previous manifest for tenants it never restored
(and did not delete), so the newest manifest alone always says where every tenant of the slot
is. Manifests are small (a slot holds tenants/16384 of the fleet), written once per moved slot
that has tenants or had a manifest; the segments they point at stay subject to retention as
ever. A node gaining slots deletes their manifests superseded twice (`Handoffs.handed_over`):
the newest says all, the one before it stays for a takeover retried under the same token.
"""

from __future__ import annotations

import contextlib
import dataclasses
import operator
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass

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


PREFIX = "handoff/"


@dataclass(frozen=True)
class Moved:
    """One tenant handed over: its record (None: unknown, a tenant created on a node that died
    before publishing it; the new owner asks the fleet metadata) and chunk rows."""

    tenant: str
    record: TenantRecord | None
    rows: list[ChunkRow]


def slot_prefix(slot: int) -> str:
    return f"{PREFIX}{slot:05d}/"


# a row's fields but its commits, shallow (dataclasses.astuple deep-copies: it was half the CPU
# of a takeover's manifests)
_ROW_FIELDS = operator.attrgetter(*[f.name for f in dataclasses.fields(ChunkRow)][:-1])


def put_handoff(replica: SealedReplica, slot: int, token: int, moved: list[Moved]) -> str:
    """Write the manifest of `slot` given up under `token`; returns its key. Raises ReplicaError."""
    body = {
        "slot": slot,
        "token": token,
        "tenants": {
            m.tenant: {
                "record": dataclasses.asdict(m.record) if m.record is not None else None,
                # as the catalog stores them (ChunkRow.from_row reads them back)
                "rows": [[*_ROW_FIELDS(r), orjson.dumps(r.commits).decode()] for r in m.rows],
            }
            for m in moved
        },
    }
    key = f"{slot_prefix(slot)}{token:020d}.json.zst"
    replica.put(key, zstandard.compress(orjson.dumps(body)))
    return key


def latest_handoff(replica: SealedReplica, slot: int) -> dict[str, Moved]:
    """The tenants of the newest manifest of `slot` (empty when there is none). Raises
    ReplicaError; ValueError for a manifest that does not parse."""
    keys = sorted(o.key for o in replica.list(slot_prefix(slot)))
    return read_handoff(replica, keys[-1]) if keys else {}


def newest_handoffs(replica: SealedReplica, before: int | None = None) -> dict[int, str]:
    """slot -> key of its newest manifest (of a token below `before`, if given), for every slot
    that has one (one LIST)."""
    newest: dict[int, str] = {}
    for info in replica.list(PREFIX):
        slot, _, name = info.key[len(PREFIX) :].partition("/")
        if before is None or int(name.partition(".")[0]) < before:
            newest[int(slot)] = max(newest.get(int(slot), ""), info.key)
    return newest


def carry_over(
    previous: Mapping[str, Moved], moved: dict[str, Moved], deleted: Callable[[str], bool]
) -> None:
    """Add to `moved` (a slot's tenants handed over now) the entries of the slot's previous
    manifest for tenants it lacks (the giver never restored them) unless `deleted` says the
    giver deleted them: the newest manifest alone must say where every tenant of the slot is."""
    for tenant, entry in previous.items():
        if tenant not in moved and not deleted(tenant):
            moved[tenant] = entry


def read_handoff(replica: SealedReplica, key: str) -> dict[str, Moved]:
    """The tenants of the manifest at `key`. Raises ReplicaError, ValueError."""
    body = orjson.loads(zstandard.decompress(replica.get(key)))
    return {tenant: _moved(tenant, entry) for tenant, entry in body["tenants"].items()}


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
        self.slot_of: Callable[[str], int] | None = None

    def hand_off(self, tokens: Mapping[int, int], tenants: Mapping[int, Sequence[str]]) -> None:
        """Give up slots (slot -> its fencing token) holding `tenants` (slot -> tenant ids, their
        handles closed, no request opening them meanwhile): ship every commit, then write each
        slot's manifest, carrying over what the slot's previous manifest says of tenants this node
        never restored. Raises ReplicaError (then the move waits)."""
        self._ship()  # raises when the upload failed: no manifest then, the move waits
        previous = newest_handoffs(self.replica)
        for slot, token in sorted(tokens.items()):
            local = tenants.get(slot, ())
            if not local and slot not in previous:
                continue
            moved = {m.tenant: m for m in self._records(local)}
            before = read_handoff(self.replica, previous[slot]) if slot in previous else {}
            carry_over(before, moved, lambda tenant: self._deleted(self.catalog.chunks(tenant)))
            put_handoff(self.replica, slot, token, list(moved.values()))

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
        one GET per slot that has one), after deleting those slots' manifests older than the
        newest two. Raises ReplicaError."""
        listed: dict[int, list[str]] = {}
        for info in self.replica.list(PREFIX):
            listed.setdefault(int(info.key[len(PREFIX) :].partition("/")[0]), []).append(info.key)
        ours = [sorted(listed[slot]) for slot in sorted(slots) if slot in listed]
        superseded = [key for keys in ours for key in keys[:-2]]
        if superseded:
            self.replica.delete(superseded)
        return [tenant for keys in ours for tenant in read_handoff(self.replica, keys[-1])]

    def names(self, tenant: str) -> bool:
        """Whether `tenant`, which this node has no row of, is taken all the same: the newest
        manifest of its slot names it and nobody deleted it since (its restore failed, or has not
        run yet), so its id must not be created anew, empty. False on a single server and for a
        tenant this request `looked_up` already. Raises ReplicaError."""
        if self.slot_of is None or tenant in _LOOKED_UP.get():
            return False
        moved = latest_handoff(self.replica, self.slot_of(tenant)).get(tenant)
        return moved is not None and not self._deleted([*self.catalog.chunks(tenant), *moved.rows])

    def adopt(self, tenant: str) -> Moved | None:
        """The newest handoff of `tenant` to this node, its rows added to the catalog (so a
        restore finds them), or None (also for a tenant this request `looked_up` already).
        Raises ReplicaError."""
        if self.slot_of is None or tenant in _LOOKED_UP.get():
            return None
        moved = latest_handoff(self.replica, self.slot_of(tenant)).get(tenant)
        if moved is not None:
            self.catalog.add_rows(moved.rows)
        return moved
