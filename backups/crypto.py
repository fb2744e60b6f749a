"""Encryption at rest for replica objects: AES-256-GCM (the `cryptography` package) over blocks of
64 KiB, so an object streams through a bounded buffer both ways and a byte range of it can be
read and authenticated without fetching the rest.

A sealed object, integers big-endian:

    header   magic       8 bytes   b"SQFENC01"
             id_length   1 byte    n, 1..64
             key_id      n bytes   ASCII [A-Za-z0-9._-]: the key that sealed the object
             block_size  4 bytes   B, plaintext bytes per block (65,536 as written)
             salt        16 bytes  random, fresh per object
             nonce       12 bytes  random (96 bits), fresh per object
             check       8 bytes   key check value (below)
    blocks   0 .. k, k >= 0, each  AES-256-GCM ciphertext of plaintext bytes [i*B, (i+1)*B), then
                                   its 16-byte tag. Every block but the last holds B bytes; the
                                   last holds 1..B, or 0 only in the one block of an empty object.

    object key || check  = HKDF-SHA256(master key, salt, info=b"sqlfleet object key v1", 40 bytes)
    nonce of block i     = nonce XOR i (i as a 96-bit integer)
    associated data of i = header || u16 len(name) || name || u64 i || u8 final
                           (name: the UTF-8 replica key the object is stored under; final: 1 for
                           the last block, else 0)

What this buys:
- Confidentiality and integrity of every byte, header included (it is in every block's
  associated data). A flipped bit anywhere fails authentication.
- Blocks cannot be reordered (their index is authenticated), truncated (the last block carries
  the final flag: a reader that reaches the end without it knows bytes are missing), spliced
  from another object (each object has its own key), or moved to another name (the name is
  authenticated): an object swapped with another in the bucket does not open.
- A fresh key per object (random 128-bit salt) means nonces never repeat under one key, whatever
  the number of objects; the random per-object nonce is belt and braces.
- The check value tells "wrong key for this id" (a key file edited under the same id) from
  tampering, for a clear error. It is derived one-way from the key: it reveals nothing of it.

Range reads: plaintext bytes [s, s + n) lie in blocks s // B .. (s + n - 1) // B, stored at
header_size + i * (B + 16): one ranged GET of the covering blocks, each opened on its own. A
block read whole that fails to open as non-final is tried as final (a full last block): only
one of the two can authenticate. Cost (measured, see the README's Encryption part): 16 bytes per
64 KiB stored, at most two extra blocks fetched per range, and one small GET per object for its
header the first time a process reads it (headers are cached).

Shared segments are sealed whole, their index included: tenant ids and commit times are metadata,
and the catalog rebuild reads indexes through the same keys. Key names in the bucket (times,
server ids) stay visible.

Why a format of our own: it is the construction of Tink's AES-GCM-HKDF streaming AEAD and of
STREAM (a key per object from HKDF, an index and a final flag per block), written on the
`cryptography` package's AESGCM and HKDF, because the streaming APIs available to Python decrypt
sequentially only, and restore needs any byte range of a 64 MB segment without the rest.

For callers: `seal_bytes`/`unseal_bytes` for small objects, `seal_file`/`unseal_file` for
streams of any size (file in, file out, memory bounded by one block), `SealingReader` for a
seekable sealed view of a seekable plaintext file (uploads without a sealed copy on disk).
`backups.sealed_replica.SealedReplica` applies all this to every object of a replica.
"""

from __future__ import annotations

import io
import secrets
import struct
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from backups.errors import BackupKeyMismatch, BackupKeyMissing, BackupNotEncrypted, BackupTampered
from backups.keyring import KEY_ID, KEY_SIZE, MAX_KEY_ID, Keyring
from backups.readers import read_exactly

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

MAGIC = b"SQFENC01"
BLOCK_SIZE = 64 << 10  # plaintext bytes per block, as written
TAG_SIZE = 16
HEADER_PROBE = len(MAGIC) + 1 + MAX_KEY_ID + 4 + 16 + 12 + 8  # bytes that hold any header
_INFO = b"sqlfleet object key v1"
_MIN_BLOCK, _MAX_BLOCK = 1 << 10, 16 << 20  # block sizes a reader accepts


# -- one object -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    key_id: str
    block_size: int
    salt: bytes
    nonce: bytes
    check: bytes
    raw: bytes  # as stored

    @property
    def size(self) -> int:
        return len(self.raw)

    @classmethod
    def new(cls, key_id: str, check: bytes, salt: bytes, nonce: bytes) -> Header:
        raw = b"".join(
            (MAGIC, bytes([len(key_id)]), key_id.encode(), struct.pack(">I", BLOCK_SIZE), salt, nonce, check)
        )
        return cls(key_id, BLOCK_SIZE, salt, nonce, check, raw)


def is_sealed(prefix: bytes) -> bool:
    """Whether an object starting with `prefix` (8 bytes or more) is sealed."""
    return prefix[: len(MAGIC)] == MAGIC


def parse_header(prefix: bytes, name: str) -> Header | None:
    """The header at the start of `prefix` (HEADER_PROBE bytes of the object, or all of a shorter
    one); None for an object that is not sealed. Raises BackupTampered for a bad header."""
    if not is_sealed(prefix):
        return None
    try:
        length = prefix[len(MAGIC)]
        key_id = prefix[len(MAGIC) + 1 : len(MAGIC) + 1 + length].decode("ascii")
        rest = len(MAGIC) + 1 + length
        (block_size,) = struct.unpack_from(">I", prefix, rest)
        salt, nonce, check = (
            prefix[rest + 4 : rest + 20],
            prefix[rest + 20 : rest + 32],
            prefix[rest + 32 : rest + 40],
        )
    except (IndexError, UnicodeDecodeError, struct.error):
        raise BackupTampered(f"replica object {name!r}: sealed header is truncated or malformed") from None
    if not KEY_ID.fullmatch(key_id) or not _MIN_BLOCK <= block_size <= _MAX_BLOCK or len(check) != 8:
        raise BackupTampered(f"replica object {name!r}: sealed header is truncated or malformed")
    return Header(key_id, block_size, salt, nonce, check, prefix[: rest + 40])


class ObjectCipher:
    """Seals or opens the blocks of one object. Thread-safe."""

    def __init__(self, header: Header, name: str, master: bytes) -> None:
        derived = HKDF(hashes.SHA256(), KEY_SIZE + 8, header.salt, _INFO).derive(master)
        self.header = header
        self.name = name
        self.key_matches = secrets.compare_digest(derived[KEY_SIZE:], header.check)
        self._aead = AESGCM(derived[:KEY_SIZE])
        encoded = name.encode()
        self._prefix = header.raw + struct.pack(">H", len(encoded)) + encoded
        self._nonce = int.from_bytes(header.nonce, "big")

    @classmethod
    def create(cls, keyring: Keyring, name: str) -> ObjectCipher:
        """A cipher for a new object `name` under the keyring's current key."""
        master = keyring.key(keyring.current)
        salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
        check = HKDF(hashes.SHA256(), KEY_SIZE + 8, salt, _INFO).derive(master)[KEY_SIZE:]
        return cls(Header.new(keyring.current, check, salt, nonce), name, master)

    @classmethod
    def opening(cls, keyring: Keyring, header: Header, name: str) -> ObjectCipher:
        """A cipher for the stored object `name` with `header`. Raises BackupKeyMissing when
        its key id is not in `keyring`, BackupKeyMismatch when the key under that id is not
        the one that sealed it."""
        cipher = cls(header, name, keyring.key(header.key_id, name))
        if not cipher.key_matches:
            raise BackupKeyMismatch(
                f"replica object {name!r} was sealed with another key than the one configured as "
                f"{header.key_id!r} (or its header was altered): restore the original key under that id",
                key_id=header.key_id,
            )
        return cipher

    @property
    def block_size(self) -> int:
        return self.header.block_size

    @property
    def stored_block(self) -> int:
        """Bytes a full block takes in the object."""
        return self.header.block_size + TAG_SIZE

    def offset(self, index: int) -> int:
        """Where block `index` starts in the object."""
        return self.header.size + index * self.stored_block

    def seal_block(self, index: int, plaintext: bytes, final: bool) -> bytes:
        return self._aead.encrypt(self._nonce_of(index), plaintext, self._aad(index, final))

    def open_block(self, index: int, block: bytes | memoryview, final: bool | None) -> tuple[bytes, bool]:
        """(plaintext, whether it is the final block). With `final` None, a full block is tried
        as not final, then as final. Raises BackupTampered."""
        if len(block) < TAG_SIZE:
            raise self.tampered(f"block {index} is truncated")
        for flag in (False, True) if final is None else (final,):
            try:
                return self._aead.decrypt(self._nonce_of(index), block, self._aad(index, flag)), flag
            except InvalidTag:
                continue
        raise self.tampered(f"block {index} fails authentication")

    def _nonce_of(self, index: int) -> bytes:
        return (self._nonce ^ index).to_bytes(12, "big")

    def _aad(self, index: int, final: bool) -> bytes:
        return self._prefix + struct.pack(">QB", index, final)

    def tampered(self, what: str) -> BackupTampered:
        return BackupTampered(
            f"replica object {self.name!r} (key {self.header.key_id!r}): {what}; it was altered, "
            "truncated or moved, and is not used",
            key_id=self.header.key_id,
        )

    # -- ranges -------------------------------------------------------------------------------

    def span(self, start: int, length: int) -> tuple[int, int, int]:
        """(first block, stored offset, stored length) covering plaintext [start, start + length),
        length > 0."""
        first, last = start // self.block_size, (start + length - 1) // self.block_size
        return first, self.offset(first), (last - first + 1) * self.stored_block

    def open_blocks(
        self, first: int, data: bytes, ended: bool, skip: int = 0, length: int = -1
    ) -> tuple[bytes, bool]:
        """The plaintext of the consecutive stored blocks `data`, block `first` on (from its
        byte `skip`, at most `length` bytes, without a copy more), and whether the final block
        was among them. `ended`: the object ended inside the span read, so its last block must
        be final. Raises BackupTampered."""
        step, parts, final = self.stored_block, [], False
        view = memoryview(data)
        for pos in range(0, len(data), step):
            if final:
                raise self.tampered(f"data follows the final block {first + pos // step - 1}")
            block = view[pos : pos + step]
            plain, final = self.open_block(first + pos // step, block, True if len(block) < step else None)
            parts.append(plain)
        if ended and not final:
            raise self.tampered("it ends without its final block")
        if parts and (skip or length >= 0):
            parts[0] = parts[0][skip:]
            cut = sum(map(len, parts)) - length if length >= 0 else 0
            while cut > 0 and parts:
                last = parts.pop()
                if len(last) > cut:
                    parts.append(last[: len(last) - cut])
                cut -= len(last)
        return b"".join(parts), final


# -- whole objects, as streams and as bytes --------------------------------------------------------


def seal_file(keyring: Keyring, name: str, source: IO[bytes], out: IO[bytes]) -> int:
    """Write `source` (read to its end, one block at a time) sealed as object `name` under the
    current key to `out`. Returns the bytes written. Memory: two blocks."""
    cipher = ObjectCipher.create(keyring, name)
    out.write(cipher.header.raw)
    written, index = cipher.header.size, 0
    block = read_exactly(source, cipher.block_size)
    while True:
        following = read_exactly(source, cipher.block_size) if len(block) == cipher.block_size else b""
        sealed = cipher.seal_block(index, block, final=not following)
        out.write(sealed)
        written += len(sealed)
        if not following:
            return written
        block, index = following, index + 1


def unseal_file(
    keyring: Keyring | None, name: str, source: IO[bytes], out: IO[bytes], allow_plaintext: bool = False
) -> int:
    """Write the plaintext of object `name`, read from `source` to its end, to `out`; returns
    its size. An object that is not sealed is copied as it is when `keyring` is None (encryption
    off) or `allow_plaintext`, else BackupNotEncrypted. Raises BackupKeyMissing,
    BackupKeyMismatch, BackupTampered — possibly after writing part of the plaintext, so write to
    a temporary file and use it only once this returns."""
    prefix = read_exactly(source, HEADER_PROBE)
    header = parse_header(prefix, name)
    if header is None:
        if keyring is not None and not allow_plaintext:
            raise not_encrypted(name)
        return _copy(prefix, source, out)
    if keyring is None:
        raise encryption_off(name, header.key_id)
    cipher = ObjectCipher.opening(keyring, header, name)
    pending = prefix[header.size :] + read_exactly(source, cipher.stored_block - (len(prefix) - header.size))
    size, index = 0, 0
    while True:
        following = read_exactly(source, cipher.stored_block) if len(pending) == cipher.stored_block else b""
        plain, final = cipher.open_block(index, pending, None if following else True)
        if final and following:
            raise cipher.tampered(f"data follows the final block {index}")
        out.write(plain)
        size += len(plain)
        if not following:
            return size
        pending, index = following, index + 1


def _copy(prefix: bytes, source: IO[bytes], out: IO[bytes]) -> int:
    out.write(prefix)
    size = len(prefix)
    while piece := source.read(BLOCK_SIZE * 16):
        out.write(piece)
        size += len(piece)
    return size


def seal_bytes(keyring: Keyring | None, name: str, data: bytes) -> bytes:
    """`data` sealed as object `name` under the current key; `data` itself when `keyring` is
    None (encryption off)."""
    if keyring is None:
        return data
    out = io.BytesIO()
    seal_file(keyring, name, io.BytesIO(data), out)
    return out.getvalue()


def unseal_bytes(keyring: Keyring | None, name: str, data: bytes, allow_plaintext: bool = False) -> bytes:
    """The plaintext of the stored object `name` whose bytes are `data` (see `unseal_file`)."""
    out = io.BytesIO()
    unseal_file(keyring, name, io.BytesIO(data), out, allow_plaintext)
    return out.getvalue()


class SealingReader(io.RawIOBase):
    """A read-only, seekable view of the rest of the seekable file `source` sealed as object
    `name` under the keyring's current key, produced a block at a time as it is read (an upload
    may read it twice, or seek back to retry: every read of a position gives the same bytes).
    `source` must not change while this is in use; it stays open."""

    def __init__(self, keyring: Keyring, name: str, source: IO[bytes]) -> None:
        self.cipher = ObjectCipher.create(keyring, name)
        self._source = source
        self._base = source.tell()
        self._plain = source.seek(0, io.SEEK_END) - self._base
        source.seek(self._base)
        self._blocks = max(1, -(-self._plain // self.cipher.block_size))
        self._size = self.cipher.header.size + self._plain + self._blocks * TAG_SIZE
        self._position = 0
        self._cached: tuple[int, bytes] = (-1, b"")

    @property
    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        header = self.cipher.header
        if self._position >= self._size or not len(view):
            return 0
        if self._position < header.size:
            piece = header.raw[self._position :]
        else:
            index, within = divmod(self._position - header.size, self.cipher.stored_block)
            piece = self._block(index)[within:]
        count = min(len(view), len(piece))
        view[:count] = piece[:count]
        self._position += count
        return count

    def _block(self, index: int) -> bytes:
        if self._cached[0] != index:
            bs = self.cipher.block_size
            self._source.seek(self._base + index * bs)
            want = min(bs, self._plain - index * bs)
            plain = read_exactly(self._source, want)
            if len(plain) != want:
                raise OSError(f"the file being sealed as {self.cipher.name!r} shrank while it was read")
            sealed = self.cipher.seal_block(index, plain, final=index == self._blocks - 1)
            self._cached = (index, sealed)
        return self._cached[1]


# -- errors with their advice -----------------------------------------------------------------------


def not_encrypted(name: str) -> BackupNotEncrypted:
    return BackupNotEncrypted(
        f"replica object {name!r} is not encrypted, but this server encrypts its backups: it was "
        "written before encryption was turned on (run `sqlfleet backups rekey` to encrypt it), or "
        "put there by someone else; it is not used"
    )


def encryption_off(name: str, key_id: str) -> BackupKeyMissing:
    return BackupKeyMissing(
        f"replica object {name!r} is sealed with key {key_id!r}, but this server has no encryption "
        "keys: set backup_encryption_key_file to a file holding that key",
        key_id=key_id,
    )
