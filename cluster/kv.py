"""What etcd holds and is asked, as plain typed values (no client import: cheap to import)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True, slots=True)
class Event:
    """A change of `key` at `revision`: its new `kv`, or None when it was deleted."""

    key: bytes
    kv: KeyValue | None
    revision: int


@dataclass(frozen=True, slots=True)
class Listing:
    """Every key under a prefix as of store revision `revision`."""

    revision: int
    kvs: tuple[KeyValue, ...]


@dataclass(frozen=True, slots=True)
class Lease:
    id: int
    ttl: int  # as granted: etcd raises TTLs below its minimum


@dataclass(frozen=True, slots=True)
class Compare:
    """One guard of a transaction: `target` of `key` == `value` (create/mod revision, version or
    value; a create revision of 0 means the key does not exist)."""

    key: bytes
    target: Literal["create", "mod", "version", "value"]
    value: int | bytes

    @staticmethod
    def absent(key: bytes) -> Compare:
        return Compare(key, "create", 0)

    @staticmethod
    def created_at(key: bytes, revision: int) -> Compare:
        return Compare(key, "create", revision)

    @staticmethod
    def value_is(key: bytes, value: bytes) -> Compare:
        return Compare(key, "value", value)


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes


@dataclass(frozen=True, slots=True)
class Get:
    key: bytes


Op = Put | Delete | Get


@dataclass(frozen=True, slots=True)
class TxnResult:
    """Whether the guards held, the revision after the transaction (its commit revision when it
    wrote), and the keys each `Get` of the branch that ran found (empty tuple: absent)."""

    succeeded: bool
    revision: int
    gets: tuple[tuple[KeyValue, ...], ...]
