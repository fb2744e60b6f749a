"""Rekey: re-encrypt with the current key every segment retention still needs, so an old key can
be removed from the key file (or backups made before encryption was turned on get encrypted).

A segment is never rewritten in place: the copy is a new object, sealed now, recorded in the
catalog before it is uploaded; then one catalog transaction points the segment's chunks at the
copy; then the old object is deleted. A crash at any step leaves every chunk pointing at an object
that opens, and whatever is left over (a copy nothing points at, an old segment not yet deleted)
is an unreferenced segment that retention deletes. Chunk offsets stay valid: the copy holds the
same plaintext. Work goes in batches (a cursor over segment keys), so each admin call is short
and a client can show progress; an interrupted rekey resumes where it stopped, or starts over
at no cost but one header read per segment.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

from backups.catalog import BackupCatalog
from backups.errors import EncryptionOff, ReplicaNotFound
from backups.sealed_replica import SealedReplica
from backups.spool import Spool

log = logging.getLogger(__name__)

BUDGET = 5.0  # seconds of work after which a batch starts no further segment
# Objects outside segments/ (small ones: fleet metadata) that rekey reseals in place, by prefix;
# put is atomic, so a crash leaves the old sealed object or the new one, both readable.
RESEAL_PREFIXES: tuple[str, ...] = ("fleet/",)  # backups/fleet_doc.py
_REKEYED = re.compile(r"\.r[0-9a-f]{8}$")


@dataclass(frozen=True)
class RekeyBatch:
    key_id: str  # the current key, which everything rewritten is now sealed with
    total: int  # segments retention still needs, when the batch began
    checked: int  # segments this batch looked at
    rewritten: int  # objects this batch re-encrypted (segments, and on the last batch metadata)
    missing: int  # segments the catalog names that are not in the bucket (logged, skipped)
    next: str | None  # pass as `after` to continue; None: done

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def rekey_batch(
    replica: SealedReplica, catalog: BackupCatalog, spool: Spool, after: str | None, limit: int
) -> RekeyBatch:
    """Look at up to `limit` segments retention still needs, in key order after `after`, and
    re-encrypt those not sealed with the current key; no further segment is started once BUDGET
    seconds have passed. The last batch also reseals objects under RESEAL_PREFIXES. Raises
    EncryptionOff when the server has no keys, and what reading a segment raises (a missing key,
    a tampered object): nothing of that segment changed."""
    if replica.keyring is None:
        raise EncryptionOff("backups are not encrypted: set backup_encryption_key_file to rekey")
    current = replica.keyring.current
    started = time.monotonic()
    total = catalog.count_referenced_segments()
    keys = catalog.referenced_segments(after or "", limit)
    checked = rewritten = missing = 0
    for key in keys:
        if checked and time.monotonic() - started > BUDGET:
            break
        checked += 1
        try:
            if replica.key_id(key) != current:
                _rewrite(replica, catalog, spool, key)
                rewritten += 1
        except ReplicaNotFound:
            log.warning("rekey: segment %s is in the catalog but not in the bucket; skipped", key)
            missing += 1
    done = checked == len(keys) and len(keys) < limit
    if done:
        rewritten += _reseal(replica, current)
    return RekeyBatch(current, total, checked, rewritten, missing, None if done else keys[checked - 1])


def _rewrite(replica: SealedReplica, catalog: BackupCatalog, spool: Spool, old: str) -> None:
    new = rekeyed_name(old)
    with spool.file() as plain:
        replica.copy_plaintext(old, plain, allow_plaintext=True)  # adopts pre-encryption segments
        plain.seek(0)
        with catalog.maintenance:  # retention must not take the copy for garbage before it is used
            catalog.add_segment(new, time.time(), [])
            replica.put_file(new, plain)
            catalog.move_segment(old, new)
    replica.delete([old])
    catalog.forget_segments([old])
    log.info("rekey: %s is now %s, sealed with key %s", old, new, replica.current_key)


def _reseal(replica: SealedReplica, current: str) -> int:
    count = 0
    for prefix in RESEAL_PREFIXES:
        for info in list(replica.list(prefix)):
            try:
                if replica.key_id(info.key) != current:
                    replica.put(info.key, replica.get(info.key, allow_plaintext=True))
                    count += 1
            except ReplicaNotFound:
                continue  # deleted since it was listed (the fleet metadata's old logs)
    return count


def rekeyed_name(key: str) -> str:
    """A fresh key for the rekeyed copy of segment `key` (its name, a new random suffix)."""
    stem = key.removesuffix(".seg")
    return f"{_REKEYED.sub('', stem)}.r{secrets.token_hex(4)}.seg"
