"""Fleet rollout: a group's migrations tried on its template, run on every tenant of the group,
then released (the template migrated) once every tenant has had its turn.

Tenants are migrated by `concurrency` worker threads, each through the fleet's pool, so a
tenant's requests and its migration take turns on its lock (requests wait, bounded by the
pool's busy timeout). Each tenant is one transaction: a failure rolls it back, is recorded with
its error, and the others go on. Per-tenant progress lives in the tenant (its migrations table),
so a rerun resumes: tenants already done count as `current`.

Releasing last is what keeps a rollout contained: until then new tenants start at the old
head and lazy catch-up leads there, so a migration spreads only through the rollout's workers.
- A rollout stopped (by `max_failures`, by the operator, by a shutdown) releases nothing: the
  spread is paused. `resume` goes on with the tenants it has not handled and retries those that
  failed, then releases; after a server restart it checks every tenant again. `abort` ends it
  for good: the released head stays the previous migration. Tenants it already migrated keep
  the migration (SQLite has no down migrations) and are listed in `migrated_tenants`: they are
  ahead of the head, which is harmless (catch-up never goes backwards) and they count as
  `current` for the next rollout, which the operator starts once the migration works
  everywhere (or after registering one that repairs the tenants it failed on).
- A new rollout may start over a stopped one (the stopped one can then no longer be resumed).
- dry_run: the template and every tenant are migrated inside a transaction that is rolled back;
  failures are reported, sync plans collected, nothing changes, nothing is released.
- canary N: migrate N tenants that need it, then stop; nothing is released. Resuming a canary
  runs the rest as a full rollout.
- max_failures K: stop once K tenants failed.
State and failures are readable while it runs (`snapshot`) and after (a JSON file per rollout).
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import apsw

from metrics.instruments import ROLLOUT_TENANTS
from schema_sync import catch_up
from schema_sync.errors import InvalidMigration, RolloutFinished
from schema_sync.groups import Group, GroupStore
from schema_sync.migrations import Applied, Migration, applied, apply, pending
from schema_sync.session import SchemaSession
from tenants.errors import SqlfleetError, TenantBusy, TenantNotFound
from tenants.files import write_durably
from tenants.fleet import Fleet
from tenants.rfc3339 import format_time, parse_time
from tenants.state import TenantState

log = logging.getLogger(__name__)

RUNNING, COMPLETED, STOPPED, FAILED = "running", "completed", "stopped", "failed"
INTERRUPTED, ABORTED = "interrupted", "aborted"
RESUMABLE = (STOPPED, INTERRUPTED)
STOPPING = "stopping"  # only in the answer to a stop whose workers are still on their tenants
MAX_FAILURES_KEPT = 1000
MAX_TENANTS_KEPT = 1000  # of `migrated_tenants`
MAX_PLANS_KEPT = 20
BUSY_RETRIES = 3
EARLIER = "migrated_earlier"  # an outcome: at the target since `Rollout.since` (counted as migrated)
_PAGE = 1000
# a dry run's outcomes in the metric: what would happen, not what did
_DRY_RUN_OUTCOMES = {"migrated": "would_migrate", "failed": "would_fail"}


@dataclass(frozen=True)
class RolloutOptions:
    dry_run: bool = False
    canary: int | None = None
    max_failures: int | None = None
    concurrency: int | None = None  # None: the server's `Rollouts.concurrency`


class Rollout:
    """One run over one group, which may be stopped and resumed. Thread-safe; `snapshot` may
    be called at any time."""

    def __init__(
        self,
        rollout_id: str,
        group: Group,
        options: RolloutOptions,
        *,
        store: GroupStore,
        fleet: Fleet,
        releases: bool = True,
        wanted: Callable[[str], bool] | None = None,
        since: float | None = None,
    ) -> None:
        """`releases` False: a part of a fleet-wide rollout (ops.fleetwork), which completes
        without releasing (the fleet releases once every part is done); `wanted(tenant)`: whether
        the tenant is this run's (still on this node), asked before each one; `since` (unix
        seconds): a tenant found at the target whose target migration was applied at or after it
        counts as migrated (by an earlier run of the same fleet-wide rollout, on this node or
        another), not as current."""
        self.id, self.group, self.options = rollout_id, group, options
        self.store, self.fleet = store, fleet
        self.releases, self.wanted, self.since = releases, wanted, since
        self.workers = options.concurrency or 1  # Rollouts.start fills in the server's default
        self.state = RUNNING
        self.reason: str | None = None
        self.template: dict[str, Any] = {}
        self.target: str | None = None  # the last migration it brings tenants to
        self.counts = {"total": 0, "migrated": 0, "current": 0, "failed": 0, "gone": 0}
        self.failures: list[dict[str, str]] = []
        self.migrated_tenants: list[str] = []  # the first MAX_TENANTS_KEPT it migrated
        self.plans: collections.Counter[str] = collections.Counter()
        self.resumed = 0
        self.started_at = time.time()
        self.finished_at: float | None = None
        self._earlier = 0.0  # seconds run before the last resume
        self._clock = time.monotonic()
        self._stopped_clock: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._aborting = False
        self._releasing = False
        self._canary_left = options.canary
        self._migrations: list[Migration] | None = None  # fixed at the first run
        self._queue: collections.deque[str] | None = None  # None until the tenants are listed
        self._retry: list[str] = []  # failed, or a canary's unused turns: queued again on resume
        self._skip: set[str] = set()  # migrated before a restart (see `restore`)
        self._thread = self._new_thread()

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(target=self._run, name=f"rollout-{self.group.name}", daemon=True)

    @classmethod
    def restore(
        cls, saved: dict[str, Any], group: Group, *, store: GroupStore, fleet: Fleet, concurrency: int
    ) -> Rollout:
        """A rollout that a server stopped or was interrupted in, from its file, to resume or
        abort. Resumed, it lists every tenant again but those it names as migrated (the first
        MAX_TENANTS_KEPT: any others count as `current`)."""
        kept = saved["options"]
        options = RolloutOptions(
            dry_run=bool(kept.get("dry_run")),
            canary=kept.get("canary"),
            max_failures=kept.get("max_failures"),
            concurrency=kept.get("concurrency"),
        )
        rollout = cls(saved["id"], group, options, store=store, fleet=fleet)
        rollout.workers = options.concurrency or concurrency
        rollout.state, rollout.reason = saved["state"], saved.get("reason")
        rollout.target, rollout.template = saved.get("target"), dict(saved.get("template", {}))
        rollout.counts.update({k: int(saved.get(k, 0)) for k in rollout.counts})
        rollout.failures = list(saved.get("failures", []))
        rollout.migrated_tenants = list(saved.get("migrated_tenants", []))
        rollout._skip = set(rollout.migrated_tenants)
        rollout.plans.update({p["sql"]: int(p["tenants"]) for p in saved.get("plans", [])})
        rollout.resumed = int(saved.get("resumed", 0))
        rollout.started_at = parse_time(saved["started_at"])
        finished = saved.get("finished_at")
        rollout.finished_at = parse_time(finished) if finished else None
        rollout._earlier = float(saved.get("elapsed_s", 0.0))
        rollout._stopped_clock = rollout._clock
        return rollout

    # -- control -------------------------------------------------------------------------------

    def start(self) -> None:
        self._save()
        self._thread.start()

    def stop(self, reason: str = "stopped by the operator") -> None:
        """Ask the workers to stop after the tenants they are on. Idempotent."""
        with self._lock:
            if not self._stop.is_set() and not self._releasing:
                self.reason = reason
                self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        if not self._thread.is_alive() and self._thread.ident is None:
            return True  # restored from its file, not started
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def resume(self, max_failures: int | None = None, concurrency: int | None = None) -> None:
        """Go on where it stopped: the tenants not handled yet, then those that failed (and a
        canary's unused turns) again; a canary becomes a full rollout. `max_failures` and
        `concurrency` replace the rollout's own. Raises RolloutFinished unless it is stopped
        or interrupted. The caller has waited for its thread."""
        with self._lock:
            if self.state not in RESUMABLE:
                raise RolloutFinished(
                    f"rollout {self.id} of group {self.group.name!r} is {self.state}: "
                    "only a stopped or interrupted rollout can be resumed"
                )
            changes: dict[str, Any] = {"canary": None}
            if max_failures is not None:
                changes["max_failures"] = max_failures
            if concurrency is not None:
                changes["concurrency"] = concurrency
                self.workers = concurrency
            self.options = replace(self.options, **changes)
            if self._queue is None:  # restored from its file: every tenant is listed again
                self.counts = {**dict.fromkeys(self.counts, 0), "migrated": len(self._skip)}
            else:
                self._queue.extendleft(reversed(self._retry))
            self.counts["failed"], self._retry, self.failures = 0, [], []
            self.state, self.reason, self.finished_at = RUNNING, None, None
            self.resumed += 1
            self._canary_left = None
            self._stop.clear()
            self._earlier += self._elapsed_locked()
            self._clock, self._stopped_clock = time.monotonic(), None
            self._thread = self._new_thread()
        self.start()

    def abort(self) -> None:
        """End it for good, releasing nothing: a running one stops after the tenants its
        workers are on. Raises RolloutFinished if it already ended."""
        with self._lock:
            if self.state not in (RUNNING, *RESUMABLE) or self._releasing or self._aborting:
                state = COMPLETED if self._releasing else self.state
                raise RolloutFinished(
                    f"rollout {self.id} of group {self.group.name!r} is {state}: nothing to abort"
                )
            self._aborting = True
            self.reason = "aborted by the operator"
            self._stop.set()
            running = self.state == RUNNING
        if running:
            self.wait()
        else:
            self._finish(ABORTED)

    # -- the run -------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            migrations = self._template_first()
            if migrations is None:
                return
            if self._queue is None:
                self._queue = collections.deque(t for t in self._tenant_ids() if t not in self._skip)
                self.counts["total"] = len(self._queue) + len(self._skip)
            workers = [
                threading.Thread(target=self._work, args=(migrations,), name=f"rollout-{self.group.name}-{i}")
                for i in range(max(1, min(self.workers, len(self._queue))))
            ]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            with self._lock:
                stopped, aborting = self._stop.is_set(), self._aborting
                self._releasing = not stopped
            if stopped:
                self._finish(ABORTED if aborting else STOPPED)
            elif self.options.dry_run or self.options.canary is not None or not self.releases:
                self._finish(COMPLETED)
            else:
                self._release(migrations)
        except Exception as exc:
            log.exception("rollout %s of group %s crashed", self.id, self.group.name)
            self.reason = f"internal error: {exc}"
            self._finish(FAILED)

    def _template_first(self) -> list[Migration] | None:
        """The migrations it rolls out, tried on (a copy of) the template; None if that failed."""
        try:
            migrations = self._migrations
            if migrations is None:
                migrations = self._migrations = self._registered()
            self.target = migrations[-1].name if migrations else None
            done = self.store.release(self.group.name, dry_run=True, upto=len(migrations))
        except SqlfleetError as exc:
            self.template = {"applied": [], "error": exc.message}
            self.reason = f"the template failed: {exc.message}"
            self._finish(FAILED)
            return None
        self.template = {"applied": done, "tried_only": True}
        return migrations

    def _registered(self) -> list[Migration]:
        """The group's migrations; for a rollout restored from its file, up to the one it
        targeted (those registered since wait for the next rollout)."""
        migrations = self.group.state(fresh=True).migrations
        if self.target is None:
            return migrations
        names = [m.name for m in migrations]
        if self.target not in names:
            raise InvalidMigration(
                f"{self.target}, the last migration of this rollout, is no longer registered"
            )
        return migrations[: names.index(self.target) + 1]

    def _release(self, migrations: list[Migration]) -> None:
        """Every tenant had its turn: migrate the template, so new tenants start there and
        catch-up leads every tenant still behind there."""
        try:
            done = self.store.release(self.group.name, upto=len(migrations))
        except SqlfleetError as exc:
            self.reason = f"releasing the template failed: {exc.message}"
            self._finish(FAILED)
            return
        self.template = {"applied": done or self.template.get("applied", []), "tried_only": False}
        self._finish(COMPLETED)

    def _tenant_ids(self) -> Iterator[str]:
        after: str | None = None
        while True:
            rows = self.fleet.list_tenants(after=after, limit=_PAGE)
            for row in rows:
                mine = self.wanted is None or self.wanted(row.id)
                if row.group == self.group.name and row.state == TenantState.ACTIVE and mine:
                    yield row.id
            if len(rows) < _PAGE:
                return
            after = rows[-1].id

    def _work(self, migrations: list[Migration]) -> None:
        assert self._queue is not None
        while not self._stop.is_set():
            try:
                tenant = self._queue.popleft()
            except IndexError:
                return
            outcome, error = self._one(tenant, migrations)
            self._count(tenant, outcome, error)

    def _one(self, tenant: str, migrations: list[Migration]) -> tuple[str, SqlfleetError | None]:
        if self.wanted is not None and not self.wanted(tenant):
            return "gone", None  # moved to another node meanwhile: its part handles it
        outcome, error = self._attempts(tenant, migrations)
        if error is not None and self.wanted is not None and not self.wanted(tenant):
            return "gone", None  # it moved away while being migrated
        return outcome, error

    def _attempts(self, tenant: str, migrations: list[Migration]) -> tuple[str, SqlfleetError | None]:
        for attempt in range(BUSY_RETRIES + 1):
            try:
                return self._migrate(tenant, migrations), None
            except TenantNotFound:
                return "gone", None
            except TenantBusy as exc:
                if attempt == BUSY_RETRIES:
                    return "failed", exc
                time.sleep(0.05 * 2**attempt)
            except SqlfleetError as exc:
                return "failed", exc
            except apsw.Error as exc:
                return "failed", SqlfleetError(f"tenant {tenant}: {exc}")
            except Exception as exc:  # a bug must cost one tenant, not the worker
                log.exception("rollout %s: tenant %s", self.id, tenant)
                return "failed", SqlfleetError(f"tenant {tenant}: internal error: {exc!r}")
        raise AssertionError("unreachable")

    def _migrate(self, tenant: str, migrations: list[Migration]) -> str:
        # passing: a tenant the rollout opens closes right after, so a rollout does not flush
        # the pool of the tenants live traffic keeps open
        lease = self.fleet.lease(tenant, preempt="a schema migration is due", passing=True)
        with catch_up.suppressed(), lease as handle:
            assert handle.conn is not None and handle.sandbox is not None
            session = SchemaSession(handle.conn, handle.sandbox, self.store.timeout)
            history = applied(session)
            if not pending(history, migrations, f"tenant {tenant}"):
                return EARLIER if self._migrated_since(history, migrations) else "current"
            if not self._take_canary_slot():
                return "skipped"
            outcome = apply(
                session, migrations, where=f"tenant {tenant}", dry_run=self.options.dry_run, history=history
            )
        if outcome.plans:
            with self._lock:
                for plan in outcome.plans.values():
                    text = plan.render()
                    if text in self.plans or len(self.plans) < MAX_PLANS_KEPT:
                        self.plans[text] += 1
        return "migrated"

    def _migrated_since(self, history: list[Applied], migrations: list[Migration]) -> bool:
        if self.since is None or not migrations:
            return False
        target = migrations[-1].name
        record = next((a for a in history if a.name == target), None)
        if record is None:
            return False
        try:
            return parse_time(record.applied_at) >= self.since
        except SqlfleetError:
            return False  # a record written by hand: not this rollout's

    def _take_canary_slot(self) -> bool:
        with self._lock:
            if self._canary_left is None:
                return True
            if self._canary_left <= 0:
                return False
            self._canary_left -= 1
            if self._canary_left == 0:
                self.reason = f"canary of {self.options.canary} tenants done"
                self._stop.set()
            return True

    def _count(self, tenant: str, outcome: str, error: SqlfleetError | None) -> None:
        if outcome == "skipped":  # a canary's unused turn: the tenant stays as it was
            with self._lock:
                self._retry.append(tenant)
            return
        if outcome == EARLIER:  # counted (and in the metric) when it was migrated
            outcome = "migrated"
        else:
            label = _DRY_RUN_OUTCOMES.get(outcome, outcome) if self.options.dry_run else outcome
            ROLLOUT_TENANTS.labels(label).inc()
        with self._lock:
            self.counts[outcome] += 1
            if (
                outcome == "migrated"
                and not self.options.dry_run
                and len(self.migrated_tenants) < MAX_TENANTS_KEPT
            ):
                self.migrated_tenants.append(tenant)
            if error is not None:
                self._retry.append(tenant)
                if len(self.failures) < MAX_FAILURES_KEPT:
                    self.failures.append(
                        {"tenant": tenant, "code": error.code, "error": error.public().message}
                    )
                limit = self.options.max_failures
                if limit is not None and self.counts["failed"] >= limit and not self._stop.is_set():
                    self.reason = f"stopped after {self.counts['failed']} failures (max_failures {limit})"
                    self._stop.set()

    def _finish(self, state: str) -> None:
        with self._lock:
            self.finished_at = time.time()
            self._stopped_clock = time.monotonic()
            self.state = state
        self._save()
        kind = "dry run" if self.options.dry_run else "rollout"
        log.info("%s %s of group %s %s: %s", kind, self.id, self.group.name, state, self.counts)

    # -- reporting -----------------------------------------------------------------------------

    def _elapsed_locked(self) -> float:
        end = time.monotonic() if self._stopped_clock is None else self._stopped_clock
        return end - self._clock

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            counts = dict(self.counts)
            done = counts["migrated"] + counts["current"] + counts["gone"]
            handled = done + counts["failed"]
            remaining = max(0, counts["total"] - handled)
            elapsed = max(1e-9, self._earlier + self._elapsed_locked())
            rate = handled / elapsed
            return {
                "id": self.id,
                "group": self.group.name,
                "state": self.state,
                "reason": self.reason,
                "dry_run": self.options.dry_run,
                "options": asdict(self.options),
                "target": self.target,
                "template": dict(self.template),
                **counts,
                "done": done,
                "remaining": remaining,
                "resumed": self.resumed,
                "elapsed_s": round(elapsed, 3),
                "rate_per_s": round(rate, 1),
                "eta_s": round(remaining / rate, 1) if rate > 0 and self.state == RUNNING else None,
                "started_at": format_time(self.started_at),
                "finished_at": format_time(self.finished_at) if self.finished_at else None,
                "failures": list(self.failures),
                "migrated_tenants": list(self.migrated_tenants),
                "plans": [{"sql": sql, "tenants": n} for sql, n in self.plans.most_common()],
            }

    def _save(self) -> None:
        path = self.group.rollouts_dir / f"{self.id}.json"
        write_durably(path, json.dumps(self.snapshot(), indent=1).encode(), mode=0o644)
        self.store.note_changed(self.group.name)  # rollout history goes into the fleet metadata
