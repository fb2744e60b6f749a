"""What the simulation expects: per tenant, the history of its content as clients saw it.

A tenant's history is a list of entries, each the content after it and the time it took effect:
its creation, each acknowledged commit, each restore in place. A time is an interval [lo, hi]:
exact (lo == hi) for what the server acknowledged, wider only where the design allows it (a commit
whose recorded time a power loss may have lost is stamped with its WAL's mtime instead; a write
whose outcome the client never learned is found, or not, when the tenant is read again).

Restoring to moment M must give the content after the last entry whose stamped time is at or
before M: entry `k` is acceptable when no entry after it certainly precedes M, and it itself may
(`acceptable`). Before the first entry there is nothing to restore.

Contents are compared by digest of a canonical dump: the schema (type, name, sql) and every
table's rows in key order.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import apsw

Value = str | bytes
Op = tuple[Any, ...]


@dataclass
class Content:
    """A tenant database's logical content: schema entries and tables (key -> value)."""

    schema: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (type, sql)
    tables: dict[str, dict[int, Value]] = field(default_factory=dict)

    def copy(self) -> Content:
        return Content(dict(self.schema), {t: dict(rows) for t, rows in self.tables.items()})

    def apply(self, ops: Sequence[Op]) -> None:
        for op in ops:
            kind = op[0]
            if kind == "create_table":
                _, name, sql = op
                self.schema[name] = ("table", sql)
                self.tables[name] = {}
            elif kind == "create_index":
                _, name, sql = op
                self.schema[name] = ("index", sql)
            elif kind in ("insert", "update"):
                _, table, key, value = op
                self.tables[table][key] = value
            elif kind == "delete":
                _, table, key = op
                self.tables[table].pop(key, None)
            else:
                raise ValueError(f"unknown op {kind}")

    def canonical(self) -> tuple[Any, ...]:
        schema = tuple(sorted((kind, name, sql) for name, (kind, sql) in self.schema.items()))
        tables = tuple((t, tuple(sorted(rows.items()))) for t, rows in sorted(self.tables.items()))
        return schema, tables

    def digest(self) -> str:
        return _digest(self.canonical())

    def diff(self, other: Content) -> str:
        """What differs from `other`, briefly."""
        out = []
        for name in sorted(set(self.schema) | set(other.schema)):
            if self.schema.get(name) != other.schema.get(name):
                out.append(f"schema {name}: {self.schema.get(name)} vs {other.schema.get(name)}")
        for table in sorted(set(self.tables) | set(other.tables)):
            mine, theirs = self.tables.get(table, {}), other.tables.get(table, {})
            only = sorted(set(mine) - set(theirs))
            missing = sorted(set(theirs) - set(mine))
            changed = sorted(k for k in set(mine) & set(theirs) if mine[k] != theirs[k])
            if only or missing or changed:
                out.append(f"{table}: extra keys {only}, missing keys {missing}, other values at {changed}")
        return "; ".join(out) or "no difference"

    def summary(self) -> str:
        return ", ".join(f"{t}:{len(rows)}" for t, rows in sorted(self.tables.items())) or "empty"


def _digest(canonical: tuple[Any, ...]) -> str:
    return hashlib.sha256(repr(canonical).encode()).hexdigest()[:16]


def read_content(conn: apsw.Connection) -> Content:
    """The content of an open database, as `Content.canonical` lays it out."""
    content = Content()
    for kind, name, sql in conn.execute("SELECT type, name, sql FROM sqlite_schema ORDER BY name"):
        if str(name).startswith("sqlite_"):
            continue
        content.schema[str(name)] = (str(kind), str(sql))
        if kind == "table":
            rows = conn.execute(f'SELECT k, v FROM "{name}" ORDER BY k').fetchall()
            content.tables[str(name)] = {int(str(k)): cast(Value, v) for k, v in rows}
    return content


@dataclass
class Entry:
    lo: float  # earliest time the backups may stamp it with
    hi: float  # latest (math.inf: not bounded yet)
    digest: str
    label: str
    content: Content
    journal_lost: bool = False  # its commit-times record was never written (a failing disk)


@dataclass
class Doubt:
    """A write whose outcome the client does not know (it failed, or the process died before
    answering): its commit may exist in the WAL, and be found when the tenant is read again."""

    ops: list[Op]
    at: float
    label: str


class TenantModel:
    """A tenant's history (see the module docstring), and what is in doubt about it now."""

    def __init__(
        self, name: str, at: float, content: Content | None = None, label: str = "create", until: float = 0.0
    ) -> None:
        """Created at `at` (or at some moment up to `until`) with `content`."""
        self.name = name
        self.content = content.copy() if content is not None else Content()
        self.entries = [Entry(at, max(at, until), self.content.digest(), label, self.content.copy())]
        # writes that failed or were never answered since the last acknowledged one: the WAL may
        # hold the commit of one of them (a failed sync leaves its frames valid; a reopen then
        # finds them), until a later commit overwrites their frames
        self.doubts: list[Doubt] = []
        # a restore in place whose answer never came: the contents it may have given, and when
        self.pending_reset: tuple[list[Content], float] | None = None
        self.repair_moment = at  # where the next restore in place of a corrupt tenant goes
        self.pending_fork: tuple[str, float] | None = (
            None  # made by a restore (source, moment) not answered yet
        )
        self.shipped = 0  # entries before this index were in the replica at the last good flush
        self.next_key = 1 + max((k for rows in self.content.tables.values() for k in rows), default=0)
        self.unavailable: str | None = None  # why it takes no writes now (creating, corrupt, ...)

    # -- changes ------------------------------------------------------------------------------------

    def commit(self, ops: list[Op], lo: float, hi: float, label: str) -> None:
        self.content.apply(ops)
        self.entries.append(Entry(lo, hi, self.content.digest(), label, self.content.copy()))
        self.doubts.clear()  # its frames overwrote theirs

    def reset(self, content: Content, lo: float, hi: float, label: str) -> None:
        """The content became `content` (a restore in place)."""
        self.content = content.copy()
        self.entries.append(Entry(lo, hi, self.content.digest(), label, self.content.copy()))
        self.doubts.clear()

    def resolve(self, live: Content, hi: float, final: bool) -> str:
        """The tenant reads as `live` now: settle the writes in doubt (one of them committed,
        stamped no later than `hi`, or none; `final`: none can show up any more, as after a
        restart, when opening the WAL recovered every commit in it). Returns what was decided;
        raises AssertionError if `live` is none of those."""
        digest = live.digest()
        if digest == self.content.digest():
            had = bool(self.doubts)
            if final:
                self.doubts.clear()
            return ("absent" if final else "absent so far") if had else "as acknowledged"
        for doubt in self.doubts:
            after = self.content.copy()
            after.apply(doubt.ops)
            if after.digest() == digest:
                self.commit(doubt.ops, doubt.at, hi, doubt.label + " (found committed)")
                return f"{doubt.label} present"
        raise AssertionError(
            f"tenant {self.name}: live content {live.summary()} ({digest}) is neither the acknowledged "
            f"state {self.content.summary()} ({self.content.digest()})"
            + (
                f" nor that plus one of the writes in doubt {[d.label for d in self.doubts]}"
                if self.doubts
                else ""
            )
        )

    def bound(self, hi: float) -> None:
        """Everything committed so far is stamped no later than `hi` (a flush shipped it)."""
        for e in self.entries:
            if e.hi > hi:
                e.hi = max(e.lo, hi)

    def widen(self, after: int, hi: float, why: str, only_lost: bool = False) -> None:
        """Entries from index `after` on (only those whose commit-times record was never
        written, with `only_lost`) may be stamped as late as `hi`: their WAL's mtime stands in
        for a recorded time that is gone."""
        for e in self.entries[after:]:
            if only_lost and not e.journal_lost:
                continue
            if e.lo < e.hi or e.hi < hi:
                e.hi = max(e.hi, hi)
                if why not in e.label:
                    e.label += f" [{why}]"

    # -- restores -----------------------------------------------------------------------------------

    def acceptable(self, moment: float) -> tuple[list[int], bool]:
        """Indexes of the entries a restore to `moment` may give, and whether it may find
        nothing to restore (no entry certainly at or before it)."""
        certain = [i for i, e in enumerate(self.entries) if e.hi <= moment]
        possible = [i for i, e in enumerate(self.entries) if e.lo <= moment]
        low = max(certain, default=-1)
        return [i for i in possible if i >= low], low < 0

    def moments(self, rng: random.Random, most: int) -> list[float]:
        """Moments worth restoring to: at and just before entries, between them, and later."""
        found: set[float] = set()
        for e in self.entries:
            found.add(e.lo)
            found.add(e.lo - 0.000001)
            if math.isfinite(e.hi):
                found.add(e.hi)
        found.add(self.entries[-1].lo + 1.0)
        chosen = sorted(found)
        if len(chosen) > most:
            chosen = [*sorted(rng.sample(chosen, most - 1)), max(chosen)]
        return chosen

    def describe(self, indexes: list[int]) -> str:
        return "; ".join(
            f"#{i} {self.entries[i].label} [{self.entries[i].lo:.6f}, {self.entries[i].hi:.6f}] "
            f"{self.entries[i].content.summary()} {self.entries[i].digest}"
            for i in indexes
        )
