"""Where things live in the data directory, and the lock that makes one server own it.

DATA/LOCK                        flock'ed by the owning server for its whole life
DATA/system/catalog.db           the tenant catalog
DATA/tenants/ab/cd/<id>.db       tenant files, spread by sha1(id) over 65,536 folders
DATA/tenants/ab/cd/<id>.db-wal   their WAL

Tenant data is the server user's alone: folders 0700, files 0600 (SQLite gives a WAL the mode
of its database file), whatever the umask (`ops.server.serve` also sets one for the rest).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tenants.errors import DataDirLocked, InvalidTenantId
from tenants.ids import validate_tenant_id

TENANT_SUFFIX = ".db"
SIDE_SUFFIXES = ("-wal", "-journal", "-shm")
TMP_MARK = f"{TENANT_SUFFIX}.tmp"  # <id>.db.tmpXXXXXXXX: a file being created or restored
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


@dataclass
class Scan:
    """What the tenant folders hold: `tenant_ids` with a main file where the id says it lives;
    `leftovers`, temporary files (and their side files) of creates and restores; `strays`, main
    files of no tenant (the name is not a valid id, or the id does not hash to that folder)."""

    tenant_ids: set[str] = field(default_factory=set)
    leftovers: list[Path] = field(default_factory=list)
    strays: list[Path] = field(default_factory=list)


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

    def tenant_size(self, tenant_id: str) -> int:
        """Bytes on disk of the main file and its side files; 0 for files that are not there."""
        size = 0
        for path in self.tenant_files(tenant_id):
            with contextlib.suppress(FileNotFoundError):  # a concurrent delete or checkpoint
                size += path.stat().st_size
        return size

    def ensure(self) -> None:
        """Make the data dir's folders, private. Folders made by an older version (0755) are
        made private too; the data dir itself only if we make it (it may be a mount point)."""
        self.root.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        for folder in (self.tenants_dir, self.system_dir):
            folder.mkdir(mode=PRIVATE_DIR, exist_ok=True)
            os.chmod(folder, PRIVATE_DIR)

    def make_tenant_dir(self, tenant_id: str) -> Path:
        """The folder of the tenant's files, made (private) if needed."""
        folder = self.tenant_path(tenant_id).parent
        for level in (folder.parent, folder):
            level.mkdir(mode=PRIVATE_DIR, exist_ok=True)
        return folder

    def scan(self) -> Scan:
        """One pass over the tenant folders (one scandir per folder); changes nothing."""
        found = Scan()
        for top in _subdirs(self.tenants_dir):
            for sub in _subdirs(top):
                with os.scandir(sub) as entries:
                    for entry in entries:
                        self._classify(Path(entry.path), found)
        return found

    def _classify(self, path: Path, found: Scan) -> None:
        if TMP_MARK in path.name:
            found.leftovers.append(path)
        elif path.name.endswith(TENANT_SUFFIX):
            tenant_id = path.name[: -len(TENANT_SUFFIX)]
            try:
                validate_tenant_id(tenant_id)
            except InvalidTenantId:
                found.strays.append(path)
                return
            if self.tenant_path(tenant_id) == path:
                found.tenant_ids.add(tenant_id)
            else:
                found.strays.append(path)

    def remove_tenant_files(self, tenant_id: str) -> None:
        """Delete a tenant's files; idempotent."""
        for path in self.tenant_files(tenant_id):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        for path in self.tenant_path(tenant_id).parent.glob(f"{tenant_id}{TENANT_SUFFIX}.tmp*"):
            path.unlink(missing_ok=True)


def copy_private(source: Path, dest: Path) -> None:
    """Copy `source` to the new file `dest`, readable by this user only (raises
    FileExistsError if `dest` exists)."""
    os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    shutil.copyfile(source, dest)  # into the file just made: its mode stays


def _subdirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    with os.scandir(folder) as entries:
        return [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]


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
        # the pid is for people reading the file: a full disk must not stop a start (nor leave
        # the lock held by a descriptor nobody owns)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
