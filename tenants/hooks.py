"""Callbacks the layers above tenants register (backups, schema sync). tenants calls them and
never imports their implementations: the arrow stays pointing down."""

from __future__ import annotations

from pathlib import Path

import apsw

from tenants.sandbox import Sandbox


class FleetHooks:
    """No-op base; subclass and override what you need. Hooks run in the calling worker thread
    and may raise a SqlfleetError to refuse the operation."""

    def after_open(self, tenant_id: str, conn: apsw.Connection, sandbox: Sandbox) -> None:
        """A tenant connection was just opened; no request has used it yet."""

    def after_create(self, tenant_id: str, path: Path) -> None:
        """A tenant was created and its file is in place (not yet open in the pool)."""

    def before_delete(self, tenant_id: str) -> None:
        """A tenant is about to lose its files; its handle is already closed."""
