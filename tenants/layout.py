"""Where things live in the data directory, and the lock that makes one server own it.

DATA/LOCK                        flock'ed by the owning server for its whole life
DATA/system/catalog.db           the tenant catalog
DATA/tenants/ab/cd/<id>.db       tenant files, spread by sha1(id) over 65,536 folders
DATA/tenants/ab/cd/<id>.db-wal   their WAL
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from tenants.errors import DataDirLocked

TENANT_SUFFIX = ".db"
SIDE_SUFFIXES = ("-wal", "-journal", "-shm")


class Layout:
    """Pure path arithmetic over a data directory; creates folders only when asked to."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir
        self.tenants_dir = data_dir / "tenants"
        self.system_dir = data_dir / "system"
        self.catalog_path = self.system_dir / "catalog.db"
        self.lock_path = data_dir / "LOCK"

    def tenant_path(self, tenant_id: str) -> Path:
        digest = hashlib.sha1(tenant_id.encode(), usedforsecurity=False).hexdigest()
        return self.tenants_dir / digest[:2] / digest[2:4] / f"{tenant_id}{TENANT_SUFFIX}"

    def tenant_files(self, tenant_id: str) -> list[Path]:
        """The main file and its side files (WAL, rollback journal, shm)."""
        main = self.tenant_path(tenant_id)
        return [main, *(main.with_name(main.name + s) for s in SIDE_SUFFIXES)]

    def ensure(self) -> None:
        for folder in (self.root, self.tenants_dir, self.system_dir):
            folder.mkdir(parents=True, exist_ok=True)

    def scan_tenant_ids(self) -> Iterator[str]:
        """Every tenant id with a main file on disk (one scandir per folder)."""
        if not self.tenants_dir.is_dir():
            return
        for top in os.scandir(self.tenants_dir):
            if not top.is_dir():
                continue
            for sub in os.scandir(top.path):
                if not sub.is_dir():
                    continue
                for entry in os.scandir(sub.path):
                    if entry.name.endswith(TENANT_SUFFIX):
                        yield entry.name[: -len(TENANT_SUFFIX)]

    def remove_tenant_files(self, tenant_id: str) -> None:
        """Delete a tenant's files; idempotent."""
        for path in self.tenant_files(tenant_id):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        for path in self.tenant_path(tenant_id).parent.glob(f"{tenant_id}{TENANT_SUFFIX}.tmp*"):
            path.unlink(missing_ok=True)


class DataDirLock:
    """An exclusive flock on DATA/LOCK, held from `acquire` until `release` or process death.

    flock (not fcntl) so it is independent of SQLite's POSIX locks on the tenant files.
    """

    def __init__(self, layout: Layout) -> None:
        self._layout = layout
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Raise DataDirLocked if another process holds the lock."""
        self._layout.ensure()
        fd = os.open(self._layout.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirLocked(
                f"data dir {self._layout.root} is in use by another sqlfleet process"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
