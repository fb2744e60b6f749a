"""The simulated machine's disk. Every file operation of the code under test below `root` passes
through here, so the simulation can count it (each one is a tick: a point where the process may
die), fail it (a full disk, I/O errors), and after a crash put the files back as the crash left
them.

Two ways in:
- SQLite's I/O (tenant files and WALs, both catalogs, snapshot copies, restored files) through an
  apsw VFS that inherits the default one and is made the default while the simulation runs;
- sqlfleet's own file I/O through the functions it calls: `open` (also `io.open`, which
  `os.fdopen`, `tempfile` and `pathlib` use), `os.open`, `os.write`, `os.fsync`, `os.replace`,
  `os.rename`, `os.unlink`. Reads and writes on a Python file object already open are not seen
  one by one (C code): a fault hits those files when they are opened or fsync'd.
Files elsewhere (pytest's own, SQLite's temporary files) pass through untouched.

What a crash leaves:
- A process crash (kill -9) loses the process, not the page cache: the files are exactly as they
  were at the operation the process died in (that operation not done). What the dying process
  still does on its way out (Python `finally` blocks, buffered writes flushed by a close) is
  undone: the files are photographed at the crash point and put back after the teardown (in
  place, so inodes stay: continuity compares them).
- A power loss also loses what was not made durable, as a journaling file system may: for each
  file, a prefix of its writes since its last fsync survives (SQLite's writes page by page; a
  file sqlfleet writes is cut at some byte past its last fsync'd length); for each directory, a
  prefix of its entry changes (create, rename, unlink) since its last fsync survives, the rest
  are undone (an unlinked file comes back, a rename goes back). What may be undone of a file's
  writes belongs to that file: a new file at its path (after an unlink or a rename over it)
  starts with nothing to undo, and so never gets the old one's bytes. A file SQLite creates
  counts as durable after its first sync (SQLite syncs the directory of a new WAL or journal then).
  Directories made with mkdir, and the replica (a remote object store: a power loss here does
  not touch it), are durable at once. fsync itself is not carried out (the model decides what is
  durable), which keeps runs fast.
A dead process's later SQLite writes are dropped and its other I/O raises SimCrash again, so the
teardown (closing connections and descriptors without any clean-shutdown path) cannot change
anything.

Faults: `Faults.full` makes every growing write fail (ENOSPC, SQLITE_FULL for SQLite), and every
open for writing (a Python file object's later writes cannot be failed one by one); the EIO rates
fail reads, writes (including renames) and syncs at random.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
import random
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw

from tests.support.sim.clock import SimClock

VFS_NAME = "sqlfleet-sim"

_real_open = io.open
_real_os_open = os.open
_real_write = os.write
_real_fsync = os.fsync
_real_replace = os.replace
_real_rename = os.rename
_real_unlink = os.unlink
_real_statvfs = os.statvfs


class SimCrash(BaseException):
    """The process died. A BaseException, so the code under test's `except Exception` does not
    swallow it (whatever it does, the simulation tears the process down once it died)."""


@dataclass
class Faults:
    full: bool = False  # the data disk is full
    write_eio: float = 0.0  # chance that a write, rename or create fails with EIO
    read_eio: float = 0.0
    sync_eio: float = 0.0


@dataclass(frozen=True)
class FileImage:
    data: bytes
    mtime_ns: int
    mode: int


@dataclass
class Image:
    """The files and directories below the root at one moment (paths relative to it)."""

    files: dict[str, FileImage] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)


# -- what a power loss may undo ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Wrote:
    """SQLite wrote `length` bytes at `offset`; the bytes there before, and the size before."""

    offset: int
    old: bytes
    old_size: int


@dataclass(frozen=True)
class _Truncated:
    size: int
    tail: bytes  # what the truncation cut off


@dataclass(frozen=True)
class _Created:
    path: str


@dataclass(frozen=True)
class _Unlinked:
    path: str
    image: FileImage | None  # None: not captured (no power loss in this run)


@dataclass(frozen=True)
class _Renamed:
    src: str
    dst: str
    old: FileImage | None  # what `dst` held before (None: nothing)


_DirOp = _Created | _Unlinked | _Renamed


class SimDisk:
    """The disk of one simulation run. Not thread-safe (a run has one thread)."""

    def __init__(self, root: Path, rng: random.Random, clock: SimClock, track_power: bool) -> None:
        self.root = root.resolve()
        self._prefix = str(self.root) + os.sep
        self.rng = rng
        self.clock = clock
        self.track_power = track_power  # keep what a power loss needs (costs a read per unlink)
        # paths below these are a remote store: a power loss does not touch them
        self.remote: list[str] = []
        self.faults = Faults()
        self.ticks = 0
        self.crash_at: int | None = None  # the tick the process dies at
        self.power_loss = False  # the armed crash is a power loss
        self.dead = False
        self.image: Image | None = None  # the files as the crash left them
        self.quiet = 0  # > 0: observing, not running: no faults, no crash
        self.events: list[str] = []  # faults injected (the trace)
        self.journal_faults = 0  # faults that may cost commit-times records
        self._writes: dict[str, list[_Wrote | _Truncated]] = {}  # SQLite writes since the last sync
        self._unsynced: dict[str, int] = {}  # files written by Python: length at their last fsync
        self._dir_ops: dict[str, list[_DirOp]] = {}  # entry changes since the directory's fsync

    # -- the process ------------------------------------------------------------------------------

    def ours(self, path: str | None) -> bool:
        return path is not None and path.startswith(self._prefix)

    def rel(self, path: str) -> str:
        return path[len(self._prefix) :]

    @contextlib.contextmanager
    def quietly(self) -> Iterator[None]:
        """No faults and no crash inside (the simulation looking at files, not the server)."""
        self.quiet += 1
        try:
            yield
        finally:
            self.quiet -= 1

    def tick(self, what: str, path: str) -> None:
        """One operation of ours is about to run: the process may die right here."""
        if self.dead:
            raise SimCrash(f"the process is dead ({what} {self.rel(path)})")
        if self.quiet:
            return  # the simulation looking: not part of the run
        self.ticks += 1
        if self.crash_at is not None and self.ticks >= self.crash_at:
            self.die(f"{what} {self.rel(path)}")

    def die(self, where: str) -> None:
        """Crash now: photograph the files (less what a power loss loses), then raise SimCrash."""
        kind = "power loss" if self.power_loss else "crash"
        self.events.append(f"{self.ticks} {kind} at {where}")
        self.image = self.photograph()
        if self.power_loss:
            self._lose_unsynced(self.image)
        self.dead = True
        self.crash_at = None
        raise SimCrash(f"{kind} at tick {self.ticks}: {where}")

    def fault(self, kind: str, path: str, grows: bool = False) -> int | None:
        """The errno this operation fails with, if it does ('read', 'write' or 'sync')."""
        if self.quiet:
            return None
        faults = self.faults
        code = None
        if grows and faults.full and kind == "write":
            code = errno.ENOSPC
        else:
            rate = {"read": faults.read_eio, "write": faults.write_eio, "sync": faults.sync_eio}[kind]
            if rate and self.rng.random() < rate:
                code = errno.EIO
        if code is not None:
            self.events.append(f"{self.ticks} {errno.errorcode[code]} {kind} {self.rel(path)}")
            # a commit's record in the commit-times journal is lost when writing the journal
            # fails, or reading its key (the WAL's salts, from the WAL's header) does
            if "/commit-times/" in path or (kind == "read" and path.endswith("-wal")):
                self.journal_faults += 1
        return code

    def os_fault(self, kind: str, path: str, grows: bool = False) -> None:
        code = self.fault(kind, path, grows)
        if code is not None:
            raise OSError(code, f"{os.strerror(code)} (simulated)", path)

    def let_go(self) -> None:
        """The process died: whatever descriptor of its files is still open (one a crash cut
        off before its owner kept it, such as a lock taken and never recorded) goes, as the
        kernel closes a dead process's. Each is pointed at /dev/null, never closed here: only
        its holder may close a number (when it is collected), or a later close by number would
        hit whatever file or socket of this test process reused it meanwhile (a catalog of the
        next test's server got EBADF as "disk I/O error"). One nobody holds stays open on
        /dev/null until the test process ends: a few per crash. Its SQLite connections still
        open go first (`close_connections`), closed while the process is dead, so closing them
        writes and deletes nothing."""
        assert self.dead
        self.close_connections()
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            path = _fd_path(fd)
            if self.ours(path):  # one already let go points at /dev/null: not ours
                assert path is not None
                self.events.append(f"the dead process still had {self.rel(path)} open")
                devnull = _real_os_open(os.devnull, os.O_RDWR)
                os.dup2(devnull, fd)
                os.close(devnull)

    def close_connections(self) -> None:
        """Close every SQLite connection still open on a file below the root: the process they
        belonged to is gone (dead, failed to start, or the run is over). One that something
        still holds (a disarmed watchdog alarm keeps its connection until the alarm's deadline)
        would otherwise close whenever it is let go, maybe on another thread, and checkpoint into
        the next process's files. Not in the trace: which ones are still held depends on the
        garbage collector and the watchdog thread."""
        for conn in apsw.connections():
            with contextlib.suppress(Exception, SimCrash):
                if self.ours(conn.filename):
                    conn.close(True)

    def revive(self) -> Image | None:
        """The process is gone: the next one may start. Returns the files as the crash left them."""
        image, self.image = self.image, None
        self.dead = False
        self._writes.clear()
        self._unsynced.clear()
        self._dir_ops.clear()
        return image

    # -- bookkeeping for power losses -------------------------------------------------------------

    def wrote(self, path: str, record: _Wrote | _Truncated) -> None:
        if self.track_power:
            self._writes.setdefault(path, []).append(record)

    def synced(self, path: str, entry: bool = False) -> None:
        """`path` (a file, or a directory's entries) is durable now; with `entry`, its directory
        too (SQLite syncs a new WAL's or journal's directory with its first sync)."""
        self._writes.pop(path, None)
        self._unsynced.pop(path, None)
        self._dir_ops.pop(path, None)
        if entry:
            self._dir_ops.pop(os.path.dirname(path), None)

    def written(self, path: str, durable_length: int) -> None:
        """sqlfleet opened `path` for writing; what it held up to `durable_length` is durable."""
        if self.track_power:
            self._unsynced.setdefault(path, durable_length)

    def dir_op(self, op: _DirOp, path: str) -> None:
        if self.track_power:
            self._dir_ops.setdefault(os.path.dirname(path), []).append(op)

    def capture(self, path: str) -> FileImage | None:
        """The file at `path` now, if a power loss may need it back."""
        if not self.track_power or self._remote(path):
            return None
        try:
            with _real_open(path, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    return None
                return FileImage(f.read(), st.st_mtime_ns, stat.S_IMODE(st.st_mode))
        except OSError:
            return None

    def gone(self, path: str) -> None:
        """The file at `path` was unlinked or replaced: what a power loss may undo of its writes
        goes with it (a new file at that path has a history of its own)."""
        self._writes.pop(path, None)
        self._unsynced.pop(path, None)

    def renamed(self, src: str, dst: str) -> None:
        self.gone(dst)
        if src in self._writes:
            self._writes[dst] = self._writes.pop(src)
        if src in self._unsynced:
            self._unsynced[dst] = self._unsynced.pop(src)

    def _remote(self, path: str) -> bool:
        return any(path.startswith(r) for r in self.remote)

    def _lose_unsynced(self, image: Image) -> None:
        """Apply a power loss to `image` (see the module docstring). Files and directories are
        taken in the order they were first touched, not by name: names can be random (temporary
        files), and the random draws must come in the same order for a seed to replay."""
        for directory in list(self._dir_ops):
            if self._remote(directory + os.sep):
                continue
            ops = self._dir_ops[directory]
            keep = self.rng.randint(0, len(ops))
            for op in reversed(ops[keep:]):
                self.events.append(f"power loss undoes {type(op).__name__[1:].lower()} {self._op_name(op)}")
                self._undo(image, op)
        for path in list(self._writes):
            rel = self.rel(path)
            if rel not in image.files or self._remote(path):
                continue
            writes = self._writes[path]
            keep = self.rng.randint(0, len(writes))
            if keep < len(writes):
                self.events.append(f"power loss drops {len(writes) - keep} writes to {rel}")
            data = bytearray(image.files[rel].data)
            for w in reversed(writes[keep:]):
                if isinstance(w, _Wrote):
                    data[w.offset : w.offset + len(w.old)] = w.old
                    del data[w.old_size :]
                else:
                    del data[w.size :]
                    data += w.tail
            old = image.files[rel]
            image.files[rel] = FileImage(bytes(data), old.mtime_ns, old.mode)
        for path in list(self._unsynced):
            rel = self.rel(path)
            if rel not in image.files or self._remote(path):
                continue
            old = image.files[rel]
            durable = min(self._unsynced[path], len(old.data))
            cut = self.rng.randint(durable, len(old.data))
            if cut < len(old.data):
                self.events.append(f"power loss cuts {rel} at {cut} of {len(old.data)}")
            image.files[rel] = FileImage(old.data[:cut], old.mtime_ns, old.mode)

    def _op_name(self, op: _DirOp) -> str:
        if isinstance(op, _Renamed):
            return f"{self.rel(op.src)} -> {self.rel(op.dst)}"
        return self.rel(op.path)

    def _undo(self, image: Image, op: _DirOp) -> None:
        if isinstance(op, _Created):
            image.files.pop(self.rel(op.path), None)
        elif isinstance(op, _Unlinked):
            if op.image is not None:
                image.files[self.rel(op.path)] = op.image
        else:
            moved = image.files.pop(self.rel(op.dst), None)
            if moved is not None:
                image.files[self.rel(op.src)] = moved
            if op.old is not None:
                image.files[self.rel(op.dst)] = op.old

    # -- photographs ------------------------------------------------------------------------------

    def photograph(self) -> Image:
        """Every file and directory below the root, as it is now."""
        image = Image()
        for directory, dirs, files in os.walk(self.root):
            base = Path(directory)
            for name in dirs:
                image.dirs.add(str((base / name).relative_to(self.root)))
            for name in files:
                path = base / name
                try:
                    with _real_open(path, "rb") as f:
                        st = os.fstat(f.fileno())
                        data = f.read()
                except FileNotFoundError:
                    continue
                image.files[str(path.relative_to(self.root))] = FileImage(
                    data, st.st_mtime_ns, stat.S_IMODE(st.st_mode)
                )
        return image

    def put_back(self, image: Image) -> None:
        """Make the files below the root what `image` holds: files that are there are rewritten
        in place (their inodes stay), others made, and what the image lacks removed."""
        now = self.photograph()
        for rel in sorted(set(now.files) - set(image.files)):
            _real_unlink(self.root / rel)
        for rel in sorted(now.dirs - image.dirs, key=lambda r: -r.count(os.sep)):
            with contextlib.suppress(OSError):
                (self.root / rel).rmdir()
        for rel in sorted(image.dirs):
            (self.root / rel).mkdir(parents=True, exist_ok=True)
        for rel, want in sorted(image.files.items()):
            path = self.root / rel
            have = now.files.get(rel)
            if have is None:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = _real_os_open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, want.mode)
                with _real_open(fd, "wb") as f:
                    f.write(want.data)
            elif have.data != want.data:
                with _real_open(path, "r+b") as f:
                    f.write(want.data)
                    f.truncate(len(want.data))
            if have is None or have.mode != want.mode:
                os.chmod(path, want.mode)
            os.utime(path, ns=(want.mtime_ns, want.mtime_ns))

    # -- installing -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """SQLite's and sqlfleet's file I/O go through this disk inside the block."""
        vfs = _SimVFS(self)
        hooks = _OsHooks(self)
        hooks.install()
        try:
            yield
        finally:
            hooks.uninstall()
            # no connection may outlive the VFS it was opened with (closed later, it would call
            # into freed memory: an abort at some later collection, in another test)
            left = [c.filename for c in apsw.connections() if self.ours(c.filename)]
            with self.quietly():
                self.close_connections()
            vfs.unregister()
            apsw.set_default_vfs("unix")
        if left:
            raise AssertionError(f"connections still open when the disk's VFS went: {left}")


# -- SQLite ------------------------------------------------------------------------------------------


def _sqlite_error(code: int) -> BaseException:
    return apsw.exception_for(code)


class _SimVFS(apsw.VFS):
    def __init__(self, disk: SimDisk) -> None:
        self.disk = disk
        super().__init__(VFS_NAME, "unix", makedefault=True)

    def xOpen(self, name: Any, flags: list[int]) -> SimFile:
        path = name.filename() if isinstance(name, apsw.URIFilename) else name
        disk = self.disk
        if disk.ours(path) and not disk.dead:
            disk.tick("open", path)
            created = bool(flags[0] & apsw.SQLITE_OPEN_CREATE) and not os.path.exists(path)
            if created:  # creating a file works on a full disk too: growing it fails
                disk.dir_op(_Created(path), path)
        return SimFile(disk, path, name, flags)

    def xDelete(self, name: str, syncdir: bool) -> None:
        disk = self.disk
        if disk.ours(name):
            if disk.dead:
                return
            disk.tick("delete", name)
            if not syncdir:
                disk.dir_op(_Unlinked(name, disk.capture(name)), name)
            super().xDelete(name, syncdir)
            disk.gone(name)
            return
        super().xDelete(name, syncdir)


class SimFile(apsw.VFSFile):
    def __init__(self, disk: SimDisk, path: str | None, name: Any, flags: list[int]) -> None:
        self.disk = disk
        self.path = path if disk.ours(path) else None
        super().__init__("unix", name, flags)

    def xRead(self, amount: int, offset: int) -> bytes:
        path, disk = self.path, self.disk
        if path is not None and not disk.dead:
            disk.tick("read", path)
            if disk.fault("read", path) is not None:
                raise _sqlite_error(apsw.SQLITE_IOERR_READ)
        return super().xRead(amount, offset)

    def xWrite(self, data: bytes, offset: int) -> None:
        path, disk = self.path, self.disk
        if path is None:
            super().xWrite(data, offset)
            return
        if disk.dead:
            return  # a dead process writes nothing
        disk.tick("write", path)
        size = super().xFileSize()
        code = disk.fault("write", path, grows=offset + len(data) > size)
        if code is not None:
            raise _sqlite_error(apsw.SQLITE_FULL if code == errno.ENOSPC else apsw.SQLITE_IOERR_WRITE)
        if disk.track_power:
            overlap = max(0, min(size, offset + len(data)) - offset)
            old = super().xRead(overlap, offset) if overlap else b""
            disk.wrote(path, _Wrote(offset, old, size))
        super().xWrite(data, offset)
        os.utime(path, ns=(disk.clock.ns(), disk.clock.ns()))

    def xTruncate(self, newsize: int) -> None:
        path, disk = self.path, self.disk
        if path is None:
            super().xTruncate(newsize)
            return
        if disk.dead:
            return
        disk.tick("truncate", path)
        if disk.fault("write", path) is not None:
            raise _sqlite_error(apsw.SQLITE_IOERR_TRUNCATE)
        size = super().xFileSize()
        if disk.track_power and newsize < size:
            disk.wrote(path, _Truncated(newsize, super().xRead(size - newsize, newsize)))
        super().xTruncate(newsize)
        os.utime(path, ns=(disk.clock.ns(), disk.clock.ns()))

    def xSync(self, flags: int) -> None:
        path, disk = self.path, self.disk
        if path is None:
            super().xSync(flags)
            return
        if disk.dead:
            return
        disk.tick("sync", path)
        if disk.fault("sync", path) is not None:
            raise _sqlite_error(apsw.SQLITE_IOERR_FSYNC)
        disk.synced(path, entry=True)  # durable by the model's say-so: the real fsync is skipped


# -- sqlfleet's own file I/O -------------------------------------------------------------------------


def _fd_path(fd: int) -> str | None:
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return target.removesuffix(" (deleted)")


def _resolve(path: Any, dir_fd: int | None = None) -> str | None:
    if isinstance(path, int):
        return None
    try:
        text = os.fsdecode(os.fspath(path))
    except TypeError:
        return None
    if dir_fd is not None and not os.path.isabs(text):
        base = _fd_path(dir_fd)
        return None if base is None else os.path.join(base, text)
    return os.path.abspath(text)


class _OsHooks:
    """The os and io functions sqlfleet's own file I/O goes through, routed via the disk."""

    def __init__(self, disk: SimDisk) -> None:
        self.disk = disk
        self._saved: list[tuple[Any, str, Any]] = []

    def install(self) -> None:
        for module, name, hook in (
            (builtins, "open", self.open),
            (io, "open", self.open),
            (os, "open", self.os_open),
            (os, "write", self.write),
            (os, "fsync", self.fsync),
            (os, "replace", self.replace),
            (os, "rename", self.rename),
            (os, "unlink", self.unlink),
            (os, "remove", self.unlink),
            (os, "statvfs", self.statvfs),
        ):
            self._saved.append((module, name, getattr(module, name)))
            setattr(module, name, hook)

    def uninstall(self) -> None:
        for module, name, real in reversed(self._saved):
            setattr(module, name, real)
        self._saved.clear()

    def open(self, file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        disk = self.disk
        path = _resolve(file)
        if not disk.ours(path):
            return _real_open(file, mode, *args, **kwargs)
        assert path is not None
        writing = any(c in mode for c in "wax+")
        existed = os.path.exists(path)
        disk.tick("open-w" if writing else "open", path)
        disk.os_fault("write" if writing else "read", path, grows=writing)
        f = _real_open(file, mode, *args, **kwargs)
        if writing:
            disk.written(path, 0 if ("w" in mode or not existed) else os.fstat(f.fileno()).st_size)
            if not existed:
                disk.dir_op(_Created(path), path)
        return f

    def os_open(self, path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        disk = self.disk
        full = _resolve(path, dir_fd)
        if not disk.ours(full):
            return _real_os_open(path, flags, mode, dir_fd=dir_fd)
        assert full is not None
        if flags & os.O_DIRECTORY:  # for an fsync of the directory
            disk.tick("open-dir", full)
            return _real_os_open(path, flags, mode, dir_fd=dir_fd)
        tmpfile = flags & os.O_TMPFILE == os.O_TMPFILE
        writing = bool(flags & (os.O_WRONLY | os.O_RDWR))
        creates = tmpfile or (bool(flags & os.O_CREAT) and not os.path.exists(full))
        disk.tick("open-w" if writing else "open", full)
        disk.os_fault("write" if writing else "read", full, grows=creates or bool(flags & os.O_APPEND))
        fd = _real_os_open(path, flags, mode, dir_fd=dir_fd)
        if writing and not tmpfile:
            disk.written(full, 0 if (creates or flags & os.O_TRUNC) else os.fstat(fd).st_size)
            if creates:
                disk.dir_op(_Created(full), full)
        return fd

    def write(self, fd: int, data: Any) -> int:
        disk = self.disk
        path = _fd_path(fd)
        if not disk.ours(path):
            return _real_write(fd, data)
        assert path is not None
        disk.tick("write", path)
        disk.os_fault("write", path, grows=True)
        return _real_write(fd, data)

    def fsync(self, fd: Any) -> None:
        disk = self.disk
        number = fd if isinstance(fd, int) else fd.fileno()
        path = _fd_path(number)
        if not disk.ours(path):
            _real_fsync(fd)
            return
        assert path is not None
        disk.tick("fsync", path)
        disk.os_fault("sync", path)
        disk.synced(path)

    def replace(
        self, src: Any, dst: Any, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None
    ) -> None:
        self._move(_real_replace, src, dst, src_dir_fd, dst_dir_fd)

    def rename(
        self, src: Any, dst: Any, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None
    ) -> None:
        self._move(_real_rename, src, dst, src_dir_fd, dst_dir_fd)

    def _move(
        self, real: Callable[..., None], src: Any, dst: Any, src_dir_fd: int | None, dst_dir_fd: int | None
    ) -> None:
        disk = self.disk
        s, d = _resolve(src, src_dir_fd), _resolve(dst, dst_dir_fd)
        if not (disk.ours(s) or disk.ours(d)):
            real(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
            return
        assert s is not None and d is not None
        disk.tick("rename", d)
        disk.os_fault("write", d)
        old = disk.capture(d)
        real(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        disk.renamed(s, d)
        disk.dir_op(_Renamed(s, d, old), d)

    def statvfs(self, path: Any) -> os.statvfs_result:
        """A full disk has no blocks free (sqlfleet tells a full disk from a database at its size
        limit this way: SQLite says SQLITE_FULL for both)."""
        result = _real_statvfs(path)
        disk = self.disk
        if disk.faults.full and not disk.quiet and disk.ours(_resolve(path)):
            values = list(result)
            values[3] = values[4] = 0  # f_bfree, f_bavail
            return os.statvfs_result(values)
        return result

    def unlink(self, path: Any, *, dir_fd: int | None = None) -> None:
        disk = self.disk
        full = _resolve(path, dir_fd)
        if not disk.ours(full):
            _real_unlink(path, dir_fd=dir_fd)
            return
        assert full is not None
        disk.tick("unlink", full)
        captured = disk.capture(full)
        _real_unlink(path, dir_fd=dir_fd)
        disk.gone(full)
        disk.dir_op(_Unlinked(full, captured), full)
