"""The admin key and the token-signing key: configured, or generated once into the data dir."""

from __future__ import annotations

import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tenants.errors import BadRequest
from tenants.files import write_durably


def admin_key(configured: str | None, data_dir: Path) -> tuple[str, bool]:
    """(key, generated_now). A configured key wins; else DATA/admin.key, created if absent.
    Raises BadRequest if the file exists but holds no key (no one could ever be admin)."""
    if configured:
        return configured, False
    path = data_dir / "admin.key"
    if path.exists():
        key = path.read_text().strip()
        if not key:
            raise BadRequest(f"admin key file {path} is empty: delete it to generate a new key")
        return key, False
    key = "sfa_" + secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_durably(path, key.encode() + b"\n", mode=0o600)
    return key, True


def signing_key_file(folder: Path) -> Path:
    """FOLDER/signing-key.pem, made (durably, mode 0600) if absent: one key file to give every
    node of a cluster (`--signing-key-file`)."""
    signing_key(None, folder)
    return folder / "signing-key.pem"


def signing_key(configured: Path | None, data_dir: Path) -> Ed25519PrivateKey:
    """The Ed25519 key from `configured` (must exist), else DATA/signing-key.pem (created if absent)."""
    path = configured or data_dir / "signing-key.pem"
    if configured is None and not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        write_durably(path, pem, mode=0o600)
        return key
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise BadRequest(f"cannot read signing key {path}: {exc}") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise BadRequest(f"signing key {path} is not an Ed25519 private key")
    return loaded
