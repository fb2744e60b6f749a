"""The master keys that seal backup objects (backups/crypto.py), as the key file holds them:
one `KEYID:BASE64KEY` line per key, the first one current."""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from pathlib import Path

from backups.errors import BackupKeyMissing
from tenants.errors import BadRequest

KEY_SIZE = 32  # AES-256
MAX_KEY_ID = 64
KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class Keyring:
    """The master keys by id; the first is current (seals new objects), the others only open.
    Immutable and thread-safe; its repr shows ids, never keys."""

    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise BadRequest("an encryption keyring needs at least one key")
        self._keys: dict[str, bytes] = {}
        for key_id, key in keys:
            if not KEY_ID.fullmatch(key_id):
                raise BadRequest(f"key id {key_id!r} must be 1-64 characters of A-Z a-z 0-9 . _ -")
            if len(key) != KEY_SIZE:
                raise BadRequest(f"key {key_id!r} has {len(key)} bytes; AES-256 needs {KEY_SIZE}")
            if key_id in self._keys:
                raise BadRequest(f"key id {key_id!r} appears twice")
            self._keys[key_id] = key
        self.current = keys[0][0]

    def __repr__(self) -> str:
        return f"Keyring(current={self.current!r}, ids={self.ids!r})"

    @property
    def ids(self) -> list[str]:
        return list(self._keys)

    def key(self, key_id: str, name: str = "") -> bytes:
        """The key `key_id`; raises BackupKeyMissing naming it (and the object `name`)."""
        try:
            return self._keys[key_id]
        except KeyError:
            raise BackupKeyMissing(
                f"replica object {name!r} is sealed with key {key_id!r}, which is not configured "
                f"(backup_encryption_key_file has {', '.join(self._keys)}): add that key back to read it",
                key_id=key_id,
            ) from None

    @classmethod
    def parse(cls, text: str, source: str = "keyring") -> Keyring:
        """From lines `KEYID:BASE64KEY` (blank lines and `#` comments skipped), the first one
        current. Raises BadRequest naming `source` and the line."""
        keys = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            key_id, sep, encoded = line.partition(":")
            if not sep:
                raise BadRequest(f"{source} line {number}: expected KEYID:BASE64KEY")
            try:
                key = base64.b64decode(encoded.strip(), validate=True)
            except binascii.Error:
                raise BadRequest(f"{source} line {number}: the key is not valid base64") from None
            try:
                keys.append((key_id.strip(), key))
                cls(keys)  # validates as it goes, so the error names this line
            except BadRequest as exc:
                raise BadRequest(f"{source} line {number}: {exc.message}") from None
        if not keys:
            raise BadRequest(f"{source} holds no key (lines KEYID:BASE64KEY)")
        return cls(keys)

    @classmethod
    def load(cls, path: Path) -> Keyring:
        """The keyring in the file `path`; raises BadRequest if it cannot be read or parsed."""
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise BadRequest(f"backup_encryption_key_file {str(path)!r}: {exc}") from None
        return cls.parse(text, f"backup_encryption_key_file {str(path)!r}")

    @staticmethod
    def generate(key_id: str) -> str:
        """A new key file line for `key_id`."""
        return f"{key_id}:{base64.b64encode(secrets.token_bytes(KEY_SIZE)).decode()}"
