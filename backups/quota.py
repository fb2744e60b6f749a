"""A per-tenant bound on what the replica takes: the compressed bytes a tenant's chunks (commits
and snapshots) added in the last `window` seconds. Past `limit`, the tenant's writes are refused
(ReplicaQuotaExceeded, HTTP 429 with Retry-After) until enough of it ages out of the window, so a
tenant rewriting the same rows in a loop cannot fill the bucket or the local replica's disk for
the whole retention period; other tenants are unaffected.

The window is kept as SLOTS fixed slots per tenant (so memory stays a few integers per tenant
that wrote lately, whatever its rate): bytes leave it a slot at a time, up to window/SLOTS late.
Counted since the server started: a restart forgets what was added before it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable

from backups.segment import ChunkRef
from tenants.errors import QuotaExceeded

SLOTS = 12


class ReplicaQuotaExceeded(QuotaExceeded):
    code = "replica_quota_exceeded"


class ReplicaQuota:
    """Thread-safe. `clock` is time.monotonic (tests may pass another)."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self._slot = window / SLOTS
        self._clock = clock
        self._lock = threading.Lock()
        self._used: dict[str, dict[int, int]] = {}  # tenant -> slot number -> bytes
        self._swept = 0  # the slot of the last sweep over every tenant

    def add(self, refs: Iterable[ChunkRef]) -> None:
        """Count the chunks of an uploaded segment against their tenants."""
        now = self._now()
        with self._lock:
            for ref in refs:
                slots = self._used.setdefault(ref.tenant, {})
                slots[now] = slots.get(now, 0) + ref.length
            if now - self._swept >= SLOTS:  # at most once a window: tenants that stopped writing go
                self._swept = now
                for tenant in [t for t, slots in self._used.items() if not self._prune(slots, now)]:
                    del self._used[tenant]

    def used(self, tenant_id: str) -> int:
        """Bytes the tenant added within the window."""
        now = self._now()
        with self._lock:
            slots = self._used.get(tenant_id)
            return self._prune(slots, now) if slots else 0

    def check(self, tenant_id: str) -> None:
        """Raise ReplicaQuotaExceeded if the tenant added `limit` bytes or more within the window,
        saying when enough of them will have aged out."""
        now = self._now()
        with self._lock:
            slots = self._used.get(tenant_id)
            total = self._prune(slots, now) if slots else 0
            if total < self.limit or not slots:
                return
            left = total
            for slot in sorted(slots):  # the oldest leave first
                left -= slots[slot]
                if left < self.limit:
                    break
        wait = max(1, math.ceil((slot + SLOTS) * self._slot - self._clock()))
        raise ReplicaQuotaExceeded(
            f"tenant {tenant_id!r} added {total} bytes to the backups in the last {self.window:g} s, "
            f"as much as backup_tenant_quota_bytes ({self.limit}) allows: writes wait about {wait} s",
            retry_after=wait,
        )

    def forget(self, tenant_id: str) -> None:
        with self._lock:
            self._used.pop(tenant_id, None)

    def _now(self) -> int:
        return int(self._clock() // self._slot)

    @staticmethod
    def _prune(slots: dict[int, int] | None, now: int) -> int:
        """Drop the slots that left the window; the bytes of those that remain."""
        if not slots:
            return 0
        for slot in [s for s in slots if s <= now - SLOTS]:
            del slots[slot]
        return sum(slots.values())
