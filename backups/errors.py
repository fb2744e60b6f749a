"""What can go wrong in backups: replica failures and broken backups as SqlfleetErrors (class-level
HTTP status and code), and the two format errors the shipper handles itself."""

from __future__ import annotations

from typing import ClassVar

from tenants.errors import BadRequest, SqlfleetError, TenantNotFound


class ReplicaError(SqlfleetError):
    """A replica operation failed. `transient` says whether the same call may succeed later
    (retry with backoff) or needs a person (bad credentials, missing bucket, bad key)."""

    status = 502
    code = "replica_error"
    transient: ClassVar[bool] = False


class ReplicaNotFound(ReplicaError):
    """No object has this key."""

    status = 404
    code = "replica_not_found"


class ReplicaUnavailable(ReplicaError):
    """The replica cannot be reached or is overloaded right now (connection refused, timeout,
    5xx, throttling, disk full); retrying later may succeed."""

    status = 503
    code = "replica_unavailable"
    transient = True


class ObjectExists(ReplicaError):
    """A conditional create (`put(..., if_absent=True)`) found an object under the key already:
    someone else wrote it (S3 answers 412 PreconditionFailed, or 409 ConditionalRequestConflict
    when another conditional write to the key is in flight). Never retried: a retry would hide
    the other writer."""

    status = 409
    code = "replica_object_exists"


class ReplicaFenced(ReplicaError):
    """This server's incarnation was fenced (backups/fence.py): another node wrote a FENCE where
    its next segment was to go, so nothing it ships can become part of the backups any more.
    Shipping stops for good and the unshipped commits stay on local disk; never retried."""

    status = 503
    code = "replica_fenced"


class ShippingIOError(ReplicaUnavailable):
    """Shipping failed on local I/O: a WAL, a temporary file of the spool (a full or failing
    disk). As with an unreachable replica, nothing advanced and a later flush retries."""

    code = "backup_io_error"


class InvalidReplicaKey(ReplicaError):
    """A key or prefix breaks the rules in backups/replica.py's docstring."""

    status = 400
    code = "invalid_replica_key"


class NoRestorePoint(TenantNotFound):
    """The tenant has no backup at or before the moment asked for (or none at all)."""

    code = "no_restore_point"


class RestoreInFuture(BadRequest):
    """A restore to a moment that has not come yet: refused, naming the latest restorable one,
    rather than answered with the latest state as if that were the state then."""

    code = "restore_time_in_future"


class BackupBroken(SqlfleetError):
    """A restored file fails its integrity check, or the backup it needs is incomplete."""

    status = 500
    code = "backup_broken"


class BackupKeyMissing(ReplicaError):
    """A sealed replica object names a key id this server has not configured (backups/crypto.py);
    nothing of it was used. The error's `key_id` names the key."""

    status = 500
    code = "backup_key_missing"


class BackupKeyMismatch(BackupKeyMissing):
    """The key configured under an object's key id is not the key that sealed it."""

    code = "backup_key_mismatch"


class BackupTampered(ReplicaError):
    """A sealed replica object fails authentication: altered, truncated, reordered or moved to
    another key. Nothing of it was used."""

    status = 500
    code = "backup_tampered"


class BackupNotEncrypted(BackupTampered):
    """An unencrypted object where this server encrypts (written before encryption was turned on,
    until `sqlfleet backups rekey`; or planted). Not used."""

    code = "backup_not_encrypted"


class EncryptionOff(SqlfleetError):
    """An encryption operation (rekey) on a server that has no encryption keys."""

    status = 409
    code = "backup_encryption_off"


class ReplicaBehind(SqlfleetError):
    """A restore would miss commits made at or before its moment that are not in the replica
    yet (shipping is behind or failing): refused, not answered with less. Retry once shipping
    has caught up."""

    status = 503
    code = "backup_behind"


class WalCorrupt(Exception):
    """A frame that should be valid is not (bad salt or checksum)."""


class SegmentCorrupt(Exception):
    """A segment object or one of its chunks cannot be decoded."""
