"""What can go wrong in backups: replica failures and broken backups as SqlfleetErrors (class-level
HTTP status and code), and the two format errors the shipper handles itself."""

from __future__ import annotations

from typing import ClassVar

from tenants.errors import SqlfleetError, TenantNotFound


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


class BackupBroken(SqlfleetError):
    """A restored file fails its integrity check, or the backup it needs is incomplete."""

    status = 500
    code = "backup_broken"


class WalCorrupt(Exception):
    """A frame that should be valid is not (bad salt or checksum)."""


class SegmentCorrupt(Exception):
    """A segment object or one of its chunks cannot be decoded."""
