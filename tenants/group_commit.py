"""Group commit: the durable writes of many threads done as one, so one fsync covers them all.

The usual leader/follower shape (`Batcher`): a writer queues its item; if no commit is under way
it leads, else it waits. The leader commits everything queued by then, wakes the writers it
carried, and hands the lead to the first writer that queued meanwhile (whose commit takes all
queued by then). No writer waits behind a commit that started after it queued.
`GroupCommit` applies it to one SQLite connection: one transaction for many writes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import apsw

T = TypeVar("T")
R = TypeVar("R")


class _Waiter(Generic[T]):
    __slots__ = ("done", "item", "lead", "outcome", "wake")

    def __init__(self, item: T) -> None:
        self.item = item
        self.outcome: object = None  # the result, or the exception to raise
        self.done = False  # committed (or failed): `outcome` says how
        self.lead = False  # its writer is to commit what is queued
        self.wake = threading.Event()  # set once `done` or `lead`


class Batcher(Generic[T, R]):
    """Thread-safe. `commit(items)` runs in one writer's thread, one call at a time, with every
    item queued by then; it returns one outcome per item: its result, or an exception (that
    item failed alone). An exception it raises fails every item it was given."""

    def __init__(
        self, commit: Callable[[list[T]], list[R | BaseException]], hold: threading.Lock | None = None
    ) -> None:
        self._commit = commit
        # taken by the leader before it takes the queue (a connection's lock: writers queue up
        # while another user holds it, and its commit takes them all)
        self._hold = hold or threading.Lock()
        self._lock = threading.Lock()  # guards what follows
        self._queue: list[_Waiter[T]] = []
        self._leading = False  # a writer is committing, or about to (it empties the queue)

    @property
    def queued(self) -> int:
        """Items waiting for the next commit (for tests that line writers up)."""
        with self._lock:
            return len(self._queue)

    def run(self, item: T) -> R:
        """Commit `item` with those of concurrent callers; its result once the commit is done.
        Raises its exception."""
        waiter = _Waiter(item)
        with self._lock:
            self._queue.append(waiter)
            if not self._leading:
                self._leading = waiter.lead = True
        if not waiter.lead:
            waiter.wake.wait()
        if not waiter.done:  # led: commit what is queued, this item among it
            with self._hold:
                self._commit_queued()
        if isinstance(waiter.outcome, BaseException):
            raise waiter.outcome
        return waiter.outcome  # type: ignore[return-value]  # not an exception: commit's result

    def _commit_queued(self) -> None:
        # the caller leads; hands the lead on when done
        with self._lock:
            batch, self._queue = self._queue, []
        try:
            try:
                outcomes: list[object] = list(self._commit([w.item for w in batch]))
            except BaseException as exc:
                outcomes = [exc] * len(batch)
            for waiter, outcome in zip(batch, outcomes, strict=True):
                waiter.outcome = outcome
        finally:
            for waiter in batch:
                waiter.done = True
                waiter.wake.set()
            with self._lock:
                if self._queue:
                    self._queue[0].lead = True
                    self._queue[0].wake.set()
                else:
                    self._leading = False


_Job = tuple[Callable[[apsw.Connection], Any], Callable[[Any], None] | None]


class GroupCommit:
    """Many threads' writes to one SQLite connection in one transaction (one fsync with
    synchronous=FULL), each in a savepoint of its own, so one failing write fails only its
    caller. Thread-safe. `lock` guards the connection: a commit holds it for its whole
    transaction, and every other user of `db` must take it too."""

    def __init__(self, db: apsw.Connection, lock: threading.Lock) -> None:
        self._db = db
        self._batcher: Batcher[_Job, Any] = Batcher(self._commit, lock)

    @property
    def queued(self) -> int:
        """Writes waiting for the next commit (for tests that line writers up)."""
        return self._batcher.queued

    def run(self, work: Callable[[apsw.Connection], T], then: Callable[[T], None] | None = None) -> T:
        """`work(db)` inside the next group commit; durable when this returns. `then(result)`
        runs once that commit is in and before any later one starts (for in-memory copies of
        what was written). An exception of `work` undoes its savepoint only and is raised here;
        a failed commit is raised to every writer it carried."""
        result: T = self._batcher.run((work, then))
        return result

    def _commit(self, jobs: list[_Job]) -> list[Any]:
        # the batcher holds the connection's lock
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            outcomes = [self._run(work) for work, _ in jobs]
            db.execute("COMMIT")
        except BaseException:
            if not db.getautocommit():
                db.execute("ROLLBACK")
            raise
        for (_, then), outcome in zip(jobs, outcomes, strict=True):
            if then is not None and not isinstance(outcome, BaseException):
                then(outcome)
        return outcomes

    def _run(self, work: Callable[[apsw.Connection], Any]) -> object:
        """One queued write inside the group's transaction, undone alone if it fails."""
        self._db.execute("SAVEPOINT one_write")
        try:
            return work(self._db)
        except Exception as exc:
            self._db.execute("ROLLBACK TO one_write")
            return exc
        finally:
            self._db.execute("RELEASE one_write")
