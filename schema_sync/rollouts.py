"""The rollouts of one server: start one per group, resume or abort the group's newest, read
any from its file (schema_sync.rollout runs them; DATA/groups/<name>/rollouts/<id>.json keeps
each one's last snapshot)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from typing import Any

from schema_sync.errors import RolloutConflict, RolloutFinished, RolloutNotFound
from schema_sync.groups import Group, GroupStore
from schema_sync.rollout import INTERRUPTED, RESUMABLE, RUNNING, STOPPING, Rollout, RolloutOptions
from tenants.fleet import Fleet

_DETAIL = ("failures", "plans", "migrated_tenants")  # left out of listings


class Rollouts:
    """The rollouts of one server: at most one running per group. Thread-safe."""

    def __init__(self, store: GroupStore, fleet: Fleet, concurrency: int) -> None:
        self.store = store
        self.fleet = fleet
        self.concurrency = concurrency
        self._lock = threading.Lock()
        self._live: dict[tuple[str, str], Rollout] = {}

    def start(self, group_name: str, options: RolloutOptions) -> Rollout:
        """A new rollout (over a stopped one too: that one can then no longer be resumed).
        Raises GroupNotFound, RolloutConflict (one is running for the group)."""
        group = self.store.get(group_name)
        with self._lock:
            self._refuse_running(group_name)
            rollout_id = _new_id(group)
            workers = self.concurrency if options.concurrency is None else options.concurrency
            options = replace(options, concurrency=workers)  # the snapshot shows what ran
            rollout = Rollout(rollout_id, group, options, store=self.store, fleet=self.fleet)
            self._live[(group_name, rollout_id)] = rollout
            rollout.start()
        return rollout

    def resume(
        self,
        group_name: str,
        rollout_id: str,
        max_failures: int | None = None,
        concurrency: int | None = None,
    ) -> Rollout:
        """Go on with the group's newest rollout, stopped or interrupted (see `Rollout.resume`).
        Raises GroupNotFound, RolloutNotFound, RolloutConflict (one is running),
        RolloutFinished (it ended, or a newer rollout superseded it)."""
        group = self.store.get(group_name)
        with self._lock:
            self._refuse_running(group_name)
            saved = self._status(group, rollout_id)
            newest = _ids(group)[0]
            if saved["state"] not in (RUNNING, *RESUMABLE):  # worded as stop and abort word it
                raise RolloutFinished(
                    f"rollout {rollout_id} of group {group_name!r} is {saved['state']}: "
                    "only a stopped or interrupted rollout can be resumed"
                )
            if newest != rollout_id:
                raise RolloutFinished(
                    f"rollout {rollout_id} of group {group_name!r} was superseded by rollout {newest}"
                )
            rollout = self._live.get((group_name, rollout_id))
            if rollout is None:
                if saved["state"] not in RESUMABLE:
                    raise RolloutFinished(
                        f"rollout {rollout_id} of group {group_name!r} is {saved['state']}: "
                        "only a stopped or interrupted rollout can be resumed"
                    )
                rollout = Rollout.restore(
                    saved, group, store=self.store, fleet=self.fleet, concurrency=self.concurrency
                )
                self._live[(group_name, rollout_id)] = rollout
            rollout.wait()  # its thread saves the final state just after publishing it
            rollout.resume(max_failures, concurrency)
        return rollout

    def abort(self, group_name: str, rollout_id: str) -> dict[str, Any]:
        """End a running, stopped or interrupted rollout for good, releasing nothing; its
        snapshot (`migrated_tenants`: those it migrated, now ahead of the released head).
        Raises GroupNotFound, RolloutNotFound, RolloutFinished (it already ended)."""
        group = self.store.get(group_name)
        with self._lock:
            rollout = self._live.get((group_name, rollout_id))
            if rollout is None:
                saved = self._status(group, rollout_id)
                if saved["state"] not in RESUMABLE:
                    raise RolloutFinished(
                        f"rollout {rollout_id} of group {group_name!r} is {saved['state']}: nothing to abort"
                    )
                rollout = Rollout.restore(
                    saved, group, store=self.store, fleet=self.fleet, concurrency=self.concurrency
                )
                self._live[(group_name, rollout_id)] = rollout
        rollout.abort()
        return rollout.snapshot()

    # -- what the routes call: snapshots (ops.fleetwork's fleet-wide rollouts answer the same) --

    def start_snapshot(self, group_name: str, options: RolloutOptions) -> dict[str, Any]:
        """`start`, answered with the rollout's snapshot."""
        return self.start(group_name, options).snapshot()

    def resume_snapshot(
        self, group_name: str, rollout_id: str, max_failures: int | None, concurrency: int | None
    ) -> dict[str, Any]:
        """`resume`, answered with the rollout's snapshot."""
        return self.resume(group_name, rollout_id, max_failures, concurrency).snapshot()

    def stop(self, group_name: str, rollout_id: str) -> dict[str, Any]:
        """Ask a running rollout to stop (see `Rollout.stop`); its snapshot. A stopped or
        interrupted one is answered as it is. Raises GroupNotFound, RolloutNotFound,
        RolloutFinished (it ended: completed, failed or aborted)."""
        group = self.store.get(group_name)
        with self._lock:
            rollout = self._live.get((group_name, rollout_id))
            saved = rollout.snapshot() if rollout is not None else self._status(group, rollout_id)
        if saved["state"] not in (RUNNING, *RESUMABLE):
            raise RolloutFinished(
                f"rollout {rollout_id} of group {group_name!r} is {saved['state']}: nothing to stop"
            )
        if rollout is None:
            return saved
        rollout.stop()
        return stopping(rollout.snapshot())

    def start_runner(self) -> None:
        """Begin background work, once the server is built (none on a single server)."""

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
            return self._status(group, rollout_id)

    def _status(self, group: Group, rollout_id: str) -> dict[str, Any]:
        # caller holds self._lock
        rollout = self._live.get((group.name, rollout_id))
        if rollout is not None:
            return rollout.snapshot()
        path = group.rollouts_dir / f"{rollout_id}.json"
        if not rollout_id.replace("-", "").isalnum() or not path.exists():
            raise RolloutNotFound(f"no rollout {rollout_id!r} of group {group.name!r}")
        saved: dict[str, Any] = json.loads(path.read_text())
        if saved.get("state") == RUNNING:
            saved["state"] = INTERRUPTED  # its server stopped mid-run: resume or abort it
        return saved

    def history(self, group_name: str) -> list[dict[str, Any]]:
        """Every rollout of the group, newest first (without failures, plans and tenants)."""
        group = self.store.get(group_name)
        with self._lock:
            statuses = [self._status(group, rollout_id) for rollout_id in _ids(group)]
        return [{k: v for k, v in s.items() if k not in _DETAIL} for s in statuses]

    def latest(self, group_name: str) -> dict[str, Any] | None:
        """The group's newest rollout (as in `history`), or None."""
        group = self.store.get(group_name)
        with self._lock:
            ids = _ids(group)
            status = self._status(group, ids[0]) if ids else None
        return None if status is None else {k: v for k, v in status.items() if k not in _DETAIL}

    def close(self, timeout: float = 30.0) -> None:
        """Stop every running rollout and wait for its workers (server shutdown)."""
        with self._lock:
            rollouts = list(self._live.values())
        for rollout in rollouts:
            if rollout.state == RUNNING:
                rollout.stop("the server is shutting down")
        for rollout in rollouts:
            rollout.wait(timeout)

    def _refuse_running(self, group_name: str) -> None:
        # caller holds self._lock
        for (name, rollout_id), rollout in self._live.items():
            if name == group_name and rollout.state == RUNNING:
                raise RolloutConflict(f"rollout {rollout_id} of group {group_name!r} is still running")


def _ids(group: Group) -> list[str]:
    """The group's rollout ids, newest first."""
    return sorted((p.stem for p in group.rollouts_dir.glob("*.json")), reverse=True)


def _new_id(group: Group) -> str:
    """Sortable by start time: UTC seconds, then microseconds (bumped past an id in use)."""
    now = time.time()
    micros = int(now * 1_000_000) % 1_000_000
    while True:
        rollout_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"-{micros:06d}"
        if not (group.rollouts_dir / f"{rollout_id}.json").exists():
            return rollout_id
        micros += 1


def stopping(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The answer to a stop: a rollout asked to stop whose workers are still on their tenants
    is `stopping` there (its status says `running` until they are done, then `stopped`)."""
    if snapshot["state"] == RUNNING and snapshot.get("reason"):
        return {**snapshot, "state": STOPPING}
    return snapshot
