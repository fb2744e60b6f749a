"""Lazy catch-up: a tenant opened while behind its group's released head is migrated before
its first request, and new tenants of a group start as a copy of its template.

Wired into the fleet as a FleetHooks (tenants calls it, never imports it). A catch-up that fails
is rolled back, logged and counted; the tenant is then served as it was: an unchanged tenant on
the old schema beats an unavailable one, and the rollout reports the failure.
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
from schema_sync.migrations import apply
from schema_sync.session import SchemaSession
from tenants.errors import SqlfleetError
from tenants.hooks import FleetHooks
from tenants.sandbox import Sandbox

log = logging.getLogger(__name__)
_local = threading.local()

GroupOf = Callable[[str], str | None]
MAX_REMEMBERED = 200_000


@contextlib.contextmanager
def suppressed() -> Iterator[None]:
    """No catch-up for tenants this thread opens meanwhile: the rollout migrates them itself
    (or, in a dry run, must not change them at all)."""
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
        # a tenant's group is fixed at creation: remember it rather than ask the catalog per open
        self._known: dict[str, str | None] = {}

    def _group(self, tenant_id: str) -> str | None:
        if tenant_id in self._known:
            return self._known[tenant_id]
        if len(self._known) >= MAX_REMEMBERED:
            self._known.clear()
        name = self._known[tenant_id] = self.group_of(tenant_id)
        return name

    def before_delete(self, tenant_id: str) -> None:
        self._known.pop(tenant_id, None)

    def after_delete(self, tenant_id: str) -> None:
        self._known.pop(tenant_id, None)

    def template_for(self, group: str) -> Path | None:
        return self.groups.template_for(group)

    def after_open(self, tenant_id: str, conn: apsw.Connection, sandbox: Sandbox) -> None:
        if not self.lazy_catch_up or getattr(_local, "suppressed", False):
            return
        name = self._group(tenant_id)
        if name is None:
            return
        try:
            state = self.groups.get(name).state()
            session = SchemaSession(conn, sandbox, self.timeout)
            outcome = apply(session, state.migrations, where=f"tenant {tenant_id}", upto=state.head)
        except GroupNotFound:
            log.warning("tenant %s belongs to group %s, which does not exist", tenant_id, name)
            return
        except (SqlfleetError, apsw.Error) as exc:
            SCHEMA_CATCH_UPS.labels("failed").inc()
            log.error("catch-up of tenant %s to group %s failed: %s", tenant_id, name, exc)
            return
        if outcome.applied:
            SCHEMA_CATCH_UPS.labels("applied").inc()
            log.info("tenant %s caught up with group %s: %s", tenant_id, name, ", ".join(outcome.applied))
