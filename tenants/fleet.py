"""The fleet: every tenant of one data directory — create, delete, info, list, and running SQL.

This is the tenants layer's front door. It owns the data-dir lock, the catalog and the pool.
All methods block (SQLite and file I/O) and are thread-safe; async callers use worker threads.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path

import apsw

from metrics.instruments import TENANTS
from tenants.budget import Budget, drain
from tenants.catalog import Catalog, Identity, TenantRow
from tenants.config import DbConfig, PoolConfig
from tenants.connection import open_database
from tenants.errors import (
    NotAuthorizedSql,
    NotInline,
    SqlfleetError,
    TenantBusy,
    TenantCorrupt,
    TenantExists,
    TenantNotFound,
    TenantUnavailable,
)
from tenants.execute import QueryResult, Statement, batch_steps, bindings, run_statement
from tenants.files import create_durably, replace_durably
from tenants.hooks import FleetHooks
from tenants.ids import validate_tenant_id
from tenants.images import Images, prepare
from tenants.layout import DataDirLock, Layout, copy_private
from tenants.pool import Handle, Pool
from tenants.sandbox import Sandbox
from tenants.state import TenantState

log = logging.getLogger(__name__)
# the states a delete, restore or replacement starts from: none is under way
_SETTLED = (TenantState.ACTIVE, TenantState.CORRUPT, TenantState.MISSING)
_OURS = (TenantState.RESTORING,)  # a replacement ends only its own restoring state
_SERVED = (TenantState.ACTIVE, TenantState.MISSING)  # what a failed open or read may mark corrupt
INLINE_BUDGET = 0.002  # seconds a statement may run on the caller's (event loop) thread


# The fleet calls its hooks, and the hooks need the fleet (the shipper leases its open handles,
# restores go through it, catch-up reads its catalog). The cycle is broken here, once: the fleet
# takes a factory and hands itself to it at the end of its constructor, when its catalog and pool
# exist; the hooks it returns are then fixed for the fleet's life. A factory may keep the fleet
# but must not call it before the constructor returns.
HooksFactory = Callable[["Fleet"], Sequence[FleetHooks]]


def no_hooks(fleet: Fleet) -> Sequence[FleetHooks]:
    return ()


class Fleet:
    def __init__(
        self, data_dir: Path, config: DbConfig, pool: PoolConfig, hooks: HooksFactory = no_hooks
    ) -> None:
        """Take the data-dir lock (raises DataDirLocked), reconcile the catalog with the files,
        then build the hooks with `hooks(self)`; on any error the lock is released again."""
        self.layout = Layout(data_dir)
        self.config = config
        # a cluster node's check that it may serve a tenant now (raises), before every lease
        self.admit: Callable[[str], None] | None = None
        self._images = Images(self.layout.system_dir, config)
        self._lock = DataDirLock(self.layout)
        with ExitStack() as undo:
            self._lock.acquire()
            undo.callback(self._lock.release)
            self.catalog = Catalog(self.layout.catalog_path)
            undo.callback(self.catalog.close)
            self.reconcile()
            self.pool = Pool(pool, self._open, self._before_close)
            self.hooks: tuple[FleetHooks, ...] = tuple(hooks(self))
            # only the hooks with per-request work are asked on every request
            self._use_hooks = tuple(h for h in self.hooks if type(h).work_due is not FleetHooks.work_due)
            undo.pop_all()  # built whole: from here `close` releases them
        self._refresh_gauges()

    @property
    def lock_held(self) -> bool:
        return self._lock.held

    def close(self) -> None:
        """Close every handle (waiting for in-flight work), the catalog, and release the lock."""
        self.pool.close_all()
        self.catalog.close()
        self._lock.release()

    # -- lifecycle -----------------------------------------------------------------------------

    def create(
        self,
        tenant_id: str,
        group: str | None = None,
        template: Path | None = None,
        identity: Identity | None = None,
    ) -> TenantRow:
        """Create an empty tenant, or a copy of the `template` file (by default, of the template
        a hook names for `group`); `identity`: the one it had elsewhere (a restore as itself), in
        place before the row is active, so no request ever sees it with another. Raises
        InvalidTenantId, TenantExists, and what `template_for` raises (an unknown group).
        Durable when it returns: the row is written first, the file second, then the row marked
        active, so a crash anywhere leaves something `reconcile` can undo."""
        validate_tenant_id(tenant_id)
        group_template = template is None and group is not None
        if template is None and group is not None:
            template = next((t for h in self.hooks if (t := h.template_for(group)) is not None), None)
        if not self.catalog.insert(tenant_id, group):
            raise TenantExists(f"tenant {tenant_id!r} already exists")
        if identity is not None:
            self.catalog.adopt(
                tenant_id, identity.created_at, identity.incarnation, identity.token_generation
            )
        path = self.layout.tenant_path(tenant_id)
        try:
            size = self._make_file(tenant_id, path, template, group_template)
            for hook in self.hooks:
                hook.after_create(tenant_id, path)
        except BaseException:
            self.layout.remove_tenant_files(tenant_id)
            self.catalog.remove(tenant_id)
            raise
        self.catalog.set_state(tenant_id, TenantState.ACTIVE, size=size)
        row = self.catalog.get(tenant_id)
        assert row is not None
        return row

    def _make_file(self, tenant_id: str, final: Path, template: Path | None, shared: bool) -> int:
        """Make the tenant's file `final`, durably, empty or from `template` (`shared`: a group's,
        which many tenants start from); its size."""
        self.layout.make_tenant_dir(tenant_id)
        if template is None:
            image: bytes | None = self._images.empty()
        else:
            image = self._images.of_template(template) if shared else None
        if image is not None:
            # Straight under the final name: until the row says active, `reconcile` removes
            # whatever a crash left there, so a temporary name and its rename (a second
            # journal commit of the file system) buy nothing.
            create_durably(final, image)
            return len(image)
        assert template is not None
        tmp = final.with_name(f"{final.name}.tmp{uuid.uuid4().hex[:8]}")
        copy_private(template, tmp)
        prepare(tmp, self.config)
        replace_durably(tmp, final)
        return final.stat().st_size

    def delete(self, tenant_id: str) -> None:
        """Delete the tenant: in-flight statements finish, later ones get TenantNotFound, the
        files go, and the id can be reused. Of concurrent deletes of one tenant exactly one
        does it, the others raise TenantNotFound. Raises TenantNotFound, TenantUnavailable
        (while it is being restored or replaced)."""
        self._move(tenant_id, TenantState.DELETING, _SETTLED)
        self.pool.discard(tenant_id, "the tenant is being deleted")
        for hook in self.hooks:
            hook.before_delete(tenant_id)
        self.layout.remove_tenant_files(tenant_id)
        # before the row goes: a request arriving once it is gone may ask the hooks to recover
        # the tenant, and they must already know it was deleted on purpose
        for hook in self.hooks:
            hook.after_delete(tenant_id)
        self.catalog.remove(tenant_id)

    def let_go(self, tenant_ids: Sequence[str], hand_off: Callable[[Sequence[str]], None]) -> None:
        """Give tenants to another server (a cluster's planned move): close each (in-flight
        work finishes; the caller refuses new work for them), `hand_off(tenant_ids)` (ship their
        last commits and say where they are), then drop the local copies without recording a
        deletion (the backups keep them for the new owner). Marked DELETING first, so a crash
        half-way leaves no local copy to serve stale; if `hand_off` raises, they are kept and
        serve again."""
        for tenant_id in tenant_ids:
            self.catalog.set_state(tenant_id, TenantState.DELETING)
            self.pool.discard(tenant_id, "the tenant is moving to another node")
        try:
            hand_off(tenant_ids)
        except BaseException:
            for tenant_id in tenant_ids:
                self.catalog.set_state(tenant_id, TenantState.ACTIVE)
            raise
        for tenant_id in tenant_ids:
            for hook in self.hooks:
                hook.before_delete(tenant_id)
            self.layout.remove_tenant_files(tenant_id)
            self.catalog.remove(tenant_id)

    def reconcile(self) -> None:
        """Finish or undo what a crash left half-done, so catalog and files agree. Runs while
        we hold the data-dir lock and before any request, so nothing is in flight."""
        for tenant_id, _state in self.catalog.ids_in_states((TenantState.CREATING, TenantState.DELETING)):
            log.warning("reconcile: removing half-%s tenant %s", _state, tenant_id)
            self.layout.remove_tenant_files(tenant_id)
            self.catalog.remove(tenant_id)
        for tenant_id, _state in self.catalog.ids_in_states((TenantState.RESTORING,)):
            log.error("reconcile: restore of tenant %s was interrupted", tenant_id)
            self.catalog.set_state(tenant_id, TenantState.CORRUPT, "restore in place was interrupted")
        found = self.layout.scan()
        for path in found.leftovers:
            log.warning("reconcile: removing leftover temporary file %s", path)
            path.unlink(missing_ok=True)
        for path in found.strays:
            log.warning("reconcile: ignoring %s: not where any tenant id lives", path)
        known = self.catalog.all_states()
        for tenant_id in sorted(found.tenant_ids - known.keys()):
            # Create writes the row before the file, so only an outside change makes an
            # orphan: keep the data and adopt it rather than delete someone's database.
            log.warning("reconcile: adopting orphan tenant file %s", tenant_id)
            self.catalog.insert(tenant_id, None, TenantState.ACTIVE)
        for tenant_id, state in known.items():
            present = tenant_id in found.tenant_ids
            if state == TenantState.ACTIVE and not present:
                log.warning("reconcile: tenant %s has no file", tenant_id)
                self.catalog.set_state(tenant_id, TenantState.MISSING, "database file is missing")
            elif state == TenantState.MISSING and present:
                log.warning("reconcile: tenant %s has its file back", tenant_id)
                self.catalog.set_state(tenant_id, TenantState.ACTIVE)

    # -- reads ---------------------------------------------------------------------------------

    def require(self, tenant_id: str, allow: tuple[TenantState, ...] = (TenantState.ACTIVE,)) -> TenantRow:
        """The tenant's row if its state is in `allow`. Raises InvalidTenantId, TenantNotFound,
        TenantUnavailable. Never blocks (the catalog's rows are in memory): fit for the event loop."""
        validate_tenant_id(tenant_id)
        return _check(tenant_id, self.catalog.get(tenant_id), allow)

    @contextmanager
    def lease_if_open(self, tenant_id: str, wait: float = 0.5) -> Iterator[Handle | None]:
        """The tenant's locked handle if it is open now and its lock comes free within `wait`
        seconds, else None (never opens it; never waits out a client's open transaction)."""
        if not self.pool.is_open(tenant_id):
            yield None
            return
        with ExitStack() as stack:
            try:
                handle: Handle | None = stack.enter_context(self.pool.lease(tenant_id, wait))
            except TenantBusy:
                handle = None
            yield handle

    def group_of(self, tenant_id: str) -> str | None:
        """The tenant's schema group (fixed at creation); None if it has none or does not exist."""
        row = self.catalog.get(tenant_id)
        return row.group if row is not None else None

    def writable(self, tenant_id: str) -> bool:
        """Whether every hook lets the tenant take writes now (False: e.g. its backup backlog is
        full; its reads still work)."""
        return all(hook.writable(tenant_id) for hook in self.hooks)

    def exists(self, tenant_id: str) -> bool:
        """Whether the catalog has the tenant (in any state)."""
        return self.catalog.get(validate_tenant_id(tenant_id)) is not None

    def replace(self, tenant_id: str, source: Path, operation: str = "restore") -> TenantRow:
        """Replace the tenant's database with the file `source` (a restore in place, or the
        `operation` named): in-flight requests finish, later ones get 503 until the new file is
        in place. The hooks see it as the old file going (before_delete) and a new one arriving
        (after_create). Raises TenantNotFound, TenantUnavailable (another restore or replacement
        of it is under way: one at a time)."""
        row = self._move(tenant_id, TenantState.RESTORING, _SETTLED)
        try:
            why = "restored" if operation == "restore" else f"replaced by an {operation}"
            self.pool.discard(tenant_id, f"the tenant is being {why}")
            for hook in self.hooks:
                hook.before_delete(tenant_id)
            self.layout.remove_tenant_files(tenant_id)
            final = self.layout.tenant_path(tenant_id)
            self.layout.make_tenant_dir(tenant_id)
            tmp = final.with_name(f"{final.name}.tmp{uuid.uuid4().hex[:8]}")
            copy_private(source, tmp)
            replace_durably(tmp, final)
            for hook in self.hooks:
                hook.after_create(tenant_id, final)
        except BaseException:
            self.catalog.set_state(
                tenant_id, TenantState.CORRUPT, f"{operation} in place failed", expect=_OURS
            )
            raise
        size = self.layout.tenant_size(tenant_id)  # the new file's: the row had the old one's
        self.catalog.set_state(tenant_id, TenantState.ACTIVE, size=size, expect=_OURS)
        return dataclasses.replace(row, state=TenantState.ACTIVE, error=None, size=size)

    def _move(self, tenant_id: str, to: TenantState, allow: tuple[TenantState, ...]) -> TenantRow:
        """Move the tenant from a state in `allow` to `to` (clearing its error), as one
        compare-and-set in the catalog: of concurrent moves out of the same states exactly one
        wins, the others raise what `require` raises for the state the winner left
        (TenantNotFound once it is deleting). The row before the move."""
        while True:  # a lost compare-and-set has the row refreshed: `require` then raises
            row = self.require(tenant_id, allow)
            if self.catalog.set_state(tenant_id, to, expect=allow):
                return row

    def info(self, tenant_id: str) -> TenantRow:
        row = self.require(tenant_id, allow=tuple(TenantState))
        size = self.layout.tenant_size(tenant_id)
        if size != row.size:
            self.catalog.set_size(tenant_id, size)
        return dataclasses.replace(row, size=size)

    def revoke_tokens(self, tenant_id: str) -> TenantRow:
        """Refuse every token minted for the tenant so far (tokens minted later work); the
        server's signing key stays. Raises InvalidTenantId, TenantNotFound."""
        self.require(tenant_id, allow=tuple(TenantState))
        row = self.catalog.revoke_tokens(tenant_id)
        if row is None:  # deleted meanwhile
            raise TenantNotFound(f"tenant {tenant_id!r} does not exist")
        for hook in self.hooks:
            hook.after_revoke(tenant_id)
        return row

    def list_tenants(
        self, prefix: str = "", after: str | None = None, limit: int = 100, measure: bool = False
    ) -> list[TenantRow]:
        """A page of tenants by id. With `measure` their sizes are measured now, as `info`
        measures them (a few stat calls per tenant: for a page a person reads, not a walk over
        the fleet), and the catalog records what changed; else sizes are as last recorded."""
        rows = self.catalog.page(prefix, after, limit)
        if not measure:
            return rows
        sizes = {row.id: self.layout.tenant_size(row.id) for row in rows}
        self.catalog.set_sizes(sizes)
        return [dataclasses.replace(row, size=sizes[row.id]) for row in rows]

    # -- SQL -----------------------------------------------------------------------------------

    @contextmanager
    def lease(
        self, tenant_id: str, readonly: bool = False, preempt: str | None = None, passing: bool = False
    ) -> Iterator[Handle]:
        """The tenant's locked handle, with query_only set to `readonly`. A corrupt file is
        marked in the catalog and reported as TenantCorrupt; other tenants are unaffected.
        With `preempt` (why: server work such as a migration), a Hrana transaction holding the
        tenant is preempted after the pool's `preempt_wait` (see tenants.pool). `passing`: work
        that visits many tenants once (a rollout) opens them outside the LRU order (Pool.lease)."""
        validate_tenant_id(tenant_id)
        if self.admit is not None:
            self.admit(tenant_id)
        frozen = not readonly and not self.writable(tenant_id)
        try:
            with self.pool.lease(tenant_id, preempt=preempt, passing=passing) as handle:
                self.before_use(handle)
                handle.set_query_only(readonly or frozen)
                yield handle
        except TenantCorrupt as exc:
            self._mark_corrupt(tenant_id, exc.message)
            raise
        except NotAuthorizedSql as exc:
            if frozen and exc.read_only:
                raise TenantUnavailable(
                    f"tenant {tenant_id!r} accepts no writes until its backup catches up"
                ) from None
            raise

    def before_use(self, handle: Handle) -> None:
        """The hooks' work due for the tenant before a request uses its connection (a schema
        catch-up that became due while it was open). For a holder of the handle's lock outside
        a transaction, in a worker thread; every lease calls it, so it is one dict lookup per
        hook when there is nothing to do (see FleetHooks.work_due)."""
        for hook in self._use_hooks:
            if hook.work_due(handle.tenant_id):
                hook.before_use(handle.tenant_id, handle)

    def try_inline(self, tenant_id: str, stmt: Statement) -> QueryResult | None:
        """Run a read-only statement right here, if that is safe and cheap: the tenant is open,
        its lock free, the statement judged inline-safe (tenants.inline: nothing in it can
        take long in one step), and it finishes within INLINE_BUDGET seconds. Returns None
        otherwise, having changed nothing (a write is refused before it runs; a slow read is
        interrupted); then run it with `execute` in a worker thread. Lets the event loop answer
        point reads without a thread hand-off, while nothing slow or durable (fsync) ever runs
        on it."""
        if any(hook.work_due(tenant_id) for hook in self._use_hooks):
            return None  # work for a worker thread first (see `before_use`)
        if self.admit is not None:
            self.admit(tenant_id)
        handle = self.pool.try_lease(tenant_id)
        if handle is None:
            return None
        result = None
        try:
            assert handle.conn is not None and handle.sandbox is not None
            if handle.sandbox.inline.allows(handle.conn, stmt.sql):
                result = run_statement(
                    handle.conn, handle.sandbox, self.config, stmt, inline_budget=INLINE_BUDGET
                )
        except (NotInline, SqlfleetError):
            pass  # read-only, so it changed nothing: the worker thread runs it (and reports)
        finally:
            self.pool.release(handle, used=result is not None)
        return result

    def execute(
        self, tenant_id: str, stmt: Statement, readonly: bool = False, budget: Budget | None = None
    ) -> QueryResult:
        with self.lease(tenant_id, readonly) as h:
            assert h.conn is not None and h.sandbox is not None
            result = run_statement(h.conn, h.sandbox, self.config, stmt, budget=budget)
            h.sandbox.inline.consider(h.conn, stmt.sql, bindings(stmt.params))
            return result

    def batch(
        self, tenant_id: str, stmts: Sequence[Statement], readonly: bool = False, budget: Budget | None = None
    ) -> list[QueryResult]:
        return drain(self.batch_steps(tenant_id, stmts, readonly, budget))

    def batch_steps(
        self, tenant_id: str, stmts: Sequence[Statement], readonly: bool = False, budget: Budget | None = None
    ) -> Generator[None, None, list[QueryResult]]:
        """`batch`, yielding between statements (tenants.execute.batch_steps) with the
        tenant's lease held; closing the generator rolls back and lets go."""
        with self.lease(tenant_id, readonly) as h:
            assert h.conn is not None and h.sandbox is not None
            return (yield from batch_steps(h.conn, h.sandbox, self.config, stmts, budget))

    def _open(self, tenant_id: str) -> tuple[apsw.Connection, Sandbox]:
        row = self.catalog.get(tenant_id)
        if row is None and any(hook.recover(tenant_id) for hook in self.hooks):
            row = self.catalog.get(tenant_id)
        _check(tenant_id, row, (TenantState.ACTIVE,))
        try:
            conn, sandbox = open_database(self.layout.tenant_path(tenant_id), self.config)
        except apsw.CantOpenError:
            # compare-and-set: a delete that removed the file meanwhile keeps its state
            self.catalog.set_state(
                tenant_id, TenantState.MISSING, "database file is missing", expect=(TenantState.ACTIVE,)
            )
            raise TenantUnavailable(f"tenant {tenant_id!r} has no database file") from None
        except (apsw.CorruptError, apsw.NotADBError) as exc:
            raise TenantCorrupt(f"tenant {tenant_id!r} is corrupt: {exc}") from None
        except apsw.Error as exc:
            raise TenantUnavailable(f"tenant {tenant_id!r} cannot be opened: {exc}") from None
        try:
            for hook in self.hooks:
                hook.after_open(tenant_id, conn, sandbox)
        except BaseException:
            conn.close()
            raise
        return conn, sandbox

    def _before_close(self, handle: Handle) -> None:
        if handle.conn is not None:
            for hook in self.hooks:
                hook.before_close(handle.tenant_id, handle.conn)

    def _mark_corrupt(self, tenant_id: str, message: str) -> None:
        # only a served tenant: a delete or restore under way owns the row's state (a delete
        # turned corrupt here would let a second delete start)
        if self.catalog.set_state(tenant_id, TenantState.CORRUPT, message, expect=_SERVED):
            log.error("tenant %s marked corrupt: %s", tenant_id, message)
            self.pool.discard(tenant_id, "the tenant is corrupt")

    def _refresh_gauges(self) -> None:
        counts = _StateCounts(self.catalog)
        for state in TenantState:
            TENANTS.labels(state).set_function(partial(counts.get, state))


class _StateCounts:
    """Tenant counts by state for the gauges: queried when scraped, at most once a second,
    instead of a full count on every create and delete."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._at = float("-inf")
        self._counts: dict[TenantState, int] = {}

    def get(self, state: TenantState) -> int:
        if time.monotonic() - self._at > 1.0:
            self._counts, self._at = self._catalog.counts_by_state(), time.monotonic()
        return self._counts.get(state, 0)


__all__ = ["Fleet", "HooksFactory", "SqlfleetError", "no_hooks"]


def _check(tenant_id: str, row: TenantRow | None, allow: tuple[TenantState, ...]) -> TenantRow:
    if row is None or row.state in (TenantState.CREATING, TenantState.DELETING):
        raise TenantNotFound(f"tenant {tenant_id!r} does not exist")
    if row.state not in allow:
        error = TenantCorrupt if row.state == TenantState.CORRUPT else TenantUnavailable
        raise error(f"tenant {tenant_id!r} is {row.state}: {row.error or 'unavailable'}")
    return row
