"""Fleet-wide rollouts: control through any node, a part on each (see ops.fleetwork)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, replace
from typing import Any

from cluster.agent import Agent
from cluster.errors import ClusterError
from cluster.fleetwork import Record, RecordConflict
from cluster.keys import Keyspace
from cluster.slots import SLOTS
from ops.fleet_groups import FleetGroups, dump
from ops.rollout_status import Holdings, decode_slots, encode_slots, fingerprint, merge
from schema_sync.errors import GroupNotFound, RolloutConflict, RolloutFinished, RolloutNotFound
from schema_sync.rollout import COMPLETED, FAILED, RUNNING, STOPPED, Rollout, RolloutOptions
from schema_sync.rollouts import Rollouts, stopping
from tenants.errors import SqlfleetError
from tenants.fleet import Fleet

log = logging.getLogger(__name__)

POLL = 0.2  # seconds between the runner's looks (a change wakes it sooner)
PUBLISH_EVERY = 0.5  # seconds between progress writes of a running part
ABORT_WAIT = 30.0
# restore_handed_over(slots, stop) (ops.node.ClusterNode): restore the tenants handed over with
# `slots` that this node lacks, until `stop` is set
Adopt = Callable[[Collection[int], threading.Event], bool]
MAX_KEPT = 50  # failures and migrated tenants per part in etcd
_DETAIL = ("failures", "plans", "migrated_tenants")  # left out of listings


@dataclass
class _Part:
    """This node's run of one rollout."""

    rollout: Rollout
    run: int  # the spec's `resumed` it ran for
    fingerprint: str  # of the slots it covers
    mask: int  # which (a bitmask)
    revision: int  # the newest fencing token when it began: a newer part's slots count over it
    incarnation: str  # of this node when it began
    stop_asked: bool = False
    published: float = 0.0
    final_published: bool = False


class FleetRollouts(Rollouts):
    """The rollouts of a cluster (see the module doc): control through any node, a part on
    each. Thread-safe; `start_runner` begins this node's part-taking."""

    def __init__(
        self, store: FleetGroups, fleet: Fleet, concurrency: int, agent: Agent, restore_handed_over: Adopt
    ) -> None:
        super().__init__(store, fleet, concurrency)
        self.groups = store
        self.agent = agent
        self.restore_handed_over = restore_handed_over
        self.keys = store.keys
        self.records = store.records
        self.node_id = agent.node.node_id
        self._specs: dict[str, dict[str, Any]] = {}  # this node's copy (the runner's)
        self._parts: dict[str, _Part] = {}
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._runner = threading.Thread(target=self._run, name="fleet-rollouts", daemon=True)

    def start_runner(self) -> None:
        self.records.follow(self.keys.rollouts, self._changed)
        self._runner.start()

    def close(self, timeout: float = 30.0) -> None:
        self._closing.set()
        self._wake.set()
        if self._runner.is_alive():
            self._runner.join(timeout)
        for rollout_id, part in list(self._parts.items()):
            if part.rollout.state == RUNNING:
                part.stop_asked = True
                part.rollout.stop("the server is shutting down")
            part.rollout.wait(timeout)
            try:
                self._publish(rollout_id, part)
            except SqlfleetError as exc:
                log.info("rollout %s: last progress not written: %s", rollout_id, exc.message)
        self.groups.close()

    # -- control, through any node ----------------------------------------------------------------

    def start_snapshot(self, group_name: str, options: RolloutOptions) -> dict[str, Any]:
        group = self.groups.get(group_name)
        definition, revision = self.groups.definition(group_name)
        if definition is None:
            raise GroupNotFound(f"no group {group_name!r}")
        self.groups.wait_applied(revision)
        current = definition.get("rollout")
        if current is not None:
            found = self._read(current)
            if found is not None and self._merge(*found)["state"] == RUNNING:
                raise RolloutConflict(f"rollout {current} of group {group_name!r} is still running")
        migrations = group.state(fresh=True).migrations
        rollout_id = _new_id()
        workers = self.concurrency if options.concurrency is None else options.concurrency
        spec = {
            "id": rollout_id,
            "group": group_name,
            "upto": len(migrations),
            "target": migrations[-1].name if migrations else None,
            "group_revision": revision,
            "options": asdict(replace(options, concurrency=workers)),
            "canary_shares": _shares(options.canary, sorted(self.agent.routing.nodes())),
            "control": RUNNING,
            "reason": None,
            "resumed": 0,
            "started_at": time.time(),
            "finished_at": None,
        }
        definition["rollout"] = rollout_id
        key = self.keys.rollout(rollout_id)
        self.groups.swap_definition(group_name, definition, revision, {key: (0, dump(spec))})
        return self._merge(spec, {})

    def resume_snapshot(
        self, group_name: str, rollout_id: str, max_failures: int | None, concurrency: int | None
    ) -> dict[str, Any]:
        spec, parts, revision = self._require(group_name, rollout_id)
        merged = self._merge(spec, parts)
        definition, _ = self.groups.definition(group_name)
        newest = None if definition is None else definition.get("rollout")
        if merged["state"] in (COMPLETED, FAILED, "aborted"):  # worded as stop and abort word it
            raise RolloutFinished(
                f"rollout {rollout_id} of group {group_name!r} is {merged['state']}: "
                "only a stopped rollout can be resumed"
            )
        if newest != rollout_id:
            later = f"was superseded by rollout {newest}" if newest else "has ended"
            raise RolloutFinished(f"rollout {rollout_id} of group {group_name!r} {later}")
        if merged["state"] == RUNNING:
            raise RolloutConflict(f"rollout {rollout_id} of group {group_name!r} is still running")
        if merged["state"] != STOPPED:
            raise RolloutFinished(
                f"rollout {rollout_id} of group {group_name!r} is {merged['state']}: "
                "only a stopped rollout can be resumed"
            )
        options = dict(spec["options"], canary=None)
        if max_failures is not None:
            options["max_failures"] = max_failures
        if concurrency is not None:
            options["concurrency"] = concurrency
        spec = {**spec, "options": options, "canary_shares": None, "control": RUNNING, "reason": None}
        spec["resumed"] += 1
        self._swap_spec(rollout_id, spec, revision)
        return self._merge(spec, parts)

    def stop(self, group_name: str, rollout_id: str) -> dict[str, Any]:
        """As on a single server: a stopped one is answered as it is; an ended one (completed,
        failed, aborted) is RolloutFinished."""
        spec, parts, revision = self._require(group_name, rollout_id)
        merged = self._merge(spec, parts)
        if spec["control"] not in (RUNNING, STOPPED) or merged["state"] in (COMPLETED, FAILED):
            raise RolloutFinished(
                f"rollout {rollout_id} of group {group_name!r} is {merged['state']}: nothing to stop"
            )
        if spec["control"] == STOPPED:
            return merged
        spec = {**spec, "control": STOPPED, "reason": "stopped by the operator"}
        self._swap_spec(rollout_id, spec, revision)
        return stopping(self._merge(spec, parts))

    def abort(self, group_name: str, rollout_id: str) -> dict[str, Any]:
        spec, parts, revision = self._require(group_name, rollout_id)
        state = self._merge(spec, parts)["state"]
        if spec["control"] not in (RUNNING, STOPPED) or state == FAILED:
            raise RolloutFinished(
                f"rollout {rollout_id} of group {group_name!r} is {state}: nothing to abort"
            )
        spec = {**spec, "control": "aborted", "reason": "aborted by the operator", "finished_at": time.time()}
        definition, group_revision = self.groups.definition(group_name)
        if definition is not None and definition.get("rollout") == rollout_id:
            definition["rollout"] = None
            also = {self.keys.rollout(rollout_id): (revision, dump(spec))}
            self.groups.swap_definition(group_name, definition, group_revision, also)
        else:
            self._swap_spec(rollout_id, spec, revision)
        deadline = time.monotonic() + ABORT_WAIT  # as on one server: the running parts stop first
        while time.monotonic() < deadline:
            found = self._read(rollout_id)
            # a dead node's last "running" counts as interrupted: nothing to wait for there
            live = [] if found is None else self._merge(*found)["nodes"].values()
            if not any(p["state"] == RUNNING for p in live):
                break
            time.sleep(POLL)
        found = self._read(rollout_id)
        return self._merge(*found) if found is not None else self._merge(spec, parts)

    def status(self, group_name: str, rollout_id: str) -> dict[str, Any]:
        spec, parts, _ = self._require(group_name, rollout_id)
        return self._merge(spec, parts)

    def history(self, group_name: str) -> list[dict[str, Any]]:
        self.groups.get(group_name)
        specs: dict[str, dict[str, Any]] = {}
        parts: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        for key, record in self.records.read_prefix(self.keys.rollouts).items():
            rest = Keyspace.name_in(key, self.keys.rollouts)
            value = json.loads(record.value or b"{}")
            rollout_id, _, node = rest.partition("/progress/")
            if node:
                parts[rollout_id][node] = value
            elif value.get("group") == group_name:
                specs[rollout_id] = value
        merged = [self._merge(specs[i], parts[i]) for i in sorted(specs, reverse=True)]
        return [
            {k: v for k, v in m.items() if k not in ("failures", "plans", "migrated_tenants")} for m in merged
        ]

    def latest(self, group_name: str) -> dict[str, Any] | None:
        history = self.history(group_name)
        return history[0] if history else None

    def _read(self, rollout_id: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]] | None:
        found = self._read_with_revision(rollout_id)
        return None if found is None else (found[0], found[1])

    def _read_with_revision(
        self, rollout_id: str
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]], int] | None:
        key = self.keys.rollout(rollout_id)
        records: dict[bytes, Record] = self.records.read_prefix(key)
        spec = records.get(key)
        if spec is None or spec.value is None:
            return None
        prefix = key + b"/progress/"
        parts = {
            Keyspace.name_in(k, prefix): json.loads(r.value or b"{}")
            for k, r in records.items()
            if k.startswith(prefix)
        }
        return json.loads(spec.value), parts, spec.revision

    def _require(
        self, group_name: str, rollout_id: str
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]], int]:
        self.groups.get(group_name)
        found = None if not rollout_id.replace("-", "").isalnum() else self._read_with_revision(rollout_id)
        if found is None or found[0].get("group") != group_name:
            raise RolloutNotFound(f"no rollout {rollout_id!r} of group {group_name!r}")
        return found

    def _swap_spec(self, rollout_id: str, spec: dict[str, Any], revision: int) -> int:
        key = self.keys.rollout(rollout_id)
        try:
            return self.records.swap({key: revision}, {key: dump(spec)})
        except RecordConflict:
            raise RolloutConflict(
                f"rollout {rollout_id} changed meanwhile (through another node): try again"
            ) from None

    # -- the merged view ------------------------------------------------------------------------

    def _holdings(self) -> Holdings:
        """Who owns which slots now, as this node's routing table has it."""
        return Holdings.of(self.agent.routing.table())

    def _owners(self) -> tuple[dict[str, str], int]:
        """node → fingerprint of the slots it owns (with their tokens), and how many slots have
        no owner."""
        held = self._holdings()
        return held.owners, held.unowned

    def _merge(self, spec: dict[str, Any], parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
        held = self._holdings()
        return merge(spec, parts, held.owners, held.unowned, masks=held.masks, incarnations=held.incarnations)

    # -- this node's parts (the runner thread) --------------------------------------------------

    def _changed(self, changes: list[tuple[bytes, bytes | None]], revision: int) -> None:
        # on the cluster loop: keep the specs (progress keys are read when needed), wake the runner
        for key, value in changes:
            rest = Keyspace.name_in(key, self.keys.rollouts)
            if "/" in rest or value is None:
                continue
            self._specs[rest] = json.loads(value)
        self._wake.set()

    def _run(self) -> None:
        while not self._closing.is_set():
            self._wake.wait(POLL)
            self._wake.clear()
            if self._closing.is_set():
                return
            for rollout_id, spec in list(self._specs.items()):
                try:
                    self._tick(rollout_id, spec)
                except SqlfleetError as exc:
                    log.warning("rollout %s: %s", rollout_id, exc.message)
                except Exception:
                    log.exception("rollout %s: the runner failed", rollout_id)

    def _tick(self, rollout_id: str, spec: dict[str, Any]) -> None:
        part = self._parts.get(rollout_id)
        control = spec["control"]
        if part is not None:
            if part.rollout.state == RUNNING:
                if control != RUNNING and not part.stop_asked:
                    part.stop_asked = True
                    part.rollout.stop(spec.get("reason") or "stopped by the operator")
                if time.monotonic() - part.published >= PUBLISH_EVERY:
                    self._publish(rollout_id, part)
                return
            if not part.final_published:
                self._publish(rollout_id, part)
                part.final_published = True
                if (
                    part.rollout.state == STOPPED
                    and not part.stop_asked
                    and control == RUNNING
                    and not spec.get("canary_shares")
                ):
                    self._stop_all(rollout_id, part.rollout.reason)  # max_failures here stops every part
                    return
        if control in (COMPLETED, "aborted"):
            self._specs.pop(rollout_id, None)  # over: nothing more for this node to do
            return
        if control != RUNNING:
            return
        held = self._holdings()
        covers = held.owners.get(self.node_id, fingerprint([]))
        if part is None:
            found = self._read(rollout_id)
            mine = {} if found is None else found[1].get(self.node_id, {})
            if (
                mine.get("run") == spec["resumed"]
                and mine.get("fingerprint") == covers
                and mine.get("state") in (COMPLETED, STOPPED, FAILED)
            ):
                self._finish_if_done(rollout_id)
                return
            before = decode_slots(mine["slots"]) if "slots" in mine else None
            self._begin(rollout_id, spec, held, before)
        elif part.run != spec["resumed"] or (part.fingerprint != covers and part.rollout.state != FAILED):
            self._begin(rollout_id, spec, held, part.mask)
        else:
            self._finish_if_done(rollout_id)

    def _begin(self, rollout_id: str, spec: dict[str, Any], held: Holdings, before: int | None) -> None:
        """Run this node's part over the tenants of the slots it holds (`held`); `before`: the
        slots its previous part covered (None: not known). Tenants it or another node migrated
        in an earlier run of this rollout count as migrated (`since`)."""
        self.groups.wait_applied(int(spec["group_revision"]))
        mask = held.masks.get(self.node_id, 0)
        self._adopt(mask if before is None else mask & ~before)
        kept = spec["options"]
        shares = spec.get("canary_shares")
        options = RolloutOptions(
            dry_run=bool(kept.get("dry_run")),
            canary=None if not shares else int(shares.get(self.node_id, 0)),
            max_failures=kept.get("max_failures"),
            concurrency=kept.get("concurrency") or self.concurrency,
        )
        group = self.groups.get(spec["group"])
        rollout = Rollout(
            rollout_id,
            group,
            options,
            store=self.groups,
            fleet=self.fleet,
            releases=False,
            wanted=self.agent.serves,
            since=float(spec["started_at"]),
        )
        rollout.target = spec["target"]  # the migrations it runs: up to the spec's target
        covers = held.owners.get(self.node_id, fingerprint([]))
        incarnation = held.incarnations.get(self.node_id) or self.agent.node.incarnation or ""
        part = _Part(rollout, spec["resumed"], covers, mask, held.revision, incarnation)
        self._parts[rollout_id] = part
        log.info(
            "rollout %s of group %s: this node's part (turn %d) starts", rollout_id, group.name, part.run
        )
        rollout.start()
        self._publish(rollout_id, part)

    def _adopt(self, gained: int) -> None:
        """Restore the tenants handed to this node with the slots it `gained` (a bitmask) that
        it has not restored yet, before a part lists the tenants it holds: ops.node adopts them
        too, but in the background, and a part that began first would miss them (its totals
        short of the group's, those tenants left to catch up on open)."""
        if gained:
            self.restore_handed_over([s for s in range(SLOTS) if gained >> s & 1], self._closing)

    def _publish(self, rollout_id: str, part: _Part) -> None:
        snap = part.rollout.snapshot()
        progress = {
            **{k: snap[k] for k in ("state", "reason", "total", "migrated", "current", "failed", "gone")},
            "run": part.run,
            "fingerprint": part.fingerprint,
            "slots": encode_slots(part.mask),
            "revision": part.revision,
            "incarnation": part.incarnation,
            "failures": snap["failures"][:MAX_KEPT],
            "migrated_tenants": snap["migrated_tenants"][:MAX_KEPT],
            "plans": snap["plans"][:MAX_KEPT],
            "at": time.time(),
        }
        self.records.put(self.keys.progress(rollout_id, self.node_id), dump(progress))
        part.published = time.monotonic()
        self._wake.set()  # look at the whole again (this may have been the last part)

    def _stop_all(self, rollout_id: str, reason: str | None) -> None:
        found = self._read_with_revision(rollout_id)
        if found is None or found[0]["control"] != RUNNING:
            return
        spec = {**found[0], "control": STOPPED, "reason": f"{self.node_id}: {reason}"}
        try:
            self._swap_spec(rollout_id, spec, found[2])
        except RolloutConflict:
            self._wake.set()

    def _finish_if_done(self, rollout_id: str) -> None:
        """Every part done: release (a full rollout) or end it (a dry run, a canary). Any node
        may; a transaction lets one do it."""
        found = self._read_with_revision(rollout_id)
        if found is None:
            return
        spec, parts, revision = found
        if spec["control"] != RUNNING:
            return
        merged = self._merge(spec, parts)
        options = spec["options"]
        if options.get("dry_run") and merged["state"] == COMPLETED:
            end = {**spec, "control": COMPLETED, "finished_at": time.time()}
        elif spec.get("canary_shares") and merged["state"] == STOPPED:
            end = {**spec, "control": STOPPED, "reason": merged["reason"]}
        elif not options.get("dry_run") and not spec.get("canary_shares") and self._all_done(spec, parts):
            self._release(spec, revision)
            return
        else:
            return
        try:
            self._swap_spec(rollout_id, end, revision)
        except RolloutConflict:
            self._wake.set()

    def _all_done(self, spec: dict[str, Any], parts: dict[str, dict[str, Any]]) -> bool:
        owners, unowned = self._owners()
        return unowned == 0 and all(
            parts.get(n, {}).get("run") == spec["resumed"]
            and parts[n].get("fingerprint") == fp
            and parts[n].get("state") == COMPLETED
            for n, fp in owners.items()
        )

    def _release(self, spec: dict[str, Any], revision: int) -> None:
        name = spec["group"]
        definition, group_revision = self.groups.definition(name)
        if definition is None:
            return
        end = {**spec, "control": COMPLETED, "finished_at": time.time()}
        definition["released"] = max(int(definition.get("released", 0)), int(spec["upto"]))
        if definition.get("rollout") == spec["id"]:
            definition["rollout"] = None
        also = {self.keys.rollout(spec["id"]): (revision, dump(end))}
        try:
            self.groups.swap_definition(name, definition, group_revision, also)
        except (RecordConflict, ClusterError):
            self._wake.set()
            return
        log.info("rollout %s of group %s released fleet-wide (%s)", spec["id"], name, spec["target"])


def _shares(canary: int | None, nodes: list[str]) -> dict[str, int] | None:
    """A canary of `canary` tenants, split as evenly as can be over `nodes` (the first get one
    more)."""
    if canary is None:
        return None
    if not nodes:
        return {}
    each, extra = divmod(canary, len(nodes))
    return {node: each + (1 if i < extra else 0) for i, node in enumerate(nodes)}


def _new_id() -> str:
    """Sortable by start time, as a single server's (schema_sync.rollouts); unique through the
    create-if-absent of its key."""
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"-{int(now * 1_000_000) % 1_000_000:06d}"
