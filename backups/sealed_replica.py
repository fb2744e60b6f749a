"""A ReplicaClient that seals every object it stores and opens every object it reads
(backups/crypto.py), around any other: flush, restore, retention and the catalog rebuild use it
as they use any replica, so encryption lives in this one place.

With a keyring, objects are sealed under its current key, and a read opens an object with the key
its header names. An unsealed object is refused (BackupNotEncrypted) unless the caller adopts
backups made before encryption was turned on (`allow_plaintext`: the catalog rebuild and rekey).
Without a keyring (encryption off) objects pass through unchanged, and a sealed one met on a
read fails with BackupKeyMissing naming its key, not as garbage.

Range reads fetch the blocks covering the range in one GET. An object's header is read once
(one small GET) and cached with its derived key; the objects this process wrote are cached
when written. Sizes that `head` and `list` report are the stored (sealed) sizes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import IO

from backups.crypto import (
    HEADER_PROBE,
    ObjectCipher,
    SealingReader,
    encryption_off,
    is_sealed,
    not_encrypted,
    parse_header,
    seal_bytes,
    unseal_bytes,
)
from backups.errors import BackupTampered
from backups.keyring import Keyring
from backups.replica import ObjectInfo, ReplicaClient, check_range, validate_key

CACHE_OBJECTS = 2048  # headers (with derived keys) remembered, ~1 KiB each
COPY_PIECE = 1 << 20  # plaintext bytes read per GET when copying a whole object


class SealedReplica(ReplicaClient):
    """Seals for `keyring` (None: encryption off) in front of `inner`. Thread-safe, as `inner`;
    raises only ReplicaError subclasses, as every replica does."""

    def __init__(self, inner: ReplicaClient, keyring: Keyring | None) -> None:
        self.inner = inner
        self.keyring = keyring
        self._lock = threading.Lock()
        self._ciphers: OrderedDict[str, ObjectCipher | None] = OrderedDict()  # None: not sealed

    def __repr__(self) -> str:
        return f"SealedReplica({self.inner!r}, {self.keyring!r})"

    @property
    def current_key(self) -> str | None:
        """Id of the key new objects are sealed with; None when encryption is off."""
        return self.keyring.current if self.keyring is not None else None

    # -- ReplicaClient ------------------------------------------------------------------------------

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        self._forget(key)
        self.inner.put(key, seal_bytes(self.keyring, validate_key(key), data), if_absent=if_absent)

    def put_file(self, key: str, source: IO[bytes], *, if_absent: bool = False) -> None:
        self._forget(key)
        if self.keyring is None:
            self.inner.put_file(key, source, if_absent=if_absent)
            return
        sealed = SealingReader(self.keyring, validate_key(key), source)
        self.inner.put_file(key, sealed, if_absent=if_absent)  # type: ignore[arg-type]  # a RawIOBase is a binary file
        self._remember(key, sealed.cipher)

    def get(self, key: str, allow_plaintext: bool = False) -> bytes:
        data = self.inner.get(key)
        if self.keyring is None and is_sealed(data):
            raise encryption_off(key, self._key_id_of(key, data))
        return unseal_bytes(self.keyring, key, data, allow_plaintext)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self.read_range(key, start, length)

    def head(self, key: str) -> ObjectInfo:
        return self.inner.head(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        for key in keys:
            self._forget(key)
        self.inner.delete(keys)

    def close(self) -> None:
        self.inner.close()

    # -- beyond ReplicaClient ---------------------------------------------------------------------

    def read_range(self, key: str, start: int, length: int, allow_plaintext: bool = False) -> bytes:
        """`get_range` of the plaintext; `allow_plaintext` also reads an unsealed object while
        encryption is on. Raises BackupKeyMissing, BackupKeyMismatch, BackupTampered,
        BackupNotEncrypted besides what `get_range` raises."""
        validate_key(key)
        check_range(start, length)
        if self.keyring is None:
            data = self.inner.get_range(key, start, length)
            if start == 0 and is_sealed(data):
                raise encryption_off(key, self._key_id_of(key, data))
            return data
        while True:  # twice at most: a second look is never from the cache
            cipher, cached = self._cipher(key)
            if cipher is None:
                if allow_plaintext:
                    return self.inner.get_range(key, start, length)
                if not cached:
                    raise not_encrypted(key)
            elif length == 0:
                return b""
            else:
                try:
                    return self._read_blocks(key, cipher, start, length)
                except BackupTampered:
                    if not cached:
                        raise
            self._forget(key)  # replaced since its header was cached? look at it anew, once

    def key_id(self, key: str) -> str | None:
        """The id of the key object `key` is sealed with; None if it is not sealed. Raises
        ReplicaNotFound, BackupTampered (a malformed header)."""
        cipher = self._cached(key)
        if cipher is not None:
            return cipher.header.key_id
        header = parse_header(self.inner.get_range(key, 0, HEADER_PROBE), key)
        return header.key_id if header is not None else None

    def copy_plaintext(self, key: str, out: IO[bytes], allow_plaintext: bool = False) -> int:
        """Write the whole plaintext of object `key` to `out`, a piece at a time (memory stays
        bounded whatever its size); returns its size. Raises as `read_range` does, possibly after
        writing part of it."""
        size = 0
        while True:
            piece = self.read_range(key, size, COPY_PIECE, allow_plaintext)
            out.write(piece)
            size += len(piece)
            if len(piece) < COPY_PIECE:
                return size

    def check_readable(self, keys: Iterable[str]) -> None:
        """Raise BackupKeyMissing (BackupKeyMismatch) for the first of `keys` whose key this
        replica lacks: an id not configured, another key under that id, or any key while
        encryption is off. Reads each object's header (cached); does not check the blocks."""
        for key in keys:
            if self.keyring is None:
                key_id = self.key_id(key)
                if key_id is not None:
                    raise encryption_off(key, key_id)
            else:
                self._cipher(key)

    # -- header cache -----------------------------------------------------------------------------

    def _cipher(self, key: str) -> tuple[ObjectCipher | None, bool]:
        """(the object's cipher or None if it is not sealed, whether it came from the cache)."""
        assert self.keyring is not None
        with self._lock:
            if key in self._ciphers:
                self._ciphers.move_to_end(key)
                return self._ciphers[key], True
        header = parse_header(self.inner.get_range(key, 0, HEADER_PROBE), key)
        cipher = None if header is None else ObjectCipher.opening(self.keyring, header, key)
        self._remember(key, cipher)
        return cipher, False

    def _cached(self, key: str) -> ObjectCipher | None:
        with self._lock:
            return self._ciphers.get(key)

    def _remember(self, key: str, cipher: ObjectCipher | None) -> None:
        with self._lock:
            self._ciphers[key] = cipher
            self._ciphers.move_to_end(key)
            while len(self._ciphers) > CACHE_OBJECTS:
                self._ciphers.popitem(last=False)

    def _forget(self, key: str) -> None:
        with self._lock:
            self._ciphers.pop(key, None)

    def _read_blocks(self, key: str, cipher: ObjectCipher, start: int, length: int) -> bytes:
        first, offset, stored = cipher.span(start, length)
        data = self.inner.get_range(key, offset, stored)
        if not data:
            # the range starts past the end (rare): fine only if the object's last block is final
            stored_size = self.inner.head(key).size
            if stored_size <= cipher.header.size:
                raise cipher.tampered("it holds no block")
            last = (stored_size - cipher.header.size - 1) // cipher.stored_block
            tail = self.inner.get_range(key, cipher.offset(last), cipher.stored_block)
            cipher.open_blocks(last, tail, ended=True)
            return b""
        skip = start - first * cipher.block_size
        plain, _ = cipher.open_blocks(first, data, len(data) < stored, skip, length)
        return plain

    @staticmethod
    def _key_id_of(key: str, prefix: bytes) -> str:
        try:
            header = parse_header(prefix, key)
        except BackupTampered:
            return "?"
        return header.key_id if header is not None else "?"
