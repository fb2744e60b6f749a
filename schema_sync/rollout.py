"""Fleet rollout: a group's migrations to its template first, then to every tenant of the group.

Tenants are migrated by `concurrency` worker threads, each through the fleet's pool, so a
tenant's requests and its migration take turns on its lock (requests wait, bounded by the
pool's busy timeout). Each tenant is one transaction: a failure rolls it back, is recorded with
its error, and the others go on. Per-tenant progress lives in the tenant (its migrations table),
so a rerun resumes: tenants already done count as `current`.

- dry_run: the template and every tenant are migrated inside a transaction that is rolled back;
  failures are reported, sync plans collected, nothing changes.
- canary N: migrate N tenants that need it, then stop; the template is only tried, not changed,
  so lazy catch-up does not spread the change meanwhile.
- max_failures K: stop once K tenants failed.
State and failures are readable while it runs (`snapshot`) and after (a JSON file per rollout).
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import apsw

from metrics.instruments import ROLLOUT_TENANTS
from schema_sync import catch_up
from schema_sync.errors import RolloutConflict, RolloutNotFound
from schema_sync.groups import Group, GroupStore
from schema_sync.migrations import Migration, applied, apply, pending
from schema_sync.session import SchemaSession
from tenants.errors import SqlfleetError, TenantBusy, TenantNotFound
from tenants.files import write_durably
from tenants.fleet import Fleet
from tenants.rfc3339 import format_time
from tenants.state import TenantState

log = logging.getLogger(__name__)

RUNNING, COMPLETED, STOPPED, FAILED, INTERRUPTED = "running", "completed", "stopped", "failed", "interrupted"
MAX_FAILURES_KEPT = 1000
MAX_PLANS_KEPT = 20
BUSY_RETRIES = 3
_PAGE = 1000


@dataclass(frozen=True)
class RolloutOptions:
    dry_run: bool = False
    canary: int | None = None
    max_failures: int | None = None
    concurrency: int | None = None  # None: the server's `Rollouts.concurrency`


class Rollout:
    """One run over one group. Thread-safe; `snapshot` may be called at any time."""

    def __init__(
        self, rollout_id: str, group: Group, options: RolloutOptions, *, store: GroupStore, fleet: Fleet
    ) -> None:
        self.id, self.group, self.options = rollout_id, group, options
        self.store, self.fleet = store, fleet
        self.workers = options.concurrency or 1  # Rollouts.start fills in the server's default
        self.state = RUNNING
        self.reason: str | None = None
        self.template: dict[str, Any] = {}
        self.counts = {"total": 0, "migrated": 0, "current": 0, "failed": 0, "gone": 0}
        self.failures: list[dict[str, str]] = []
        self.plans: collections.Counter[str] = collections.Counter()
        self.started_at = time.time()
        self.finished_at: float | None = None
        self._clock = time.monotonic()
        self._stopped_clock: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._canary_left = options.canary
        self._queue: collections.deque[str] = collections.deque()
        self._thread = threading.Thread(target=self._run, name=f"rollout-{group.name}", daemon=True)

    # -- control -------------------------------------------------------------------------------

    def start(self) -> None:
        self._save()
        self._thread.start()

    def stop(self, reason: str = "stopped by the operator") -> None:
        """Ask the workers to stop after the tenants they are on. Idempotent."""
        with self._lock:
            if not self._stop.is_set():
                self.reason = reason
                self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the run -------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            migrations = self._template_first()
            if migrations is not None:
                self._queue.extend(self._tenant_ids())
                self.counts["total"] = len(self._queue)
                workers = [
                    threading.Thread(
                        target=self._work, args=(migrations,), name=f"rollout-{self.group.name}-{i}"
                    )
                    for i in range(max(1, min(self.workers, len(self._queue))))
                ]
                for worker in workers:
                    worker.start()
                for worker in workers:
                    worker.join()
                self._finish(STOPPED if self._stop.is_set() else COMPLETED)
        except Exception as exc:
            log.exception("rollout %s of group %s crashed", self.id, self.group.name)
            self.reason = f"internal error: {exc}"
            self._finish(FAILED)

    def _template_first(self) -> list[Migration] | None:
        """Migrate (or, for a dry run or canary, try) the template; None if it failed."""
        try:
            migrations = self.group.state(fresh=True).migrations
            trial = self.options.dry_run or self.options.canary is not None
            done = self.store.release(self.group.name, dry_run=trial, upto=len(migrations))
        except SqlfleetError as exc:
            self.template = {"applied": [], "error": exc.message}
            self.reason = f"the template failed: {exc.message}"
            self._finish(FAILED)
            return None
        self.template = {"applied": done, "tried_only": trial}
        return migrations

    def _tenant_ids(self) -> Iterator[str]:
        after: str | None = None
        while True:
            rows = self.fleet.list_tenants(after=after, limit=_PAGE)
            for row in rows:
                if row.group == self.group.name and row.state == TenantState.ACTIVE:
                    yield row.id
            if len(rows) < _PAGE:
                return
            after = rows[-1].id

    def _work(self, migrations: list[Migration]) -> None:
        while not self._stop.is_set():
            try:
                tenant = self._queue.popleft()
            except IndexError:
                return
            outcome, error = self._one(tenant, migrations)
            self._count(tenant, outcome, error)

    def _one(self, tenant: str, migrations: list[Migration]) -> tuple[str, SqlfleetError | None]:
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
        with catch_up.suppressed(), self.fleet.lease(tenant, preempt="a schema migration is due") as handle:
            assert handle.conn is not None and handle.sandbox is not None
            session = SchemaSession(handle.conn, handle.sandbox, self.store.timeout)
            history = applied(session)
            if not pending(history, migrations, f"tenant {tenant}"):
                return "current"
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
        if outcome == "skipped":
            return  # a canary's unused turn: the tenant stays as it was, for the next run
        ROLLOUT_TENANTS.labels(outcome).inc()
        with self._lock:
            self.counts[outcome] += 1
            if error is not None:
                if len(self.failures) < MAX_FAILURES_KEPT:
                    self.failures.append({"tenant": tenant, "code": error.code, "error": error.message})
                limit = self.options.max_failures
                if limit is not None and self.counts["failed"] >= limit and not self._stop.is_set():
                    self.reason = f"stopped after {self.counts['failed']} failures (max_failures {limit})"
                    self._stop.set()

    def _finish(self, state: str) -> None:
        with self._lock:
            self.state = state
            self.finished_at = time.time()
            self._stopped_clock = time.monotonic()
        self._save()
        log.info("rollout %s of group %s %s: %s", self.id, self.group.name, state, self.counts)

    # -- reporting -----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            counts = dict(self.counts)
            done = counts["migrated"] + counts["current"] + counts["gone"]
            handled = done + counts["failed"]
            remaining = max(0, counts["total"] - handled)
            end = time.monotonic() if self._stopped_clock is None else self._stopped_clock
            elapsed = max(1e-9, end - self._clock)
            rate = handled / elapsed
            return {
                "id": self.id,
                "group": self.group.name,
                "state": self.state,
                "reason": self.reason,
                "options": asdict(self.options),
                "template": dict(self.template),
                **counts,
                "done": done,
                "remaining": remaining,
                "elapsed_s": round(elapsed, 3),
                "rate_per_s": round(rate, 1),
                "eta_s": round(remaining / rate, 1) if rate > 0 and self.state == RUNNING else None,
                "started_at": format_time(self.started_at),
                "finished_at": format_time(self.finished_at) if self.finished_at else None,
                "failures": list(self.failures),
                "plans": [{"sql": sql, "tenants": n} for sql, n in self.plans.most_common()],
            }

    def _save(self) -> None:
        path = self.group.rollouts_dir / f"{self.id}.json"
        write_durably(path, json.dumps(self.snapshot(), indent=1).encode(), mode=0o644)
        self.store.note_changed(self.group.name)  # rollout history goes into the fleet metadata


class Rollouts:
    """The rollouts of one server: at most one running per group. Thread-safe."""

    def __init__(self, store: GroupStore, fleet: Fleet, concurrency: int) -> None:
        self.store = store
        self.fleet = fleet
        self.concurrency = concurrency
        self._lock = threading.Lock()
        self._live: dict[tuple[str, str], Rollout] = {}

    def start(self, group_name: str, options: RolloutOptions) -> Rollout:
        """Raises GroupNotFound, RolloutConflict (one is running for the group)."""
        group = self.store.get(group_name)
        with self._lock:
            for (name, rollout_id), rollout in self._live.items():
                if name == group_name and rollout.state == RUNNING:
                    raise RolloutConflict(f"rollout {rollout_id} of group {group_name!r} is still running")
            rollout_id = _new_id(group)
            workers = self.concurrency if options.concurrency is None else options.concurrency
            options = replace(options, concurrency=workers)  # the snapshot shows what ran
            rollout = Rollout(rollout_id, group, options, store=self.store, fleet=self.fleet)
            self._live[(group_name, rollout_id)] = rollout
            rollout.start()
        return rollout

    def live(self, group_name: str, rollout_id: str) -> Rollout:
        with self._lock:
            rollout = self._live.get((group_name, rollout_id))
        if rollout is None:
            raise RolloutNotFound(f"no running rollout {rollout_id!r} of group {group_name!r}")
        return rollout

    def status(self, group_name: str, rollout_id: str) -> dict[str, Any]:
        """The rollout's snapshot, live or from its file. Raises GroupNotFound, RolloutNotFound."""
        group = self.store.get(group_name)
        with self._lock:
            rollout = self._live.get((group_name, rollout_id))
        if rollout is not None:
            return rollout.snapshot()
        path = group.rollouts_dir / f"{rollout_id}.json"
        if not rollout_id.replace("-", "").isalnum() or not path.exists():
            raise RolloutNotFound(f"no rollout {rollout_id!r} of group {group_name!r}")
        saved: dict[str, Any] = json.loads(path.read_text())
        if saved.get("state") == RUNNING:
            saved["state"] = INTERRUPTED  # its server stopped mid-run; a new rollout resumes it
        return saved

    def history(self, group_name: str) -> list[dict[str, Any]]:
        """Every rollout of the group, newest first (without failures and plans)."""
        group = self.store.get(group_name)
        ids = sorted((p.stem for p in group.rollouts_dir.glob("*.json")), reverse=True)
        result = []
        for rollout_id in ids:
            status = self.status(group_name, rollout_id)
            result.append({k: v for k, v in status.items() if k not in ("failures", "plans")})
        return result

    def close(self, timeout: float = 30.0) -> None:
        """Stop every running rollout and wait for its workers (server shutdown)."""
        with self._lock:
            rollouts = list(self._live.values())
        for rollout in rollouts:
            rollout.stop("the server is shutting down")
        for rollout in rollouts:
            rollout.wait(timeout)


def _new_id(group: Group) -> str:
    """Sortable by start time: UTC seconds, then microseconds (bumped past an id in use)."""
    now = time.time()
    micros = int(now * 1_000_000) % 1_000_000
    while True:
        rollout_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"-{micros:06d}"
        if not (group.rollouts_dir / f"{rollout_id}.json").exists():
            return rollout_id
        micros += 1
