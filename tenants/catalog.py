"""The tenant catalog: one system SQLite database listing every tenant and its state
(`tenants.state.TenantState`, which says what each state means).

Each row also names the tenant's incarnation, a random id given when the row is made (create,
restore as a new tenant, adopting an orphan file; a restore in place keeps it), and its token
generation, which a revocation bumps: a tenant token carries both, so it works only for the
tenant it was minted for and only until the next revocation.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw

from tenants.group_commit import GroupCommit
from tenants.rfc3339 import format_time
from tenants.state import TenantState

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    state TEXT NOT NULL,
    grp TEXT,
    size INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    incarnation TEXT NOT NULL DEFAULT '',
    token_generation INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tenants_state ON tenants(state) WHERE state != 'active';
"""
# Catalogs made before tokens were bound to incarnations: add the columns, give every tenant
# one. Tokens minted before then carry no incarnation and are refused (router.auth says why).
_UPGRADES = {
    "incarnation": "ALTER TABLE tenants ADD COLUMN incarnation TEXT NOT NULL DEFAULT ''",
    "token_generation": "ALTER TABLE tenants ADD COLUMN token_generation INTEGER NOT NULL DEFAULT 0",
}
_NEW_INCARNATION = "lower(hex(randomblob(8)))"


@dataclass(frozen=True)
class TenantRow:
    id: str
    created_at: float
    state: TenantState
    group: str | None
    size: int
    error: str | None
    incarnation: str = ""  # random, per row: see the module docstring
    token_generation: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": format_time(self.created_at),
            "state": self.state,
            "group": self.group,
            "size": self.size,
            "error": self.error,
        }


@dataclass(frozen=True)
class Identity:
    """What a tenant's tokens are bound to: kept when it is restored as itself elsewhere."""

    created_at: float
    incarnation: str
    token_generation: int


_COLUMNS = "id, created_at, state, grp, size, error, incarnation, token_generation"


def _row(values: tuple[Any, ...]) -> TenantRow:
    tenant_id, created_at, state, group, size, error, incarnation, generation = values
    return TenantRow(tenant_id, created_at, TenantState(state), group, size, error, incarnation, generation)


class Catalog:
    """Thread-safe access to the catalog database. Every write is durable when its method
    returns; writes of concurrent callers are group-committed (one transaction and one fsync
    for all that queued while the previous commit ran; each in a savepoint of its own, so one
    failing statement fails only its caller). This process is the catalog's only writer (the
    data-dir lock), so `get` answers from an in-memory copy of the rows, updated once a write
    is committed: lookups on the open path never queue behind another thread's fsync."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()  # the connection; held by a group commit
        # made private before SQLite creates it (its WAL then gets the same mode)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        self._db = apsw.Connection(str(path))
        self._db.execute(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000"
        ).fetchall()
        self._db.execute(_SCHEMA)
        self._upgrade()
        self._rows = {r[0]: _row(r) for r in self._db.execute(f"SELECT {_COLUMNS} FROM tenants")}
        self._commits = GroupCommit(self._db, self._lock)

    def _upgrade(self) -> None:
        have = {str(r[1]) for r in self._db.execute("PRAGMA table_info(tenants)")}
        missing = [sql for column, sql in _UPGRADES.items() if column not in have]
        if not missing:
            return
        with self._db:
            for sql in missing:
                self._db.execute(sql)
            self._db.execute(f"UPDATE tenants SET incarnation = {_NEW_INCARNATION} WHERE incarnation = ''")

    def close(self) -> None:
        """Never raises: closing checkpoints the catalog's WAL, which a full or failing disk may
        refuse; every write is in already and the WAL stays for the next open (a raise here would
        keep the data dir locked by a process that goes on)."""
        with self._lock:
            try:
                self._db.close()
            except apsw.Error:
                self._db.close(True)

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _write(self, tenant_id: str, sql: str, args: tuple[Any, ...]) -> int:
        """Run one statement durably (group-committed); the rows it changed."""
        return self._write_all([(sql, args)], [tenant_id])

    def _write_all(self, statements: list[tuple[str, tuple[Any, ...]]], tenants: list[str]) -> int:
        """Run `statements` durably, all or none, in the next group commit; the rows they
        changed. The in-memory rows of `tenants` are refreshed once it is in."""

        def work(db: apsw.Connection) -> tuple[int, dict[str, TenantRow | None]]:
            changes = 0
            for sql, args in statements:
                db.execute(sql, args)
                changes += db.changes()
            rows = {}
            for tenant_id in tenants:
                found = db.execute(f"SELECT {_COLUMNS} FROM tenants WHERE id = ?", (tenant_id,)).fetchall()
                rows[tenant_id] = _row(found[0]) if found else None
            return changes, rows

        return self._commits.run(work, self._refresh)[0]

    def _refresh(self, done: tuple[int, dict[str, TenantRow | None]]) -> None:
        for tenant_id, row in done[1].items():
            if row is None:
                self._rows.pop(tenant_id, None)
            else:
                self._rows[tenant_id] = row

    def get(self, tenant_id: str) -> TenantRow | None:
        return self._rows.get(tenant_id)

    def insert(self, tenant_id: str, group: str | None, state: TenantState = TenantState.CREATING) -> bool:
        """Add a row, a new incarnation; False (and no change) if the id is already present."""
        if tenant_id in self._rows:
            return False
        changed = self._write(
            tenant_id,
            "INSERT INTO tenants(id, created_at, state, grp, incarnation) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO NOTHING",
            (tenant_id, time.time(), state, group, secrets.token_hex(8)),
        )
        return changed == 1

    def revoke_tokens(self, tenant_id: str) -> TenantRow | None:
        """Bump the tenant's token generation: every token minted before is refused from now
        on. The row after, or None if there is none."""
        self._write(
            tenant_id, "UPDATE tenants SET token_generation = token_generation + 1 WHERE id = ?", (tenant_id,)
        )
        return self._rows.get(tenant_id)

    def adopt(
        self, tenant_id: str, created_at: float, incarnation: str, token_generation: int
    ) -> TenantRow | None:
        """Give a tenant restored after a lost data dir the identity it had (from the fleet
        metadata in the replica): its creation time, incarnation and token generation, so the
        tokens minted for it work again. The row after, or None if there is none."""
        self._write(
            tenant_id,
            "UPDATE tenants SET created_at = ?, incarnation = ?, token_generation = ? WHERE id = ?",
            (created_at, incarnation, token_generation, tenant_id),
        )
        return self._rows.get(tenant_id)

    def set_state(
        self,
        tenant_id: str,
        state: TenantState,
        error: str | None = None,
        size: int | None = None,
        expect: Collection[TenantState] | None = None,
    ) -> bool:
        """Set the tenant's state; with `expect`, only if its state is one of those then: a
        compare-and-set in the catalog's own transaction, so of concurrent callers moving a row
        out of the same states exactly one does (a check of `get` before would race). Whether
        the row changed (False: no row, or not in `expect`)."""
        sql = "UPDATE tenants SET state = ?, error = ?, size = coalesce(?, size) WHERE id = ?"
        args: tuple[Any, ...] = (state, error, size, tenant_id)
        if expect is not None:
            sql += f" AND state IN ({','.join('?' * len(expect))})"
            args += tuple(expect)
        return self._write(tenant_id, sql, args) == 1

    def set_size(self, tenant_id: str, size: int) -> None:
        self._write(tenant_id, "UPDATE tenants SET size = ? WHERE id = ?", (size, tenant_id))

    def set_sizes(self, sizes: dict[str, int]) -> None:
        """Record the sizes of many tenants as measured (a listed page): one transaction, and
        none when every size is as recorded. Tenants without a row are skipped."""
        changed = [(s, t) for t, s in sizes.items() if t in self._rows and self._rows[t].size != s]
        if not changed:
            return
        sql = "UPDATE tenants SET size = ? WHERE id = ?"
        self._write_all([(sql, (size, tenant_id)) for size, tenant_id in changed], [t for _, t in changed])

    def remove(self, tenant_id: str) -> None:
        self._write(tenant_id, "DELETE FROM tenants WHERE id = ?", (tenant_id,))

    def page(self, prefix: str = "", after: str | None = None, limit: int = 100) -> list[TenantRow]:
        """Rows with ids starting with `prefix`, ordered by id, strictly after `after`."""
        low = max(prefix, after or "")
        # every id char is below '~', so prefix + '~' bounds the prefix range
        sql = f"SELECT {_COLUMNS} FROM tenants WHERE id >= ? AND id < ? AND id != ? ORDER BY id LIMIT ?"
        return [_row(r) for r in self._read(sql, (low, prefix + "~", after or "", limit))]

    def ids_in_states(self, states: tuple[TenantState, ...]) -> list[tuple[str, TenantState]]:
        marks = ",".join("?" * len(states))
        rows = self._read(f"SELECT id, state FROM tenants WHERE state IN ({marks})", states)
        return [(r[0], TenantState(r[1])) for r in rows]

    def all_ids(self) -> set[str]:
        return set(self._rows)

    def all_states(self) -> dict[str, TenantState]:
        """Every tenant id with its state."""
        return {tenant_id: row.state for tenant_id, row in list(self._rows.items())}

    def total_size(self) -> int:
        """Sum of the size column (bytes as last measured), from memory: cheap enough per scrape."""
        return sum(row.size for row in list(self._rows.values()))

    def counts_by_state(self) -> dict[TenantState, int]:
        rows = self._read("SELECT state, count(*) FROM tenants GROUP BY state")
        return {TenantState(state): int(n) for state, n in rows}
