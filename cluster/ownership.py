"""Slot ownership: claim the slots `assign/` gives this node, release the ones it no longer does.

A claim is one etcd transaction: `owner/<s>` absent and `assign/<s>` naming this node → put
`owner/<s>` = {node, incarnation} on the node's lease. Its commit revision, which is the key's
create_revision, is the slot's fencing token: it only grows from one owner to the next, and every
node sees it in its routing table. Claims go 64 slots to a transaction (128 compares, etcd's
limit); when a batch fails, its failure branch tells which slots were taken or assigned elsewhere
meanwhile, and the rest are claimed again.

A claim needs `assign/<s>` in its claimable form: a planned move is pending (cluster.keys) until
its giver hands the slot over. A release first stops serving the slots, then lets the server
drain them (`before_release`, part of a planned move: with no request served meanwhile, what it
ships is final), then deletes `owner/<s>` guarded by its token (a release never deletes another
owner's key) and, in the same transaction, makes the pending move claimable. A drain that fails
puts the slots back (served again) and the release is tried again later.

A claim whose reply is lost after etcd committed it (the call timed out on a busy etcd) is
found by the watch: an owner key with this lease's value that the node did not know it held
is adopted (then served, or released if no longer assigned here), never left unclaimable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType

from cluster.errors import ClusterError
from cluster.keys import decode_move, encode_assign, encode_owner
from cluster.kv import Compare, Delete, Get, KeyValue, Lease, Op, Put
from cluster.membership import Node
from cluster.mirror import PrefixMirror

log = logging.getLogger(__name__)

CLAIM_BATCH = 64  # 2 compares per slot: 128, etcd's default --max-txn-ops
CLAIMS_IN_FLIGHT = 4
# Seconds new claims may take to show in `owned()` (a copy per claim would be quadratic in a
# claim of thousands of slots); slots that stop being served show at once.
PUBLISH_DELAY = 0.005


class Ownership:
    """The slots this node owns and their tokens. `owns`, `token` and `owned` are safe from any
    thread; everything else runs on the node's cluster loop.

    `before_release(slots)` runs in a worker thread before slots this node owns are released
    (the planned-move drain: stop writes, ship, close); it returns when they may go."""

    def __init__(
        self,
        node: Node,
        *,
        batch: int = CLAIM_BATCH,
        before_release: Callable[[Mapping[int, int]], None] | None = None,
    ) -> None:
        if not 1 <= batch <= CLAIM_BATCH:
            raise ValueError(f"batch must be 1..{CLAIM_BATCH}")
        self.node = node
        self.keys = node.keys
        self.batch = batch
        self._before_release = before_release
        self._me = encode_assign(node.node_id)
        self._owned: dict[int, int] = {}  # slot → token, as this loop knows it
        self._releasing: dict[int, int] = {}  # slot → token: released, key not yet deleted
        # slot → token of a key this lease released, until the watch shows it gone: its own
        # events may still come, and must not make it ours again (see `_owner_changed`)
        self._released: dict[int, int] = {}
        self._published: Mapping[int, int] = MappingProxyType({})  # what other threads read
        self._publish: asyncio.Handle | None = None
        self._assigned: set[int] = set()  # slots assign/ gives this node (per the mirror)
        self._taken: set[int] = set()  # slots with an owner key, anyone's (per the mirror)
        self._wake = asyncio.Event()
        self.claim_transactions = 0  # for tests and metrics

    # -- any thread ----------------------------------------------------------------------------

    def owns(self, slot: int, token: int | None = None) -> bool:
        """Whether this node may serve `slot` now (with fencing token `token`, when given)."""
        owned = self._published.get(slot)
        return owned is not None and (token is None or owned == token) and self.node.alive()

    def token(self, slot: int) -> int | None:
        return self._published.get(slot)

    def owned(self) -> Mapping[int, int]:
        """slot → token of every slot claimed and not released (whether or not alive now)."""
        return self._published

    def start(self) -> None:
        self.node.call(self._attach())

    # -- the cluster loop ------------------------------------------------------------------------

    async def _attach(self) -> None:
        assign = self.node.mirror(self.keys.assigns)
        owner = self.node.mirror(self.keys.owners)
        assign.listen(self._assign_changed)
        owner.listen(self._owner_changed)
        self._assign_changed(list(assign.current().items()), assign.revision)
        self._owner_changed(list(owner.current().items()), owner.revision)
        self.node.on_lease_change(self._lease_changed)
        self.node.spawn(self._run(assign, owner), "ownership")

    def _lease_changed(self) -> None:
        # at once, before a new lease can make the node alive again: every key of the old
        # lease is gone (or going) with it
        self._owned = {}
        self._releasing = {}
        self._released = {}
        self._publish_owned(now=True)
        self._wake.set()

    def _assign_changed(self, changed: list[tuple[bytes, KeyValue | None]], revision: int) -> None:
        for key, kv in changed:
            slot = self.keys.slot_in(key, self.keys.assigns)
            if kv is not None and kv.value == self._me:
                self._assigned.add(slot)
            else:
                self._assigned.discard(slot)
        self._wake.set()

    def _owner_changed(self, changed: list[tuple[bytes, KeyValue | None]], revision: int) -> None:
        lost = found = False
        mine = self._owner_value()
        for key, kv in changed:
            slot = self.keys.slot_in(key, self.keys.owners)
            if kv is None:
                self._taken.discard(slot)
            else:
                self._taken.add(slot)
            if kv is None or kv.create_revision > self._released.get(slot, 0):
                self._released.pop(slot, None)  # past the released key: its events are over
            token = self._owned.get(slot)
            # once the mirror is past our claim, it is the truth: a key gone or replaced is not ours
            if token is not None and revision >= token and (kv is None or kv.create_revision != token):
                del self._owned[slot]
                lost = True
            elif token is None and kv is not None and kv.value == mine and self._unknown_claim(slot):
                self._owned[slot] = kv.create_revision
                found = True
        if lost:
            self._publish_owned(now=True)
        elif found:
            self._publish_owned()
        self._wake.set()

    def _owner_value(self) -> bytes | None:
        """The `owner/<s>` value this node's claims write on its current lease (None: no lease)."""
        lease = self.node.lease
        return None if lease is None else encode_owner(self.node.node_id, f"{lease.id:x}")

    def _unknown_claim(self, slot: int) -> bool:
        """Whether an owner key of `slot` with this lease's value, which `_owned` lacks, is a
        claim that committed though its reply was lost (the call gave up), rather than a key
        this node is releasing or released. Ours then: left alone, nobody could claim the slot
        until the lease ran out (the controller's office is recognised the same way)."""
        return slot not in self._releasing and slot not in self._released

    async def _run(self, assign: PrefixMirror, owner: PrefixMirror) -> None:
        await assign.synced.wait()
        await owner.synced.wait()
        pause = 0.05
        while True:
            self._wake.clear()
            lease = self.node.lease
            if lease is not None:
                try:
                    await self._reconcile(lease)
                    pause = 0.05
                except ClusterError as e:
                    log.info("ownership: %s; trying again", e)
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 1.0)
                    continue
            await self._wake.wait()

    async def _reconcile(self, lease: Lease) -> None:
        if self._releasing:
            await self._delete_released()
        release = sorted(self._owned.keys() - self._assigned)
        if release:
            await self._release(release)
        free = sorted(self._assigned - self._owned.keys() - self._taken)
        batches = iter([free[i : i + self.batch] for i in range(0, len(free), self.batch)])

        async def claimer() -> None:  # a few transactions in flight hide etcd's round trips
            for batch in batches:
                if self.node.lease != lease:
                    return
                await self._claim(batch, lease)

        started = time.monotonic()
        results = await asyncio.gather(*(claimer() for _ in range(CLAIMS_IN_FLIGHT)), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        if len(free) >= self.batch:  # a slot or a few are routine; a share of the cluster is news
            log.info("claimed %d slots in %.2f s", len(free), time.monotonic() - started)

    async def _claim(self, slots: list[int], lease: Lease, tries: int = 2) -> None:
        """Claim `slots` in one transaction. When it fails, its failure branch shows each slot's
        owner and assignment as the guards saw them: the slots that were free for us are claimed
        again (one more batch, then one by one if that fails too); the others were taken by
        another node or assigned elsewhere in the meantime, and are left alone."""
        value = encode_owner(self.node.node_id, f"{lease.id:x}")  # as `_owner_value` has it
        owner_keys = [self.keys.owner(s) for s in slots]
        self.claim_transactions += 1
        result = await self.node.etcd.txn(
            [c for s in slots for c in self._claim_guard(s)],
            [Put(key, value, lease.id) for key in owner_keys],
            [Get(key) for key in owner_keys] + [Get(self.keys.assign(s)) for s in slots],
        )
        if result.succeeded:
            self._own(dict.fromkeys(slots, result.revision), lease)
            return
        owners, assigns = result.gets[: len(slots)], result.gets[len(slots) :]
        still: list[int] = []
        for slot, owner, assign in zip(slots, owners, assigns, strict=True):
            if owner and owner[0].value == value:  # ours: an earlier attempt whose reply was lost
                self._own({slot: owner[0].create_revision}, lease)
            elif not owner and assign and assign[0].value == self._me:
                still.append(slot)
        if not still or len(slots) == 1:
            return
        if tries > 1:
            await self._claim(still, lease, tries - 1)
        else:
            for slot in still:
                await self._claim([slot], lease, 1)

    def _claim_guard(self, slot: int) -> list[Compare]:
        return [Compare.absent(self.keys.owner(slot)), Compare.value_is(self.keys.assign(slot), self._me)]

    async def _release(self, slots: list[int]) -> None:
        tokens = {slot: self._owned.pop(slot) for slot in slots if slot in self._owned}
        self._releasing.update(tokens)
        self._publish_owned(now=True)  # stop serving them first: the drain then ships a final state
        if self._before_release is not None:
            try:
                await asyncio.to_thread(self._before_release, dict(tokens))
            except Exception as exc:
                for slot, token in tokens.items():  # not drained: keep them, serve them again
                    self._releasing.pop(slot, None)
                    self._owned[slot] = token
                self._publish_owned(now=True)
                raise ClusterError(f"draining {len(tokens)} slots failed: {exc}") from exc
        await self._delete_released()

    async def _delete_released(self) -> None:
        """Delete the owner keys of released slots (kept in `_releasing` until done, so a
        failure is retried on the next pass rather than leaving a slot nobody can claim)."""
        tokens = dict(self._releasing)
        held = sorted(tokens)
        for i in range(0, len(held), CLAIM_BATCH):
            chunk = held[i : i + CLAIM_BATCH]
            if not await self._delete_owned(chunk, tokens):
                # some key changed meanwhile (not ours any more, or its move rewritten): one by one
                for slot in chunk:
                    await self._delete_one(slot, tokens[slot])
            for slot in chunk:
                self._releasing.pop(slot, None)
                self._released[slot] = tokens[slot]

    async def _delete_owned(
        self, slots: list[int], tokens: Mapping[int, int], assigns: Mapping[bytes, KeyValue] | None = None
    ) -> bool:
        """Delete the owner keys of `slots` (guarded by their tokens) and make each pending move
        of them claimable by its taker, in one transaction (2 compares and 2 operations a slot
        at most); whether it went through. The taker can claim the slot only then: had this node
        died before, the slot would wait for its takeover instead (cluster.keys). `assigns`: the
        `assign/` keys as read (default: as the watch has them)."""
        if assigns is None:
            assigns = self.node.mirror(self.keys.assigns).current()
        guards = [Compare.created_at(self.keys.owner(s), tokens[s]) for s in slots]
        ops: list[Op] = [Delete(self.keys.owner(s)) for s in slots]
        for slot in slots:
            kv = assigns.get(self.keys.assign(slot))
            node, giver = decode_move(kv.value) if kv is not None else ("", None)
            if kv is not None and giver is not None:
                guards.append(Compare(kv.key, "mod", kv.mod_revision))
                ops.append(Put(kv.key, encode_assign(node)))
        result = await self.node.etcd.txn(guards, ops)
        return result.succeeded

    async def _delete_one(self, slot: int, token: int, tries: int = 5) -> None:
        """`_delete_owned` of one slot, with its assignment read afresh after each failure;
        done when its owner key is not ours any more."""
        assigns = None  # first as the watch has them
        for _ in range(tries):
            if await self._delete_owned([slot], {slot: token}, assigns):
                return
            owner, _ = await self.node.etcd.get(self.keys.owner(slot))
            if owner is None or owner.create_revision != token:
                return  # not ours any more: nothing to delete
            assign, _ = await self.node.etcd.get(self.keys.assign(slot))
            assigns = {} if assign is None else {assign.key: assign}
        raise ClusterError(f"slot {slot}: its assignment kept changing while it was being released")

    def _own(self, tokens: dict[int, int], lease: Lease) -> None:
        if self.node.lease != lease:  # claimed on a lease lost while the claim was in flight
            return
        self._owned.update(tokens)
        self._publish_owned()

    def _publish_owned(self, now: bool = False) -> None:
        """Let other threads see `_owned`: within PUBLISH_DELAY, or at once (slots that stop
        being served must stop at once; new ones may wait)."""
        if now:
            if self._publish is not None:
                self._publish.cancel()
            self._do_publish()
        elif self._publish is None:
            self._publish = asyncio.get_running_loop().call_later(PUBLISH_DELAY, self._do_publish)

    def _do_publish(self) -> None:
        self._publish = None
        self._published = MappingProxyType(dict(self._owned))
