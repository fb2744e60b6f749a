"""A replica in a local directory: the embedded default, and a mount point for NFS or a volume.

Objects are plain files under `root` at their key's path. A put writes a hidden temporary file
next to the target (copying a source file a piece at a time), fsyncs it, renames it over the
target and fsyncs the directory (tenants.files.replace_durably), so a crash leaves the old object
or the new one. A conditional create (`if_absent`) links the synced temporary file to the
target instead: link(2) fails atomically if the target exists, and the object appears whole.
Directories left empty by deletes are removed.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import stat
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from backups.errors import ObjectExists, ReplicaError, ReplicaNotFound, ReplicaUnavailable
from backups.replica import ObjectInfo, ReplicaClient, check_range, validate_key, validate_prefix
from backups.spool import PIECE
from tenants.files import fsync_dir, fsync_file, replace_durably

# Conditions that may clear up by themselves (space freed, mount back, descriptors released).
_TRANSIENT_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EIO,
        errno.EAGAIN,
        errno.EINTR,
        errno.EBUSY,
        errno.ESTALE,
        errno.ENOTCONN,
        errno.ETIMEDOUT,
        errno.EMFILE,
        errno.ENFILE,
    }
)
_PUT_ATTEMPTS = 5  # a concurrent delete may remove the directory between mkdir and open
_OBJECT_MODE = 0o600  # the server's user only (less the umask)


class LocalReplica(ReplicaClient):
    """ReplicaClient over a directory tree; `root` is created on the first put."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalReplica({str(self.root)!r})"

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        self.put_file(key, io.BytesIO(data), if_absent=if_absent)

    def put_file(self, key: str, source: IO[bytes], *, if_absent: bool = False) -> None:
        path = self._path(validate_key(key))
        start = source.tell()
        with _translated(key, writing=True):
            for attempt in range(_PUT_ATTEMPTS):
                try:
                    self._make_dirs(path.parent)
                    source.seek(start)
                    _copy_durably(source, path, key if if_absent else None)
                    return
                except FileNotFoundError:
                    if attempt == _PUT_ATTEMPTS - 1:
                        raise

    def get(self, key: str) -> bytes:
        with _translated(key), open(self._path(validate_key(key)), "rb") as f:
            return f.read()

    def get_range(self, key: str, start: int, length: int) -> bytes:
        path = self._path(validate_key(key))
        check_range(start, length)
        with _translated(key), open(path, "rb") as f:
            f.seek(start)
            return f.read(length)

    def head(self, key: str) -> ObjectInfo:
        path = self._path(validate_key(key))
        with _translated(key):
            st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise ReplicaNotFound(f"no replica object {key!r}", key=key)
        return ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        directory, _, _ = prefix.rpartition("/")
        start = self._path(directory) if directory else self.root
        with _translated(prefix):
            yield from self._walk(start, directory + "/" if directory else "", prefix)

    def delete(self, keys: Iterable[str]) -> None:
        keyed = [(k, self._path(validate_key(k))) for k in keys]
        parents: set[Path] = set()
        for key, path in keyed:
            with _translated(key):
                try:
                    path.unlink()
                except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                    continue  # no object under this key: deleting it is a no-op
            parents.add(path.parent)
        # Deepest first, so a parent sees its emptied children gone.
        for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
            self._prune(parent)

    def close(self) -> None:
        pass

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    def _walk(self, directory: Path, key_prefix: str, prefix: str) -> Iterator[ObjectInfo]:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        # Sorting directories as "name/" makes a depth-first walk yield keys in full-key order:
        # "a-b" < "a/x" because '-' < '/', although "a" < "a-b".
        named = sorted(
            (
                (e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, e)
                for e in entries
                if not e.name.startswith(".")  # temporary files of puts in progress
            ),
            key=lambda pair: pair[0],
        )
        for name, entry in named:
            key = key_prefix + name
            if name.endswith("/"):
                if key.startswith(prefix) or prefix.startswith(key):
                    yield from self._walk(Path(entry.path), key, prefix)
            elif key.startswith(prefix):
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue  # deleted while listing
                yield ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def _make_dirs(self, directory: Path) -> None:
        """Create `directory` and its missing parents, each made durable in its parent."""
        missing: list[Path] = []
        probe = directory
        while not probe.is_dir():
            missing.append(probe)
            if probe.parent == probe:
                break
            probe = probe.parent
        for d in reversed(missing):
            with contextlib.suppress(FileExistsError):
                d.mkdir()
            fsync_dir(d.parent)

    def _prune(self, directory: Path) -> None:
        """Remove `directory` and its ancestors below the root while they are empty."""
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return  # not empty (or already gone, or in use): stop climbing
            directory = directory.parent


def _copy_durably(source: IO[bytes], path: Path, create: str | None = None) -> None:
    """Replace `path` durably with the rest of `source`; `create` (the key): create it, or
    raise ObjectExists. The directory must exist. On failure `path` is unchanged and no
    temporary file is left."""
    tmp = path.with_name(f".{path.name}.tmp{uuid.uuid4().hex[:8]}")  # hidden: `list` skips it
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _OBJECT_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            shutil.copyfileobj(source, f, PIECE)
        if create is None:
            replace_durably(tmp, path)
            return
        fsync_file(tmp)
        try:
            os.link(tmp, path)  # atomic, and fails if anything is there (rename would replace it)
        except FileExistsError:
            raise ObjectExists(f"replica object {create!r} exists already", key=create) from None
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.unlink()  # the object keeps the data through its own link


@contextlib.contextmanager
def _translated(key: str, writing: bool = False) -> Iterator[None]:
    """Turn OSError into the ReplicaError the interface promises."""
    try:
        yield
    except ReplicaError:
        raise
    except (NotADirectoryError, IsADirectoryError) as e:
        if not writing:
            raise ReplicaNotFound(f"no replica object {key!r}", key=key) from None
        raise ReplicaError(f"replica key {key!r} collides with another key's directory", key=key) from e
    except FileNotFoundError:
        raise ReplicaNotFound(f"no replica object {key!r}", key=key) from None
    except OSError as e:
        kind = ReplicaUnavailable if e.errno in _TRANSIENT_ERRNOS else ReplicaError
        raise kind(f"local replica: {key!r}: {e.strerror or e}", key=key) from e
