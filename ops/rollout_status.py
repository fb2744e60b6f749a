"""A fleet-wide rollout as one (ops.fleet_rollouts): its spec and each node's part merged into
the snapshot a single server's rollout answers with, plus `nodes` and `unowned_slots`.

Each tenant counts once. A part names the slots it covered (`slots`, a bitmask) and the newest
fencing token it had seen when it began (`revision`); where two parts of the same turn covered a
slot, the newer one counts for it, and a part all of whose slots a newer part covered (a dead
node's, its slots taken over and run again by their new owner; a drained node's) no longer
counts at all, on every node and whoever restarts. A part counts as running only while its
node's incarnation that runs it is live: a killed node's last "running" is `interrupted`."""

from __future__ import annotations

import base64
import hashlib
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from schema_sync.rollout import COMPLETED, FAILED, RUNNING, STOPPED
from tenants.rfc3339 import format_time

COUNTS = ("total", "migrated", "current", "failed", "gone")


def fingerprint(slots: list[str]) -> str:
    """Names a set of owned slots, each `slot:token` (in slot order)."""
    return hashlib.sha256(",".join(slots).encode()).hexdigest()[:16]


INTERRUPTED = "interrupted"  # a part's state in `nodes`: its node died (or restarted) running it


class _Route(Protocol):
    @property
    def node(self) -> str: ...
    @property
    def token(self) -> int: ...
    @property
    def incarnation(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Holdings:
    """Who serves which slots now, as one node's routing table has it (live owners only)."""

    owners: dict[str, str]  # node -> fingerprint of the slots it owns, with their tokens
    unowned: int  # slots without a live owner
    masks: dict[str, int]  # node -> bitmask of the slots it owns
    incarnations: dict[str, str]  # owner -> its live incarnation
    revision: int  # the newest fencing token in the table

    @classmethod
    def of(cls, table: Sequence[_Route | None]) -> Holdings:
        owned: dict[str, list[str]] = {}
        masks: dict[str, int] = {}
        incarnations: dict[str, str] = {}
        unowned = revision = 0
        for slot, route in enumerate(table):
            if route is None:
                unowned += 1
                continue
            owned.setdefault(route.node, []).append(f"{slot}:{route.token}")
            masks[route.node] = masks.get(route.node, 0) | (1 << slot)
            incarnations[route.node] = route.incarnation
            revision = max(revision, route.token)
        owners = {node: fingerprint(slots) for node, slots in owned.items()}
        return cls(owners, unowned, masks, incarnations, revision)


def encode_slots(mask: int) -> str:
    """A part's `slots`: the bitmask, zlib-compressed, base64 (a few KB at most)."""
    return base64.b64encode(zlib.compress(mask.to_bytes((mask.bit_length() + 7) // 8, "little"))).decode()


def decode_slots(text: str) -> int:
    return int.from_bytes(zlib.decompress(base64.b64decode(text)), "little")


def counting(
    parts: Mapping[str, dict[str, Any]], masks: Mapping[str, int] | None
) -> dict[str, dict[str, Any]]:
    """The parts that count: newest first (by `revision`), a part counts unless newer parts
    covered every slot it did (or it covered none and its node owns none now). Parts without
    `slots` (written before they had it) always count."""
    kept: dict[str, dict[str, Any]] = {}
    claimed = 0
    newest_first = sorted(parts.items(), key=lambda item: (-int(item[1].get("revision", 0)), item[0]))
    for node, part in newest_first:
        if "slots" not in part:
            kept[node] = part
            continue
        mask = decode_slots(part["slots"])
        if mask & ~claimed or (not mask and masks is not None and masks.get(node)):
            kept[node] = part
        claimed |= mask
    return {n: kept[n] for n in sorted(kept)}


def merge(
    spec: dict[str, Any],
    parts: dict[str, dict[str, Any]],
    owners: dict[str, str],
    unowned: int,
    *,
    masks: Mapping[str, int] | None = None,
    incarnations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The rollout as one. `owners`: node -> fingerprint of the slots it owns now; `unowned`:
    slots without an owner; `masks`, `incarnations`: as in Holdings (see the module doc).
    Counts are summed over the parts of its current turn (`resumed`) that count (`counting`).
    State: completed or aborted as the spec says; failed if a part failed; stopped once no
    live part runs after a stop; for a dry run (completed) or a canary (stopped) once done;
    else running. Done: every slot owned, and each owner's part finished over exactly the slots
    it owns now."""
    turn = counting({n: p for n, p in parts.items() if p.get("run") == spec["resumed"]}, masks)
    finished = (COMPLETED, STOPPED) if spec.get("canary_shares") else (COMPLETED,)
    done = unowned == 0 and all(
        turn.get(n, {}).get("state") in finished and turn[n].get("fingerprint") == fp
        for n, fp in owners.items()
    )

    def state_of(node: str, part: dict[str, Any]) -> Any:
        state = part.get("state")
        if state != RUNNING:
            return state
        live = node in owners and (
            incarnations is None or "incarnation" not in part or incarnations.get(node) == part["incarnation"]
        )
        return RUNNING if live else INTERRUPTED

    control = spec["control"]
    running = any(state_of(n, p) == RUNNING for n, p in turn.items())
    reason = spec.get("reason")
    if control in (COMPLETED, "aborted"):
        state = control
    elif any(p.get("state") == FAILED for p in turn.values()):
        state = FAILED
        reason = next(p.get("reason") for p in turn.values() if p.get("state") == FAILED)
    elif control == STOPPED:
        state = RUNNING if running else STOPPED
    elif done and spec["options"].get("dry_run"):
        state = COMPLETED
    elif done and spec.get("canary_shares"):
        state, reason = STOPPED, f"canary of {spec['options']['canary']} tenants done"
    else:
        state = RUNNING
    options = spec["options"]
    released = state == COMPLETED and not options.get("dry_run") and not spec.get("canary_shares")
    counts = {k: sum(int(p.get(k, 0)) for p in turn.values()) for k in COUNTS}
    handled = counts["migrated"] + counts["current"] + counts["gone"]
    elapsed = max(1e-9, (spec.get("finished_at") or time.time()) - spec["started_at"])
    remaining = max(0, counts["total"] - handled - counts["failed"])
    rate = (handled + counts["failed"]) / elapsed
    return {
        "id": spec["id"],
        "group": spec["group"],
        "state": state,
        "reason": reason,
        "dry_run": bool(spec["options"].get("dry_run")),
        "options": spec["options"],
        "target": spec["target"],
        "template": {
            "applied": [spec["target"]] if released and spec["target"] else [],
            "tried_only": not released,
        },
        **counts,
        "done": handled,
        "remaining": remaining,
        "resumed": spec["resumed"],
        "elapsed_s": round(elapsed, 3),
        "rate_per_s": round(rate, 1),
        "eta_s": round(remaining / rate, 1) if rate > 0 and state == RUNNING else None,
        "started_at": format_time(spec["started_at"]),
        "finished_at": format_time(spec["finished_at"]) if spec.get("finished_at") else None,
        "failures": [f for p in turn.values() for f in p.get("failures", [])],
        "migrated_tenants": [t for p in turn.values() for t in p.get("migrated_tenants", [])],
        "plans": [plan for p in turn.values() for plan in p.get("plans", [])],
        "unowned_slots": unowned,
        "nodes": {
            n: {
                "state": state_of(n, p),
                "current_slots": owners.get(n) == p.get("fingerprint"),
                **{k: p.get(k, 0) for k in COUNTS},
            }
            for n, p in sorted(turn.items())
        },
    }
