"""Catch-up: a tenant behind its group's released head is migrated before its next request,
whether it is opened then or already open; new tenants of a group start as a copy of its
template.

Wired into the fleet as a FleetHooks (tenants calls it, never imports it). On open, the tenant
is brought to the released head (`after_open`). While it is open, its schema version (how many
of the group's migrations it has) is kept in memory; when a released head moves (the store's
`epoch` changes), the open tenants behind it are noted as due, and each is migrated under its
lock before its next request (`work_due`, `before_use`): a head that did not move costs an
integer comparison and a set lookup per request. A tenant closed at its group's head is
remembered (its version, and the store's epoch then): reopened before any head moved, it is at
the head still (nothing but this server's own opens changes its record: a restore or an import
goes through `before_delete`, which forgets it), so it reopens without reading its record.

A catch-up that fails is rolled back, logged and counted; the tenant is then served as it was:
an unchanged tenant on the old schema beats an unavailable one, and the rollout reports the
failure. It is tried again when the tenant is next opened or the head moves again, not on
every request.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import apsw

from metrics.instruments import SCHEMA_CATCH_UPS
from schema_sync.errors import GroupNotFound
from schema_sync.groups import GroupStore
from schema_sync.migrations import applied, apply
from schema_sync.session import SchemaSession
from tenants.errors import SqlfleetError
from tenants.hooks import FleetHooks
from tenants.pool import Handle
from tenants.sandbox import Sandbox

log = logging.getLogger(__name__)
_local = threading.local()

GroupOf = Callable[[str], str | None]
MAX_REMEMBERED = 200_000


@contextlib.contextmanager
def suppressed() -> Iterator[None]:
    """No catch-up for tenants this thread opens or leases meanwhile: the rollout migrates them
    itself (or, in a dry run, must not change them at all)."""
    previous = getattr(_local, "suppressed", False)
    _local.suppressed = True
    try:
        yield
    finally:
        _local.suppressed = previous


class SchemaHooks(FleetHooks):
    def __init__(self, groups: GroupStore, group_of: GroupOf, lazy_catch_up: bool, timeout: float) -> None:
        self.groups = groups
        self.group_of = group_of
        self.lazy_catch_up = lazy_catch_up
        self.timeout = timeout
        # (a tenant's group is the catalog's to remember: `group_of` is a lookup in memory, and a
        # copy here would cost ~100 bytes a tenant, ~10 MiB at 100k tenants)
        self._lock = threading.Lock()  # guards what follows
        self._versions: dict[str, tuple[str, int]] = {}  # open tenants of a group: group, version
        self._gave_up: dict[str, int] = {}  # open tenants whose catch-up to this head failed
        self._epoch = groups.epoch  # the store's, when `_due` was last worked out
        self._due: set[str] = set()  # open tenants behind their group's released head
        # closed tenants that were at their group's head: the store's epoch then, and version
        self._left: dict[str, tuple[int, int]] = {}

    def before_delete(self, tenant_id: str) -> None:
        self._forget(tenant_id)
        with self._lock:
            self._left.pop(tenant_id, None)

    def before_close(self, tenant_id: str, conn: apsw.Connection) -> None:
        with self._lock:
            entry = self._versions.get(tenant_id)
            settled = self._epoch == self.groups.epoch and tenant_id not in self._due
            if entry is not None and entry[1] >= 0 and settled and tenant_id not in self._gave_up:
                if len(self._left) >= MAX_REMEMBERED:
                    self._left.clear()
                self._left[tenant_id] = (self._epoch, entry[1])
        self._forget(tenant_id)

    def template_for(self, group: str) -> Path | None:
        return self.groups.template_for(group)

    def after_open(self, tenant_id: str, conn: apsw.Connection, sandbox: Sandbox) -> None:
        if not self.lazy_catch_up:
            return
        name = self.group_of(tenant_id)
        if name is None:
            return
        with self._lock:
            left = self._left.pop(tenant_id, None)
        if getattr(_local, "suppressed", False):
            # opened by a rollout (or a dry run, a status read): the first request looks again
            with self._lock:
                self._versions[tenant_id] = (name, -1)
                self._due.add(tenant_id)
            return
        if left is not None and left[0] == self.groups.epoch:
            self._track(tenant_id, name, left[1], left[0])  # no head moved since it closed
            return
        self._catch_up(tenant_id, name, SchemaSession(conn, sandbox, self.timeout))

    def work_due(self, tenant_id: str) -> bool:
        # Runs on the event loop too (inline reads): no I/O. A head that moved is looked at by
        # `before_use`, in a worker thread.
        return self._epoch != self.groups.epoch or tenant_id in self._due

    def before_use(self, tenant_id: str, handle: Handle) -> None:
        if self._epoch != self.groups.epoch:
            self._refresh()
        if tenant_id not in self._due or not self.lazy_catch_up or getattr(_local, "suppressed", False):
            return
        with self._lock:
            entry = self._versions.get(tenant_id)
        assert handle.conn is not None and handle.sandbox is not None
        if entry is not None:
            handle.set_query_only(False)  # the lease sets what the request needs afterwards
            self._catch_up(tenant_id, entry[0], SchemaSession(handle.conn, handle.sandbox, self.timeout))

    def _catch_up(self, tenant_id: str, name: str, session: SchemaSession) -> None:
        """Bring the tenant to its group's released head (a database past it is left alone),
        and remember where it stands."""
        epoch = self.groups.epoch  # read before the head: see `_track`
        version, head = None, 0
        try:
            state = self.groups.get(name).state()
            head = state.head
            history = applied(session)
            version = len(history)
            outcome = apply(
                session, state.migrations, where=f"tenant {tenant_id}", upto=head, history=history
            )
        except GroupNotFound:
            log.warning("tenant %s belongs to group %s, which does not exist", tenant_id, name)
            return
        except (SqlfleetError, apsw.Error) as exc:
            SCHEMA_CATCH_UPS.labels("failed").inc()
            log.error("catch-up of tenant %s to group %s failed: %s", tenant_id, name, exc)
            if version is not None:
                self._track(tenant_id, name, version, epoch, failed_at=head)
            return
        self._track(tenant_id, name, version + len(outcome.applied), epoch)
        if outcome.applied:
            SCHEMA_CATCH_UPS.labels("applied").inc()
            log.info("tenant %s caught up with group %s: %s", tenant_id, name, ", ".join(outcome.applied))

    def _track(
        self, tenant_id: str, name: str, version: int, epoch: int, failed_at: int | None = None
    ) -> None:
        with self._lock:
            self._versions[tenant_id] = (name, version)
            if failed_at is None:
                self._gave_up.pop(tenant_id, None)
            else:
                self._gave_up[tenant_id] = failed_at
            if self.groups.epoch != epoch:
                self._due.add(tenant_id)  # a head moved meanwhile, perhaps this one: look again
            else:
                self._due.discard(tenant_id)

    def _behind(self, tenant_id: str, version: int, head: int) -> bool:
        # caller holds self._lock
        return version < head and self._gave_up.get(tenant_id) != head

    def _refresh(self) -> None:
        """A released head may have moved: note which open tenants it left behind."""
        with self._lock:
            epoch = self.groups.epoch  # read first: a later move makes the next request look again
            if epoch == self._epoch:
                return
            heads: dict[str, int] = {}
            for name in {name for name, _ in self._versions.values()}:
                try:
                    heads[name] = self.groups.get(name).state().head
                except SqlfleetError:
                    continue  # the group is gone, or its files broken: nothing to catch up to
            self._due = {
                tenant
                for tenant, (name, version) in self._versions.items()
                if self._behind(tenant, version, heads.get(name, version))
            }
            self._epoch = epoch

    def _forget(self, tenant_id: str) -> None:
        with self._lock:
            self._versions.pop(tenant_id, None)
            self._gave_up.pop(tenant_id, None)
            self._due.discard(tenant_id)
