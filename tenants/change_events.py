"""The change feed's events (see tenants.changes): what one commit changed, and the notices
that tell a subscriber what it did not get."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

Value = None | int | float | str | bytes
TOO_LARGE = "the transaction changed more than changes_max_txn_bytes: its rows are not carried"


@dataclass(frozen=True)
class Change:
    """One row's change in one transaction, as committed; or a `resync` (table None: every
    table) or `schema` marker."""

    op: str  # insert | update | delete | resync | schema
    table: str | None
    rowid: int | None = None
    row: dict[str, Value] | None = None  # insert, update
    reason: str | None = None  # resync


@dataclass(frozen=True)
class Commit:
    position: str
    time: float
    changes: Sequence[Change]


@dataclass(frozen=True)
class Resync:
    """What a subscriber holds may be incomplete: reload from an export taken after `position`
    and apply the events that follow it (they carry whole rows, so replaying is harmless)."""

    position: str
    reason: str
    time: float


@dataclass(frozen=True)
class End:
    """The subscription is over (tenant deleted, server stopping)."""

    reason: str


# Turns an event into the bytes a subscriber receives (the router's wire format). Called in
# the committing thread, once per event whatever the number of subscribers.
Encode = Callable[[Commit | Resync], bytes]
