from __future__ import annotations

from cluster.slots import SLOTS, assignment, changes, rendezvous_owner, slot_of


def test_slot_is_redis_clusters_keyslot() -> None:
    # CLUSTER KEYSLOT answers: foo 12182, bar 5061, hello 866
    assert (slot_of("foo"), slot_of("bar"), slot_of("hello")) == (12182, 5061, 866)
    assert all(0 <= slot_of(f"tenant-{i}") < SLOTS for i in range(1000))


def test_rendezvous_owner_does_not_depend_on_order() -> None:
    nodes = ["a", "b", "c", "d"]
    for slot in range(0, SLOTS, 97):
        assert rendezvous_owner(slot, nodes) == rendezvous_owner(slot, reversed(nodes))


def test_assignment_covers_every_slot_evenly() -> None:
    owners = assignment(["a", "b", "c"])
    assert sorted(owners) == list(range(SLOTS))
    counts = [list(owners.values()).count(n) for n in "abc"]
    assert all(abs(c - SLOTS / 3) < SLOTS * 0.05 for c in counts)
    assert assignment([]) == {}


def test_a_join_moves_only_the_joiners_share() -> None:
    before = assignment(["a", "b", "c"])
    after = assignment(["a", "b", "c", "d"])
    moved = changes(before, after)
    assert set(moved.values()) == {"d"}
    assert moved.keys() == {s for s, n in after.items() if n == "d"}
    assert SLOTS / 4 * 0.9 < len(moved) < SLOTS / 4 * 1.1


def test_a_leave_moves_only_the_leavers_share() -> None:
    before = assignment(["a", "b", "c", "d"])
    after = assignment(["a", "b", "d"])
    moved = changes(before, after)
    assert moved.keys() == {s for s, n in before.items() if n == "c"}
    assert "c" not in moved.values()
