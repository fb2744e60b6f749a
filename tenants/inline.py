"""Which statements may run inline, on the caller's thread (the event loop), instead of in a
worker thread.

Only what provably cannot run long: a read-only statement whose program (EXPLAIN) uses only
the opcodes below, each of which does a bounded amount of work (a b-tree seek or step, moving
or comparing values no larger than SQLITE_LIMIT_LENGTH). No function calls (a function may do
anything in one step), no sorter (one step sorts everything), no virtual tables, no
whole-table counts. Such a statement still runs under a budget of a few milliseconds, checked
every few steps by the progress handler (tenants.sandbox), so a scan stops early and is re-run
in a worker thread.

The verdict is made in a worker thread (`judge`, after running the statement there once) and
kept per connection and SQL text; it holds while the schema does (a changed table can turn a
lookup into a view with function calls), which `allows` checks cheaply: the file's data
version first, the schema cookie only after a commit. Not thread-safe: the caller holds the
connection's lease.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import apsw

from tenants.sqllex import leading_keyword


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Each does a bounded amount of work per execution; anything else keeps a statement off the
# loop. In turn: control and registers; tests and arithmetic on values (each at most
# SQLITE_LIMIT_LENGTH long); reading b-trees a seek or a step at a time; IN (...) lists, kept
# as a small in-memory index.
SAFE_OPCODES = _names(
    """
    Init Goto Halt Noop Explain Once Gosub Return BeginSubrtn InitCoroutine EndCoroutine Yield
    Integer Int64 Real String8 String Null SoftNull Blob Variable Move Copy SCopy IntCopy ResultRow

    If IfNot IsNull NotNull IsTrue ZeroOrNull IfPos IfNotZero DecrJumpZero OffsetLimit MustBeInt
    Affinity RealAffinity Cast Eq Ne Lt Le Gt Ge ElseEq Compare Jump Permutation And Or Not
    BitAnd BitOr BitNot ShiftLeft ShiftRight Add Subtract Multiply Divide Remainder Concat CollSeq

    Transaction TableLock OpenRead ReopenIdx ColumnsUsed Close Rewind Last Next Prev NullRow
    SeekRowid NotExists SeekGE SeekGT SeekLE SeekLT SeekHit IdxGE IdxGT IdxLE IdxLT IdxRowid
    DeferredSeek FinishSeek Rowid Column IfNullRow

    OpenEphemeral MakeRecord IdxInsert Found NotFound IfNoHope
    """
)

_CAPACITY = 32  # SQL texts remembered per connection
_LONGEST = 4096  # longer SQL is not worth judging: it is not a point read
_READS = frozenset({"SELECT", "WITH", "VALUES"})
# First keywords of statements that cannot write (WITH may lead an INSERT; tenants define no
# functions and triggers fire on writes only)
_CANNOT_WRITE = frozenset({"SELECT", "VALUES"})


def cannot_write(sql: str) -> bool:
    """Whether `sql` is, by its first keyword, a read: what may wait behind a tenant's jobs for
    its turn to try the event loop without counting as a job (router.scheduler.run_after)."""
    return leading_keyword(sql) in _CANNOT_WRITE


class InlinePlans:
    """SQL text -> may it run inline, for one connection."""

    def __init__(self) -> None:
        self._verdicts: OrderedDict[str, bool] = OrderedDict()
        self._seen: OrderedDict[str, None] = OrderedDict()  # texts run once, not judged yet
        self._data_version = -1
        self._schema_version = -1

    def allows(self, conn: apsw.Connection, sql: str) -> bool:
        """Whether `sql` was judged safe inline and the schema has not changed since. Cheap."""
        if not self._verdicts:
            return False
        self._check_schema(conn)
        verdict = self._verdicts.get(sql)
        return bool(verdict)

    def consider(self, conn: apsw.Connection, sql: str, bindings: Any) -> None:
        """`sql` just ran fine in a worker thread: judge it the second time it does (a text
        sent once is not worth an EXPLAIN). Worker thread only."""
        if sql in self._verdicts or len(sql) > _LONGEST:
            return
        if sql not in self._seen:
            self._seen[sql] = None
            if len(self._seen) > _CAPACITY:
                self._seen.popitem(last=False)
            return
        del self._seen[sql]
        if leading_keyword(sql) in _READS:
            self.judge(conn, sql, bindings)

    def judge(self, conn: apsw.Connection, sql: str, bindings: Any) -> bool:
        """Decide for `sql` (one statement, which has just run fine with `bindings`) from its
        program, and remember. Prepares the statement: call it in a worker thread."""
        self._check_schema(conn)
        cursor = conn.cursor()
        try:
            program = cursor.execute(sql, bindings, can_cache=False, explain=1)
            safe = cursor.is_readonly and all(op[1] in SAFE_OPCODES for op in program)
        except apsw.Error:
            safe = False
        finally:
            cursor.close(force=True)
        self._verdicts[sql] = safe
        self._verdicts.move_to_end(sql)
        while len(self._verdicts) > _CAPACITY:
            self._verdicts.popitem(last=False)
        return safe

    def _check_schema(self, conn: apsw.Connection) -> None:
        version = conn.data_version()  # moves on every commit, ours included: no SQL
        if version == self._data_version:
            return
        self._data_version = version
        cookie = conn.execute("PRAGMA schema_version").fetchall()[0][0]
        if cookie != self._schema_version:
            self._schema_version = cookie if isinstance(cookie, int) else -1
            self._verdicts.clear()
