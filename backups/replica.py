"""The replica client interface: where segments and snapshots live, whatever the backend.

Every backend (a local directory, S3 and its look-alikes) implements `ReplicaClient` and passes
the one conformance suite in tests/backups/test_replica_conformance.py.

Objects can be larger than memory should hold (one segment carries one commit, whatever its
size): `put_file` uploads from a file and `get_range` reads a bounded piece, so callers stream.

Keys are relative '/'-separated paths such as `segments/000001.seg`: non-empty components, none
of them `.`/`..` or starting with a dot (the local backend keeps its temporary files there), no
leading or trailing '/', no backslash or control characters, at most 1,024 UTF-8 bytes. A key
must not also be a directory of another key (`a` and `a/b`): S3 allows it, a file system cannot.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Protocol

from backups.errors import InvalidReplicaKey, ReplicaNotFound

MAX_KEY_BYTES = 1024  # S3's limit; the bucket prefix counts against it too
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\]")


@dataclass(frozen=True, order=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime  # timezone-aware (UTC)


class ReplicaClient(Protocol):
    """Object storage for backups. Every method is safe to call from many threads at once and
    raises only ReplicaError subclasses (InvalidReplicaKey before any I/O for a bad key)."""

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        """Store `data` under `key`, replacing any object there. Atomic: a concurrent or later
        reader sees the old object or the whole new one, never a part. Idempotent. Durable once
        it returns.

        `if_absent`: a conditional create. It stores only if no object is under `key`, as one
        atomic step (S3 `If-None-Match: *`; a hard link in a directory): of any number of
        creators racing for one key exactly one succeeds, and the others (and every later one)
        raise ObjectExists, also when the object is this caller's own earlier attempt whose
        answer was lost. Not idempotent, then: the fence of backups/fence.py rests on it."""
        ...

    def put_file(self, key: str, source: IO[bytes], *, if_absent: bool = False) -> None:
        """`put` of the bytes of the seekable binary file `source` from its current position to
        its end, read a bounded piece at a time: memory does not grow with the object's size.
        Same guarantees as `put`. May read `source` more than once (retries); its position
        afterwards is unspecified; it stays open."""
        ...

    def get(self, key: str) -> bytes:
        """The whole object, in memory (read large ones as ranges). Raises ReplicaNotFound when
        there is no object under `key`."""
        ...

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Bytes `[start, start + length)` of the object, cut short at its end: a range starting
        at or past the end is `b""`. Raises ReplicaNotFound when there is no object under `key`,
        ValueError for a negative `start` or `length`. Holds only that range in memory: read a
        large object as a series of ranges."""
        ...

    def head(self, key: str) -> ObjectInfo:
        """Size and modification time. Raises ReplicaNotFound when there is no object."""
        ...

    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key` (implementations inherit this from `head`)."""
        try:
            self.head(key)
        except ReplicaNotFound:
            return False
        return True

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix` (a plain string prefix, not only whole
        directories), sorted by key (code point order, which is S3's UTF-8 byte order). Pages
        are fetched lazily; objects put or deleted while iterating may or may not appear."""
        ...

    def delete(self, keys: Iterable[str]) -> None:
        """Delete these objects, in batches. Idempotent: a key with no object is not an error.
        All keys are validated before anything is deleted."""
        ...

    def close(self) -> None:
        """Release connections. Idempotent; the client must not be used afterwards."""
        ...


def validate_key(key: str) -> str:
    """Return `key` unchanged, or raise InvalidReplicaKey naming the rule it breaks."""
    if not key:
        raise InvalidReplicaKey("replica key must not be empty")
    if key.startswith("/") or key.endswith("/"):
        raise InvalidReplicaKey(f"replica key {key!r} must not start or end with '/'")
    _check_components(key, key.split("/"))
    return key


def validate_prefix(prefix: str) -> str:
    """Return `prefix` unchanged, or raise InvalidReplicaKey. `""` lists everything; the part
    after the last '/' may be any partial component."""
    if prefix.startswith("/"):
        raise InvalidReplicaKey(f"replica prefix {prefix!r} must not start with '/'")
    complete = prefix.split("/")[:-1]
    _check_components(prefix, complete)
    if _FORBIDDEN.search(prefix):
        raise InvalidReplicaKey(f"replica prefix {prefix!r} contains a backslash or control character")
    return prefix


def check_range(start: int, length: int) -> None:
    if start < 0 or length < 0:
        raise ValueError(f"range start and length must not be negative, got {start}, {length}")


def _check_components(key: str, components: list[str]) -> None:
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidReplicaKey("replica key is not valid Unicode text", key=ascii(key)) from None
    if len(encoded) > MAX_KEY_BYTES:
        raise InvalidReplicaKey(f"replica key is longer than {MAX_KEY_BYTES} bytes", key=key[:64])
    if _FORBIDDEN.search(key):
        raise InvalidReplicaKey(f"replica key {key!r} contains a backslash or control character")
    for part in components:
        if not part:
            raise InvalidReplicaKey(f"replica key {key!r} has an empty path component")
        if part.startswith("."):
            raise InvalidReplicaKey(f"replica key {key!r} has a component starting with '.'")
