"""Callbacks of the layers above tenants (backups, schema sync), handed to the Fleet when it is
built (see `tenants.fleet.HooksFactory`). tenants calls them and never imports their
implementations: the arrow stays pointing down."""

from __future__ import annotations

from pathlib import Path

import apsw

from tenants.pool import Handle
from tenants.sandbox import Sandbox


class FleetHooks:
    """No-op base; subclass and override what you need. Hooks run in the calling worker thread
    and may raise a SqlfleetError to refuse the operation."""

    def after_open(self, tenant_id: str, conn: apsw.Connection, sandbox: Sandbox) -> None:
        """A tenant connection was just opened; no request has used it yet."""

    def work_due(self, tenant_id: str) -> bool:
        """Whether `before_use` has work for the tenant (open in the pool) now. Called before
        every request, inline reads on the event loop included: a dict lookup, never I/O."""
        return False

    def before_use(self, tenant_id: str, handle: Handle) -> None:
        """Do what `work_due` announced (e.g. a schema catch-up that became due while the tenant
        was open), before a request uses the connection: in a worker thread, with the tenant's
        lock held and no transaction open."""

    def before_close(self, tenant_id: str, conn: apsw.Connection) -> None:
        """A tenant connection is about to close (eviction, delete, shutdown); no lease holds it."""

    def template_for(self, group: str) -> Path | None:
        """The file a new tenant of `group` starts as a copy of (None: not this hook's concern).
        May raise a SqlfleetError for an unknown group."""
        return None

    def after_create(self, tenant_id: str, path: Path) -> None:
        """A tenant was created and its file is in place (not yet open in the pool)."""

    def before_delete(self, tenant_id: str) -> None:
        """A tenant is about to lose its files (deleted, or replaced by a restore); its handle is
        already closed."""

    def after_delete(self, tenant_id: str) -> None:
        """A tenant was deleted (not replaced): its files are gone, its catalog row goes next."""

    def after_revoke(self, tenant_id: str) -> None:
        """The tenant's token generation was bumped (tokens minted before are refused)."""

    def writable(self, tenant_id: str) -> bool:
        """Called before every lease: False makes it read-only (e.g. a backup backlog is full);
        a write then fails with TenantUnavailable instead of running."""
        return True

    def recover(self, tenant_id: str) -> bool:
        """A tenant unknown to the catalog was asked for: recreate it if possible (e.g. from
        backups after a lost disk) and return True, or return False."""
        return False
