"""The shipper's parts over real files: tenant databases opened the way the server opens them
(APSW, WAL, exclusive locking, no checkpoint on close), a real LocalReplica and BackupCatalog in a
temp dir, and restores read back through backups.restore."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import apsw

from backups import restore
from backups.catalog import BackupCatalog
from backups.errors import ReplicaUnavailable
from backups.local_replica import LocalReplica
from backups.shipper import Shipper, ShipperConfig
from ops.settings import Settings
from tenants.layout import Layout
from tenants.pool import Handle
from tenants.sandbox import Sandbox


def shipper_config(**overrides: Any) -> ShipperConfig:
    """The settings' defaults (ops.settings is where they live), with `overrides`."""
    return dataclasses.replace(Settings.load(environ={}).shipper_config(), **overrides)


def open_tenant(path: Path) -> apsw.Connection:
    """A connection set up as tenants.connection sets one up: the WAL survives close and only
    the shipper checkpoints."""
    conn = apsw.Connection(str(path))
    conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
    conn.execute("PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL").fetchall()
    conn.wal_autocheckpoint(0)
    return conn


class FlakyReplica(LocalReplica):
    """A LocalReplica whose next `fail_puts` puts fail as an unreachable replica would (fault injection)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.fail_puts = 0
        self.puts: list[str] = []

    def put_file(self, key: str, source: IO[bytes], *, if_absent: bool = False) -> None:  # `put` too
        if self.fail_puts:
            self.fail_puts -= 1
            raise ReplicaUnavailable("injected: replica unreachable")
        super().put_file(key, source, if_absent=if_absent)
        self.puts.append(key)


class Rig:
    """A data dir with tenants, a replica and a catalog, and a Shipper over them (not started).
    `open` connections stand in for the pool: `lease` hands out the open ones, like
    Fleet.lease_if_open, unless the tenant is marked `busy`."""

    def __init__(self, root: Path, **config: Any) -> None:
        self.root = root
        self.layout = Layout(root / "data")
        self.layout.ensure()
        self.replica = FlakyReplica(root / "replica")
        self.catalog = BackupCatalog(self.layout.system_dir / "backups.db")
        self.config = shipper_config(**config)
        self.conns: dict[str, apsw.Connection] = {}
        self.busy: set[str] = set()
        self.shipper = self.new_shipper()

    def new_shipper(self) -> Shipper:
        """A fresh shipper over the same files (what a restarted server builds)."""
        self.shipper = Shipper(self.replica, self.catalog, self.layout, self.config, "test0001", self.lease)
        return self.shipper

    @contextlib.contextmanager
    def lease(self, tenant_id: str) -> Iterator[Handle | None]:
        conn = self.conns.get(tenant_id)
        if conn is None or tenant_id in self.busy:
            yield None
            return
        handle = Handle(tenant_id)
        handle.conn = conn
        yield handle

    def path(self, tenant_id: str) -> Path:
        return self.layout.tenant_path(tenant_id)

    def wal(self, tenant_id: str) -> Path:
        return Path(f"{self.path(tenant_id)}-wal")

    def create(self, tenant_id: str) -> apsw.Connection:
        """A new tenant (an empty database in WAL mode, its WAL checkpointed away) announced
        to the shipper, then opened with a table `t(v)`."""
        path = self.path(tenant_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = open_tenant(path)
        conn.execute("PRAGMA user_version = 1")
        conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        conn.close()
        self.shipper.after_create(tenant_id, path)
        conn = self.open(tenant_id)
        conn.execute("CREATE TABLE t(v)")
        return conn

    def open(self, tenant_id: str) -> apsw.Connection:
        conn = open_tenant(self.path(tenant_id))
        self.shipper.after_open(tenant_id, conn, Sandbox(statement_timeout=1.0))  # the shipper ignores it
        self.conns[tenant_id] = conn
        return conn

    def close(self, tenant_id: str) -> None:
        conn = self.conns.pop(tenant_id)
        self.shipper.before_close(tenant_id, conn)
        conn.close()

    def insert(self, tenant_id: str, *values: Any) -> None:
        """One commit per value."""
        for v in values:
            self.conns[tenant_id].execute("INSERT INTO t(v) VALUES (?)", (v,))

    def live(self, tenant_id: str) -> list[Any]:
        return [r[0] for r in self.conns[tenant_id].execute("SELECT v FROM t ORDER BY rowid")]

    def restored(self, tenant_id: str, at: float) -> list[Any]:
        """The rows of `t` in the tenant restored from the replica to moment `at`."""
        plan = restore.plan(tenant_id, self.catalog.chunks(tenant_id), at)
        target = self.root / f"restored-{tenant_id}-{len(list(self.root.glob('restored-*')))}.db"
        restore.materialize(plan, self.replica.get_range, target)
        conn = apsw.Connection(str(target))
        try:
            return [r[0] for r in conn.execute("SELECT v FROM t ORDER BY rowid")]
        finally:
            conn.close()

    def shutdown(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()
        self.catalog.close()
        self.replica.close()
