"""The change feed's hooks on one open tenant connection: which rows a transaction touched, read
back once it committed, published to the tenant's ring (tenants.changes says what SQLite's hooks
give and what the feed cannot see)."""

from __future__ import annotations

import logging
import time
from typing import Any

import apsw

from tenants.change_events import TOO_LARGE, Change, Commit, Encode, Resync, Value
from tenants.change_ring import Ring
from tenants.sandbox import is_bookkeeping

log = logging.getLogger(__name__)

HOOK_ID = "sqlfleet.changes"
MIN_ENTRY_BYTES = 32  # no entry of a commit encodes smaller: bounds the keys one transaction notes
UNREADABLE = "the transaction's changes could not be read back"


class _Table:
    """What the feed knows of one table of a tenant (until its schema changes)."""

    def __init__(
        self,
        name: str,
        select: str | None = None,
        columns: tuple[str, ...] = (),
        unseen: str | None = None,
        skip: bool = False,
    ) -> None:
        self.name = name
        self.select = select  # reads one row by rowid
        self.columns = columns  # of the row `select` reads, in its order
        self.unseen = unseen  # why its changes are not carried
        self.skip = skip  # not the tenant's data (bookkeeping)


class Recorder:
    """The hooks on one open tenant connection. Every callback runs in the thread that holds the
    tenant's lock, inside SQLite: none may raise (an exception would reach the tenant's
    statement after its commit) or run SQL, but the trace at a statement's end."""

    def __init__(self, conn: apsw.Connection, max_txn_bytes: int, encode: Encode) -> None:
        self.conn = conn
        self.ring: Ring | None = None
        self._limit = max_txn_bytes
        self._max_keys = max(1, max_txn_bytes // MIN_ENTRY_BYTES)
        self._encode = encode
        self._keys: dict[tuple[str, int], bool] = {}  # (table, rowid) -> the row existed before
        self._overflow = False
        self._sealed = False  # the commit hook ran: publish once the statement has ended
        self._publishing = False
        self._tables: dict[str, _Table] | None = None
        self._schema_version = self._read_schema_version()
        conn.preupdate_hook(self._changed, id=HOOK_ID)
        conn.set_commit_hook(self._committing, id=HOOK_ID)
        conn.set_rollback_hook(self._rolled_back, id=HOOK_ID)
        conn.trace_v2(apsw.SQLITE_TRACE_PROFILE, self._statement_ended, id=HOOK_ID)

    def uninstall(self) -> None:
        self.ring = None
        try:
            self.conn.preupdate_hook(None, id=HOOK_ID)
            self.conn.set_commit_hook(None, id=HOOK_ID)
            self.conn.set_rollback_hook(None, id=HOOK_ID)
            self.conn.trace_v2(0, None, id=HOOK_ID)
        except apsw.Error:  # closed meanwhile: its hooks went with it
            pass

    def _changed(self, update: apsw.PreUpdate) -> None:
        ring = self.ring
        if ring is None or ring.dropped or self._overflow or update.database_name != "main":
            return
        table, keys = update.table_name, self._keys
        if update.opcode == apsw.SQLITE_UPDATE:
            rowid, new = update.rowid, update.rowid_new
            keys.setdefault((table, rowid), True)
            if new != rowid:
                keys.setdefault((table, new), False)
        else:
            keys.setdefault((table, update.rowid), update.opcode == apsw.SQLITE_DELETE)
        if len(keys) > self._max_keys:
            self._overflow = True
            keys.clear()

    def _committing(self) -> bool:
        if self.ring is not None:
            self._sealed = True
        return False  # never refuse the commit

    def _rolled_back(self) -> None:
        self._keys = {}
        self._overflow = self._sealed = False

    def _statement_ended(self, event: dict[str, Any]) -> None:
        if not self._sealed or self._publishing:
            return
        try:
            if self.conn.in_transaction:
                return  # the commit did not happen (busy): it is tried again
        except apsw.Error:
            return
        keys, overflow = self._keys, self._overflow
        self._keys, self._overflow, self._sealed = {}, False, False
        ring = self.ring
        if ring is None or ring.dropped:
            return
        now = time.time()
        self._publishing = True
        try:
            try:
                changes, why = self._collect(keys, overflow), TOO_LARGE
            except Exception:  # e.g. interrupted: the statement's time ran out meanwhile
                # the reason is ours: SQLite's or APSW's words stay in the server's log
                log.warning("change feed: reading a commit back failed; subscribers resync", exc_info=True)
                changes, why = None, UNREADABLE
            if changes is None:
                ring.publish(self._encode, lambda position: Resync(position, why, now), self._limit)
            elif changes:
                ring.publish(self._encode, lambda position: Commit(position, now, changes), self._limit)
        except Exception:
            log.exception("change feed: publishing a commit failed")
        finally:
            self._publishing = False

    def _collect(self, keys: dict[tuple[str, int], bool], overflow: bool) -> list[Change] | None:
        """The committed transaction's changes, read back now (after the commit, lock held);
        None when they are more than `max_txn_bytes`."""
        changes: list[Change] = []
        version = self._read_schema_version()
        if version != self._schema_version:
            self._schema_version, self._tables = version, None
            changes.append(Change("schema", None))
        if overflow:
            return None
        size, unseen = 0, set()
        for (name, rowid), existed in keys.items():
            table = self._table(name)
            if table.skip:
                continue
            if table.unseen is not None:
                if table.name not in unseen:  # a virtual table's shadow tables share its name
                    unseen.add(table.name)
                    changes.append(Change("resync", table.name, reason=table.unseen))
                continue
            row = self._read(table, rowid)
            if row is not None:
                changes.append(Change("update" if existed else "insert", name, rowid, row))
                size += MIN_ENTRY_BYTES + sum(
                    len(v) if isinstance(v, str | bytes) else 8 for v in row.values()
                )
            elif existed:
                changes.append(Change("delete", name, rowid))
                size += MIN_ENTRY_BYTES
            if size > self._limit:
                return None
        return changes

    def _read(self, table: _Table, rowid: int) -> dict[str, Value] | None:
        # A plain apsw.Cursor, not the sandbox's: its note of the SQL being run must stay the
        # tenant's (tenants.sandbox reads it when the next statement is prepared).
        # The columns come from the schema, not from the cursor: a row already deleted leaves
        # a statement that has completed, whose description can no longer be read.
        assert table.select is not None
        cursor = apsw.Cursor(self.conn)
        try:
            row = next(cursor.execute(table.select, (rowid,)), None)
        finally:
            cursor.close()
        return None if row is None else dict(zip(table.columns, row, strict=True))

    def _table(self, name: str) -> _Table:
        if self._tables is None or name not in self._tables:
            self._tables = self._read_tables()
        table = self._tables.get(name)
        if table is None:  # gone since: dropped, or renamed, in the transaction
            table = self._tables[name] = _Table(name, unseen="the table was dropped or renamed")
        return table

    def _read_tables(self) -> dict[str, _Table]:
        rows = self._query("SELECT name, type, wr FROM pragma_table_list WHERE schema = 'main'")
        virtual = sorted((str(n) for n, t, _ in rows if t == "virtual"), key=len, reverse=True)
        tables: dict[str, _Table] = {}
        for name, kind, without_rowid in rows:
            name = str(name)
            if is_bookkeeping(name) or name.lower().startswith("sqlite_"):
                tables[name] = _Table(name, skip=True)
            elif kind == "shadow":
                owner = next((v for v in virtual if name.startswith(v + "_")), name)
                tables[name] = _Table(owner, unseen="a virtual table: its rows are not seen")
            elif without_rowid:
                tables[name] = _Table(name, unseen="a WITHOUT ROWID table: its rows have no rowid")
            elif kind == "table":
                tables[name] = self._rowid_table(name)
        return tables

    def _rowid_table(self, name: str) -> _Table:
        # hidden: 0 a column, 2 and 3 generated (all of them in `SELECT *`, in this order)
        rows = self._query("SELECT name, hidden FROM pragma_table_xinfo(?, 'main')", (name,))
        columns = tuple(str(n) for n, hidden in rows if hidden in (0, 2, 3))
        lowered = {c.lower() for c in columns}
        alias = next((a for a in ("_rowid_", "rowid", "oid") if a not in lowered), None)
        if alias is None:
            return _Table(name, unseen="its columns hide the rowid (rowid, _rowid_ and oid)")
        quoted = '"' + name.replace('"', '""') + '"'
        select = ", ".join('"' + c.replace('"', '""') + '"' for c in columns)
        return _Table(name, select=f"SELECT {select} FROM main.{quoted} WHERE {alias} = ?", columns=columns)

    def _read_schema_version(self) -> int:
        return int(self._query("PRAGMA schema_version")[0][0])  # type: ignore[arg-type]

    def _query(self, sql: str, bindings: tuple[Value, ...] = ()) -> list[tuple[Value, ...]]:
        cursor = apsw.Cursor(self.conn)
        try:
            # never cached: a tenant's text equal to ours must pass the authorizer itself
            return list(cursor.execute(sql, bindings, can_cache=False))
        finally:
            cursor.close()
