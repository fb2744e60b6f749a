"""Fleet metadata: what a lost data dir needs besides the tenants' pages, kept in the replica.

Published (objects and format: backups/fleet_doc.py): the schema groups (template, migrations,
rollout history), every tenant's identity (created, group, incarnation, token generation) and
the fingerprint of the key that signs tenant tokens. Changes are batched like segments: a
publishing round runs once per flush interval when something changed, and writes one object for
every tenant change since the last round (a log; every so often a base instead, holding all of
them, and older logs go), one per group that changed, and the server document once per start.
So PUTs per second stay bounded whatever the number of tenants or changes.

Restored (`restore_groups`, `record`): groups missing here are put back before any tenant, and a
tenant restored as itself gets the identity it had, so its tokens keep working when this server
signs with the same key (`check_tokens` says when they will not).

Crash-safe without a local record: a round takes nothing off its to-do list before its PUT
succeeded, and at start (the first round) the server compares its tenant catalog with what its
namespace holds and publishes any difference, so nothing a crash interrupted stays unpublished.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from backups import fleet_doc
from backups.errors import BackupBroken, BackupKeyMissing, BackupTampered, ReplicaError
from backups.fleet_doc import Namespace, TenantRecord
from backups.replica import ObjectInfo
from backups.sealed_replica import SealedReplica
from tenants.catalog import Catalog
from tenants.errors import SqlfleetError
from tenants.state import TenantState

log = logging.getLogger(__name__)

MAX_LOGS = 256  # logs after a base: past it the next round writes a base (bounds a restore's GETs)
BASE_FLOOR = 256 << 10  # a base is rewritten once the logs after it outweigh it (or this)
_SETTLING = (TenantState.CREATING, TenantState.DELETING)  # looked at again next round


class GroupArchives(Protocol):
    """The schema groups, as the fleet metadata needs them (schema_sync.groups.GroupStore,
    wired by ops: backups imports no schema_sync). Methods raise SqlfleetError (no such group,
    a group that exists, a bad archive) or OSError."""

    def names(self) -> list[str]: ...

    def take_changed(self) -> set[str]:
        """Groups changed since the last call."""
        ...

    def export(self, name: str) -> bytes: ...

    def restore(self, name: str, data: bytes) -> object: ...


@dataclass(frozen=True)
class Known:
    """A tenant's newest record across every namespace, and the key its tokens were signed with."""

    record: TenantRecord
    token_key: str | None


@dataclass(frozen=True)
class GroupsRestored:
    restored: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenCheck:
    """Whether the tokens of the tenants about to be restored will work on this server."""

    signing_key: str | None  # the fingerprint of this server's key
    minted_with: list[str]  # the keys the old tokens were signed with
    unknown: int  # tenants with no metadata: restored without group or identity
    changed_key: int  # tenants whose tokens were signed with another key

    @property
    def survive(self) -> bool:
        return self.unknown == 0 and self.changed_key == 0

    def warning(self) -> str | None:
        parts = []
        if self.changed_key:
            parts.append(
                f"the tokens of {self.changed_key} tenants will not work after this restore: they were "
                f"signed with {', '.join(k for k in self.minted_with if k != self.signing_key)}, and "
                f"this server signs with {self.signing_key}. Restart it with the old signing key "
                "(signing_key_file) to make them work again, or mint new tokens"
            )
        if self.unknown:
            parts.append(
                f"{self.unknown} tenants have no metadata in the replica: they come back without "
                "their group and creation time, and their old tokens will not work"
            )
        return "; ".join(parts) or None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "survive": self.survive, "warning": self.warning()}


class FleetMeta:
    """Publishes this server's fleet metadata and reads everyone's back. Thread-safe; `start`
    runs the publishing loop, `stop` ends it after a last round."""

    def __init__(
        self,
        replica: SealedReplica,
        catalog: Catalog,
        groups: GroupArchives,
        server: str,
        interval: float,
        retention: float,
    ) -> None:
        self.replica = replica
        self.catalog = catalog
        self.groups = groups
        self.server = server
        self.interval = interval
        self.retention = retention  # deletions older than this are dropped (no restore reaches them)
        self.token_key: str | None = None
        self._lock = threading.Lock()  # the to-do lists
        self._tenants_due: set[str] = set()
        self._groups_due: set[str] = set()
        self._server_due = False
        self._base_due = False  # write a base next round even with nothing changed (after a rekey)
        self._round = threading.Lock()  # one publishing round at a time
        self._own: Namespace | None = None  # what our namespace holds; None until read
        self._view: dict[str, Known] | None = None  # the other namespaces, merged; read when needed
        self._stop = threading.Event()
        self._wake = threading.Event()  # `published` asks for a round now
        self._rounds = threading.Condition()  # rounds begun, the newest that succeeded
        self._begun = self._succeeded = 0
        self._thread: threading.Thread | None = None

    # -- what changed (from the fleet's hooks) ------------------------------------------------------

    def touch(self, tenant_id: str) -> None:
        """The tenant was created, restored, deleted or had its tokens revoked: publish it."""
        with self._lock:
            self._tenants_due.add(tenant_id)

    def republish(self) -> None:
        """Write all of this server's metadata anew in the next round, sealed with the current
        key (after a rekey, which may have resealed an object over a newer one we wrote)."""
        with self._lock:
            self._server_due = self._base_due = True
            self._groups_due |= set(self.groups.names())

    # -- the loop ---------------------------------------------------------------------------------

    def start(self, token_key: str | None) -> None:
        """Publish from now on; `token_key` is the fingerprint of the key signing tenant tokens."""
        self.token_key = token_key
        with self._lock:
            self._server_due = True
        self._thread = threading.Thread(target=self._run, name="sqlfleet-fleet-meta", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the loop after a last round. Never raises; idempotent."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self._publish_logged()

    def _run(self) -> None:
        delay = self.interval
        while not self._stop.is_set():
            self._wake.wait(delay)
            self._wake.clear()
            if self._stop.is_set():
                return
            delay = self.interval if self._publish_logged() else min(30.0, max(delay, 0.5) * 2)

    def published(self, seconds: float) -> bool:
        """Whether a round that began after this call succeeded within `seconds` (one is asked
        for now): every change noted before the call is then in the replica (ack=replica:
        a token revocation, a group change). False past `seconds`, or once stopping."""
        if self._thread is None:
            return self._publish_logged()
        with self._rounds:
            wanted = self._begun + 1
        self._wake.set()
        with self._rounds:
            self._rounds.wait_for(lambda: self._succeeded >= wanted or self._stop.is_set(), seconds)
            return self._succeeded >= wanted

    def _publish_logged(self) -> bool:
        try:
            self.publish()
        except (ReplicaError, BackupBroken) as exc:
            log.warning("publishing the fleet metadata failed (%s); will retry", exc)
            return False
        except Exception:  # a bug must not end publishing for good
            log.exception("publishing the fleet metadata failed; will retry")
            return False
        return True

    # -- publishing -------------------------------------------------------------------------------

    def publish(self) -> None:
        """One round: publish every change noted so far (the first round also what the namespace
        lacks). What it could not write stays to do. Raises ReplicaError, BackupBroken."""
        with self._round:
            with self._rounds:
                self._begun += 1
                number = self._begun
            own = self._own = self._own or self._read_own()
            with self._lock:
                server_due, self._server_due = self._server_due, False
                base_due, self._base_due = self._base_due, False
                groups = self._groups_due | self.groups.take_changed()
                self._groups_due = set()
                tenants, self._tenants_due = self._tenants_due, set()
            try:
                if server_due:
                    body = fleet_doc.pack("server", self.server, {"token_key": self.token_key})
                    self.replica.put(fleet_doc.server_key(self.server), body)
                    own.token_key = self.token_key
                    server_due = False
                while groups:
                    self._put_group(min(groups))
                    groups.discard(min(groups))
                tenants = self._put_tenants(own, tenants, base_due)
                base_due = False
                with self._rounds:
                    self._succeeded = max(self._succeeded, number)
                    self._rounds.notify_all()
            finally:
                with self._lock:
                    self._server_due |= server_due
                    self._base_due |= base_due
                    self._groups_due |= groups
                    self._tenants_due |= tenants

    def _read_own(self) -> Namespace:
        """Our namespace as the bucket holds it; every tenant of the catalog or of the namespace
        is then looked at in the next round (a crash may have lost the to-do list). One that
        cannot be read (its key removed, damaged) is started anew from the catalog: a base
        numbered past everything there, which then replaces it (only records of tenants deleted
        here are lost). Raises ReplicaError when the replica cannot be reached."""
        infos = list(self.replica.list(f"{fleet_doc.PREFIX}{self.server}/"))
        try:
            own = fleet_doc.read_namespace(self.replica, self.server, infos, own=True)
        except (BackupKeyMissing, BackupTampered, BackupBroken) as exc:
            log.error("fleet metadata of this server unreadable (%s); publishing it anew", exc)
            own = Namespace(self.server, seq=fleet_doc.newest_seq(infos))
            with self._lock:
                self._base_due = self._server_due = True
        with self._lock:
            self._tenants_due |= self.catalog.all_ids() | own.records.keys()
            self._groups_due |= set(self.groups.names())
        return own

    def _put_group(self, name: str) -> None:
        try:
            data = self.groups.export(name)
        except (SqlfleetError, OSError) as exc:
            log.warning("fleet metadata: group %s not published: %s", name, exc)
            return
        self.replica.put(fleet_doc.group_key(self.server, name), fleet_doc.compress(data))

    def _put_tenants(self, own: Namespace, tenants: set[str], base: bool) -> set[str]:
        """Write the records of `tenants` that changed (as a log, or with every other record as
        a base: when the logs grow, or `base`); returns the tenants still to do."""
        now = time.time()
        later = set()
        changed: dict[str, TenantRecord] = {}
        for tenant in tenants:
            record, settled = self._current(own, tenant, now)
            if not settled:
                later.add(tenant)
            elif record is not None and not record.same_tenant(own.records.get(tenant)):
                changed[tenant] = record
        if not changed and not base:
            return later
        seq = own.seq + 1
        log_doc = fleet_doc.pack("tenants", self.server, fleet_doc.records_body(seq, changed))
        if base or own.logs >= MAX_LOGS or own.log_bytes + len(log_doc) > max(own.base_bytes, BASE_FLOOR):
            self._put_base(own, {**own.records, **changed}, seq, now)
        else:
            # failing, the caller keeps every tenant to do
            self.replica.put(fleet_doc.tenants_key(self.server, "log", seq), log_doc)
            own.records.update(changed)
            own.seq, own.logs, own.log_bytes = seq, own.logs + 1, own.log_bytes + len(log_doc)
        return later

    def _put_base(self, own: Namespace, records: dict[str, TenantRecord], seq: int, now: float) -> None:
        horizon = now - self.retention
        kept = {t: r for t, r in records.items() if r.deleted is None or r.deleted >= horizon}
        key = fleet_doc.tenants_key(self.server, "base", seq)
        data = fleet_doc.pack("tenants", self.server, fleet_doc.records_body(seq, kept))
        self.replica.put(key, data)
        own.records, own.seq, own.base_bytes, own.logs, own.log_bytes = kept, seq, len(data), 0, 0
        try:  # listed, not remembered: also what a rekey resealed after we had deleted it
            listed = self.replica.list(fleet_doc.tenants_prefix(self.server))
            self.replica.delete([info.key for info in listed if info.key != key])
        except ReplicaError as exc:  # readers skip what the new base covers; deleted next time
            log.warning("fleet metadata: older logs not deleted yet (%s)", exc)

    def _current(self, own: Namespace, tenant: str, now: float) -> tuple[TenantRecord | None, bool]:
        """(the tenant's record as of now, or None if there is none to publish; False while it
        is being created or deleted: look again next round)."""
        row = self.catalog.get(tenant)
        if row is None:
            before = own.records.get(tenant)
            if before is None or before.deleted is not None:
                return None, True
            return replace(before, updated=now, deleted=now), True
        if row.state in _SETTLING:
            return None, False
        return TenantRecord(row.created_at, row.group, row.incarnation, row.token_generation, now), True

    # -- disaster recovery --------------------------------------------------------------------------

    def restore_groups(self) -> GroupsRestored:
        """Put back every group the bucket holds and this server lacks (the newest archive of
        each across namespaces), and read the tenant records anew for `record`. Raises
        ReplicaError, BackupBroken; a group whose archive is refused is reported, not raised."""
        spaces = fleet_doc.listing(self.replica)
        self._view = self._merge(spaces)
        present = set(self.groups.names())
        newest = _newest_groups(info for infos in spaces.values() for info in infos)
        result = GroupsRestored(present=sorted(present & newest.keys()))
        for name in sorted(newest.keys() - present):
            try:
                self._restore_group(name, newest[name].key)
                result.restored.append(name)
            except SqlfleetError as exc:
                if not isinstance(exc, ReplicaError | BackupBroken):
                    result.failed[name] = exc.message
                    log.error("group %s not restored: %s", name, exc.message)
                    continue
                raise
        return result

    def ensure_group(self, name: str) -> bool:
        """Put back group `name` from the bucket if this server lacks it; False if the bucket
        has none. Raises ReplicaError, BackupBroken, and what restoring the archive raises."""
        if name in self.groups.names():
            return True
        found = _newest_groups(self.replica.list(fleet_doc.PREFIX)).get(name)
        if found is None:
            return False
        self._restore_group(name, found.key)
        return True

    def _restore_group(self, name: str, key: str) -> None:
        self.groups.restore(name, fleet_doc.decompress(key, self.replica.get(key)))
        log.warning("group %s restored from the fleet metadata (%s)", name, key)

    def record(self, tenant: str) -> Known | None:
        """The newest record of `tenant` across every namespace (ours as of now). Reads the other
        namespaces once, when first needed (`restore_groups` reads them anew). Raises
        ReplicaError, BackupBroken."""
        if self._view is None:
            self._view = self._merge(fleet_doc.listing(self.replica))
        found = self._view.get(tenant)
        with self._round:  # ours: what a round would publish now
            own = self._own = self._own or self._read_own()
        mine, _ = self._current(own, tenant, time.time())
        if mine is not None and (found is None or mine.updated >= found.record.updated):
            return Known(mine, self.token_key)
        return found

    def check_tokens(self, tenants: Iterable[str]) -> TokenCheck:
        """Whether tokens minted for `tenants` (about to be restored as themselves) will work."""
        minted: Counter[str | None] = Counter()
        unknown = 0
        for tenant in tenants:
            known = self.record(tenant)
            if known is None or known.record.deleted is not None:
                unknown += 1
            else:
                minted[known.token_key] += 1
        changed = sum(n for key, n in minted.items() if key != self.token_key)
        keys = sorted(key or "an unknown key" for key in minted)
        return TokenCheck(self.token_key, keys, unknown, changed)

    def _merge(self, spaces: dict[str, list[ObjectInfo]]) -> dict[str, Known]:
        view: dict[str, Known] = {}
        for server, infos in sorted(spaces.items()):
            if server == self.server:
                continue  # ours is current in memory (`record`)
            space = fleet_doc.read_namespace(self.replica, server, infos)
            for tenant, record in space.records.items():
                if tenant not in view or record.updated > view[tenant].record.updated:
                    view[tenant] = Known(record, space.token_key)
        return view


def _newest_groups(infos: Iterable[ObjectInfo]) -> dict[str, ObjectInfo]:
    """Group name -> its newest archive among `infos` (the bucket's clock orders them)."""
    newest: dict[str, ObjectInfo] = {}
    for info in infos:
        match = fleet_doc.parse_key(info.key)
        name = match["group"] if match else None
        if name and (
            name not in newest or (info.modified, info.key) > (newest[name].modified, newest[name].key)
        ):
            newest[name] = info
    return newest
