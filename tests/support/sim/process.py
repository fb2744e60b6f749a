"""One simulated server process: the fleet and its backups over the data dir, wired as
ops.server wires them (Backups' hooks on the Fleet, a SealedReplica in front of the replica),
but nothing runs on its own: no flush loop, no metadata loop; the simulation calls flush,
checkpoint, restore and retention itself, one step at a time."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from backups.catalog import BackupCatalog
from backups.fleet_meta import FleetMeta
from backups.keyring import Keyring
from backups.replica import ReplicaClient
from backups.sealed_replica import SealedReplica
from backups.service import Backups
from backups.shipper import Shipper, server_id
from ops.settings import Settings
from tenants.fleet import Fleet
from tenants.hooks import FleetHooks


class NoGroups:
    """The schema groups of a fleet that has none (backups.fleet_meta.GroupArchives)."""

    def names(self) -> list[str]:
        return []

    def take_changed(self) -> set[str]:
        return set()

    def export(self, name: str) -> bytes:
        raise KeyError(name)

    def restore(self, name: str, data: bytes) -> object:
        raise KeyError(name)


class SimProcess:
    """Built whole or not at all: if building fails (or the process dies while starting), what
    was opened is let go and the error propagates."""

    def __init__(
        self, data_dir: Path, settings: Settings, replica: ReplicaClient, keyring: Keyring | None
    ) -> None:
        self.backups: Backups | None = None
        self._parts: list[BackupCatalog] = []

        def hooks(fleet: Fleet) -> list[FleetHooks]:
            self.backups = self._build_backups(fleet, settings, replica, keyring)
            return self.backups.fleet_hooks()

        try:
            self.fleet = Fleet(data_dir, settings.db_config(), settings.pool_config(), hooks)
        except BaseException:
            for part in self._parts:
                with contextlib.suppress(BaseException):
                    part.close()
            raise
        try:
            assert self.backups is not None
            self.backups.prepare(None)
        except BaseException:
            self.abandon()
            raise

    def _build_backups(
        self, fleet: Fleet, settings: Settings, replica: ReplicaClient, keyring: Keyring | None
    ) -> Backups:
        sealed = SealedReplica(replica, keyring)
        catalog = BackupCatalog(fleet.layout.system_dir / "backups.db")
        self._parts.append(catalog)
        config = settings.shipper_config()
        server = server_id(fleet.layout)
        shipper = Shipper(sealed, catalog, fleet.layout, config, server, fleet.lease_if_open)
        meta = FleetMeta(sealed, fleet.catalog, NoGroups(), server, config.flush_interval, config.retention)
        return Backups(sealed, catalog, shipper, fleet, meta)

    @property
    def shipper(self) -> Shipper:
        assert self.backups is not None
        return self.backups.shipper

    def stop(self) -> None:
        """A clean shutdown, as ops.server.Server.close does it: a last flush, checkpoints of
        the fully shipped WALs, then every handle and catalog closed."""
        assert self.backups is not None
        self.backups.stop(time.monotonic() + 60.0)
        self.fleet.close()
        self.backups.close()

    def abandon(self) -> None:
        """The process died: let go of its connections and catalogs without any shutdown work
        (the disk drops a dead process's writes, so closing changes no file). What it left
        unclosed besides goes with the next garbage collection (the caller's)."""
        with contextlib.suppress(BaseException):
            self.fleet.close()
        if self.backups is not None:
            with contextlib.suppress(BaseException):
                self.backups.close()
