"""What can go wrong in backups: replica failures and broken backups as SqlfleetErrors (class-level
HTTP status and code), and the two format errors the shipper handles itself."""

from __future__ import annotations

import copy
import logging
import re
from typing import ClassVar

from tenants.errors import BadRequest, SqlfleetError, TenantNotFound

log = logging.getLogger(__name__)

# words naming an object key, a path or a URL, quoted or not
_SLASHED = re.compile(r"'[^'\s]*/[^']*'|\"[^\"\s]*/[^\"]*\"|[^\s'\"(]*/[^\s'\")]*")
# detail a client may read: never an endpoint, a bucket or an object key
_PUBLIC_DETAIL = ("retry_after", "key_id")


def _in_user_terms(exc: SqlfleetError, shown: str) -> SqlfleetError:
    """`exc` as a client reads it: `shown`, and no detail naming server internals; the full
    text goes to the log (an operator finds it there by the code and the time)."""
    log.warning("answered %s: %s %s", exc.code, exc, exc.detail or "")
    public = copy.copy(exc)
    public.message = shown
    public.detail = {k: v for k, v in exc.detail.items() if k in _PUBLIC_DETAIL}
    return public


class ReplicaError(SqlfleetError):
    """A replica operation failed. `transient` says whether the same call may succeed later
    (retry with backoff) or needs a person (bad credentials, missing bucket, bad key)."""

    status = 502
    code = "replica_error"
    transient: ClassVar[bool] = False
    # what a client reads: the text names the endpoint, bucket or object key (for logs only)
    shown: ClassVar[str] = "the backup replica failed; the server's log says why"

    def public(self) -> SqlfleetError:
        return _in_user_terms(self, self.shown.format(key_id=repr(self.detail.get("key_id"))))


class ReplicaNotFound(ReplicaError):
    """No object has this key."""

    status = 404
    code = "replica_not_found"
    shown = "something the backups need is missing from the replica; the server's log says what"


class ReplicaUnavailable(ReplicaError):
    """The replica cannot be reached or is overloaded right now (connection refused, timeout,
    5xx, throttling, disk full); retrying later may succeed."""

    status = 503
    code = "replica_unavailable"
    transient = True
    shown = "the backup replica cannot be reached right now; retry later"


class ObjectExists(ReplicaError):
    """A conditional create (`put(..., if_absent=True)`) found an object under the key already:
    someone else wrote it (S3 answers 412 PreconditionFailed, or 409 ConditionalRequestConflict
    when another conditional write to the key is in flight). Never retried: a retry would hide
    the other writer."""

    status = 409
    code = "replica_object_exists"
    shown = "another server wrote to the backups at the same moment; retry"


class ReplicaFenced(ReplicaError):
    """This server's incarnation was fenced (backups/fence.py): another node wrote a FENCE where
    its next segment was to go, so nothing it ships can become part of the backups any more.
    Shipping stops for good and the unshipped commits stay on local disk; never retried."""

    status = 503
    code = "replica_fenced"
    shown = "this server no longer serves its tenants: another server has taken them over; retry shortly"


class ShippingIOError(ReplicaUnavailable):
    """Shipping failed on local I/O: a WAL, a temporary file of the spool (a full or failing
    disk). As with an unreachable replica, nothing advanced and a later flush retries."""

    code = "backup_io_error"
    shown = "the server cannot read or write its local backup files right now; retry later"


class InvalidReplicaKey(ReplicaError):
    """A key or prefix breaks the rules in backups/replica.py's docstring."""

    status = 400
    code = "invalid_replica_key"
    shown = "a name in the backup replica breaks its naming rules; the server's log says which"


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

    def public(self) -> SqlfleetError:
        # its text says what is wrong with the backup (a gap, a bad chunk): kept, but without
        # the object keys, paths or URLs it may quote (the only words with a '/')
        shown = _SLASHED.sub("(an object in the replica)", self.message)
        return self if shown == self.message else _in_user_terms(self, shown)


class BackupKeyMissing(ReplicaError):
    """A sealed replica object names a key id this server has not configured (backups/crypto.py);
    nothing of it was used. The error's `key_id` names the key."""

    status = 500
    code = "backup_key_missing"
    shown = (
        "a backup object is sealed with key {key_id}, which this server does not have: put that key in "
        "the file backup_encryption_key_file names"
    )


class BackupKeyMismatch(BackupKeyMissing):
    """The key configured under an object's key id is not the key that sealed it."""

    code = "backup_key_mismatch"
    shown = (
        "a backup object was sealed with another key than the one configured as {key_id} (or its "
        "header was altered): restore the original key under that id"
    )


class BackupTampered(ReplicaError):
    """A sealed replica object fails authentication: altered, truncated, reordered or moved to
    another key. Nothing of it was used."""

    status = 500
    code = "backup_tampered"
    shown = (
        "a backup object sealed with key {key_id} fails its integrity check: it was altered, "
        "truncated or moved, and is not used"
    )

    def public(self) -> SqlfleetError:
        if "key_id" in self.detail:
            return super().public()
        return _in_user_terms(self, "a backup object's sealed header is truncated or malformed: not used")


class BackupNotEncrypted(BackupTampered):
    """An unencrypted object where this server encrypts (written before encryption was turned on,
    until `sqlfleet backups rekey`; or planted). Not used."""

    code = "backup_not_encrypted"
    shown = (
        "a backup object is not encrypted, but this server encrypts its backups: it was written "
        "before encryption was turned on (run `sqlfleet backups rekey` to encrypt it), or put "
        "there by someone else; it is not used"
    )

    def public(self) -> SqlfleetError:
        return _in_user_terms(self, self.shown)


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
