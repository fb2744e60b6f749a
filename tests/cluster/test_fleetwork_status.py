"""A fleet-wide rollout's merged status (ops.rollout_status.merge): when it is done, and who
counts."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ops.rollout_status import Holdings, decode_slots, encode_slots, fingerprint, merge

A, B = fingerprint(["1:10"]), fingerprint(["2:11"])


def _spec(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "id": "20260101T000000-000001",
        "group": "shop",
        "target": "0001_x",
        "options": {"dry_run": False, "canary": None, "max_failures": None, "concurrency": 2},
        "canary_shares": None,
        "control": "running",
        "reason": None,
        "resumed": 0,
        "started_at": time.time() - 1,
        "finished_at": None,
    }
    return {**spec, **changes}


def _part(state: str, covers: str, run: int = 0, migrated: int = 1, total: int = 2) -> dict[str, Any]:
    return {
        "state": state,
        "fingerprint": covers,
        "run": run,
        "migrated": migrated,
        "current": 1,
        "total": total,
    }


def test_counts_sum_over_the_nodes_and_each_part_is_shown() -> None:
    snap = merge(_spec(), {"n1": _part("running", A), "n2": _part("completed", B)}, {"n1": A, "n2": B}, 0)
    assert snap["state"] == "running"
    assert (snap["total"], snap["migrated"], snap["current"], snap["remaining"]) == (4, 2, 2, 0)
    assert snap["nodes"]["n1"]["state"] == "running" and snap["nodes"]["n2"]["current_slots"]


def test_done_only_when_every_owner_covered_exactly_its_slots() -> None:
    dry = _spec(options={"dry_run": True, "canary": None})
    parts = {"n1": _part("completed", A), "n2": _part("completed", B)}
    assert merge(dry, parts, {"n1": A, "n2": B}, 0)["state"] == "completed"
    # n1 gained n2's slots: its old part no longer covers what it owns
    both = fingerprint(["1:10", "2:12"])
    assert merge(dry, parts, {"n1": both}, 0)["state"] == "running"
    # a slot without an owner (a move, a dead node in its grace): not done
    assert merge(dry, parts, {"n1": A, "n2": B}, 1)["state"] == "running"
    # a dead node's stale part stops counting once its slots are owned by another
    stale = {"n1": _part("completed", both), "n2": _part("running", B)}
    assert merge(dry, stale, {"n1": both}, 0)["state"] == "completed"
    # parts of an earlier turn (before a resume) do not count
    assert merge({**dry, "resumed": 1}, parts, {"n1": A, "n2": B}, 0)["state"] == "running"


def test_failed_stopped_canary_and_the_spec_s_own_end() -> None:
    owners = {"n1": A, "n2": B}
    failed = {"n1": {**_part("failed", A), "reason": "the template failed: x"}, "n2": _part("completed", B)}
    snap = merge(_spec(), failed, owners, 0)
    assert (snap["state"], snap["reason"]) == ("failed", "the template failed: x")
    stopping = _spec(control="stopped", reason="stopped by the operator")
    assert (
        merge(stopping, {"n1": _part("running", A), "n2": _part("stopped", B)}, owners, 0)["state"]
        == "running"
    )
    assert (
        merge(stopping, {"n1": _part("stopped", A), "n2": _part("stopped", B)}, owners, 0)["state"]
        == "stopped"
    )
    canary = _spec(options={"dry_run": False, "canary": 2}, canary_shares={"n1": 1, "n2": 1})
    snap = merge(canary, {"n1": _part("stopped", A), "n2": _part("completed", B)}, owners, 0)
    assert (snap["state"], snap["reason"]) == ("stopped", "canary of 2 tenants done")
    done = merge(_spec(control="completed", finished_at=time.time()), {}, owners, 0)
    assert done["state"] == "completed" and done["template"] == {"applied": ["0001_x"], "tried_only": False}
    assert merge(_spec(control="aborted"), {}, owners, 0)["state"] == "aborted"


def _covering(part: dict[str, Any], slots: int, revision: int, incarnation: str = "i1") -> dict[str, Any]:
    return {
        **part,
        "current": 0,
        "slots": encode_slots(slots),
        "revision": revision,
        "incarnation": incarnation,
    }


def test_a_dead_node_s_part_is_replaced_by_the_new_owner_s_and_each_tenant_counts_once() -> None:
    """n2 killed mid-rollout (5 of its 15 tenants done), its slots (0b1100) taken over by n1,
    which ran again over all 36 tenants; then n2 restarted and got slots back."""
    spec = _spec()
    n1_old = _covering(_part("completed", A, migrated=21, total=21), 0b0011, 10)
    n2_dead = _covering(_part("running", B, migrated=5, total=15), 0b1100, 11)
    # in its grace: its slots have no live owner; its part counts, but runs no more
    snap = merge(
        spec, {"n1": n1_old, "n2": n2_dead}, {"n1": A}, 2, masks={"n1": 0b0011}, incarnations={"n1": "i1"}
    )
    assert (snap["state"], snap["total"], snap["nodes"]["n2"]["state"]) == ("running", 36, "interrupted")
    # taken over: n1 owns every slot and runs again over them (the 5 n2 did count as migrated)
    both = fingerprint(["1:10", "2:20"])
    n1_new = _covering(_part("running", both, migrated=30, total=36), 0b1111, 20)
    masks, live = {"n1": 0b1111}, {"n1": "i1"}
    snap = merge(spec, {"n1": n1_new, "n2": n2_dead}, {"n1": both}, 0, masks=masks, incarnations=live)
    assert (snap["total"], snap["migrated"], snap["remaining"], set(snap["nodes"])) == (36, 30, 6, {"n1"})
    n1_done = _covering(_part("completed", both, migrated=36, total=36), 0b1111, 20)
    done = _spec(control="completed")
    snap = merge(done, {"n1": n1_done, "n2": n2_dead}, {"n1": both}, 0, masks=masks, incarnations=live)
    assert (snap["state"], snap["total"], snap["done"], snap["remaining"]) == ("completed", 36, 36, 0)
    # n2 back (a new incarnation, new tokens for the slots it got back): still each tenant once
    back = {"n1": fingerprint(["1:10"]), "n2": fingerprint(["2:30"])}
    masks, live = {"n1": 0b0011, "n2": 0b1100}, {"n1": "i1", "n2": "i2"}
    snap = merge(done, {"n1": n1_done, "n2": n2_dead}, back, 0, masks=masks, incarnations=live)
    assert (snap["total"], snap["done"], snap["remaining"], set(snap["nodes"])) == (36, 36, 0, {"n1"})


def test_a_stopped_rollout_is_not_kept_running_by_a_dead_or_restarted_node_s_part() -> None:
    stopping = _spec(control="stopped", reason="stopped by the operator")
    n1 = _covering(_part("stopped", A), 0b01, 10)
    n2 = _covering(_part("running", B), 0b10, 11, incarnation="old")
    owners = {"n1": A, "n2": fingerprint(["2:12"])}
    snap = merge(
        stopping,
        {"n1": n1, "n2": n2},
        owners,
        0,
        masks={"n1": 0b01, "n2": 0b10},
        incarnations={"n1": "i1", "n2": "new"},
    )
    assert snap["state"] == "stopped" and snap["nodes"]["n2"]["state"] == "interrupted"
    assert snap["total"] == 4  # n2 got its own slots back: its part still counts
    snap = merge(stopping, {"n1": n1, "n2": n2}, {"n1": A}, 1, masks={"n1": 0b01}, incarnations={"n1": "i1"})
    assert snap["state"] == "stopped"


def test_holdings_from_a_routing_table() -> None:
    @dataclass
    class Route:
        node: str
        token: int
        incarnation: str

    held = Holdings.of([Route("n1", 10, "a"), None, Route("n2", 11, "b"), Route("n1", 12, "a")])
    assert held.masks == {"n1": 0b1001, "n2": 0b0100} and held.unowned == 1 and held.revision == 12
    assert held.owners["n1"] == fingerprint(["0:10", "3:12"]) and held.incarnations == {"n1": "a", "n2": "b"}
    assert decode_slots(encode_slots(held.masks["n1"])) == 0b1001 and decode_slots(encode_slots(0)) == 0
