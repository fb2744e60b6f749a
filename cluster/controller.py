"""The controller: one node, elected through etcd, writes `assign/<slot>` for every slot.

Election: `controller` absent → put it on the node's own lease (a controller that loses its lease
loses the office with it); the key's create_revision is the controller's epoch. Every write the
controller makes is a transaction guarded by `create_revision(controller) == epoch`, so a deposed
or paused controller writes nothing, whatever it believes.

It watches `nodes/` and assigns slots to the live nodes by rendezvous hashing, writing only the
`assign/` keys that change, at most 128 to a transaction. A slot another node owns is written as
a move pending that owner's handover (cluster.keys): only the owner's release makes it claimable,
so a taker never claims a slot whose owner died before handing it over. Such a stranded slot is
its giver's again: re-claimed by the giver if it is back, else held for its takeover below. Each
write is guarded by the slot's owner key as the controller saw it (a stale view writes nothing).

Takeover (issue 17). A node that leaves without handing its slots over (its lease ran out) keeps
them for `grace` seconds: a restarted node with its data dir comes back in time, re-claims them
and loses nothing. After that it is taken over (cluster.takeovers: the server's hook fences the
node's incarnations in the replica and writes its handoff manifests), and only once that is done
are its slots written to the others, in transactions that also require `nodes/<node>` to be
absent: a node that registered again meanwhile keeps its slots (it checks whether it was fenced
after registering, so it drops its local copies exactly when they may be stale). Until then its
slots stay its own (unserved), and no other slot goes to it. A takeover that fails is shown
under `takeover/<node>` (overrun or not), and tried again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Collection, Mapping, Sequence

from cluster.errors import ClusterError, ControllerDeposed
from cluster.keys import decode_move, decode_owner, encode_assign
from cluster.kv import Compare, Delete, Get, KeyValue, Lease, Op, Put
from cluster.membership import Node
from cluster.mirror import PrefixMirror
from cluster.slots import assignment, changes
from cluster.takeovers import TAKEOVER_TIMEOUT, TakeOver, Takeovers

__all__ = ["Controller", "TakeOver"]

log = logging.getLogger(__name__)

TXN_OPS = 128  # etcd's default --max-txn-ops
WRITES_IN_FLIGHT = 4
KEPT_INCARNATIONS = 16  # per node, the newest process incarnations the controller saw


class Controller:
    """Campaigns for and, once elected, acts as the cluster's controller. `epoch` (None unless
    this node is the controller) is safe to read from any thread."""

    def __init__(
        self,
        node: Node,
        *,
        grace: float = 0.0,
        take_over: TakeOver | None = None,
        takeover_timeout: float = TAKEOVER_TIMEOUT,
    ) -> None:
        if grace < 0:
            raise ValueError("grace must not be negative")
        self.node = node
        self.keys = node.keys
        self.grace = grace
        self.epoch: int | None = None
        self._departed: dict[str, float] = {}  # node → monotonic time its slots may move
        self._gone_at: dict[str, float] = {}  # node → monotonic time its registration went
        self._incarnations: dict[str, list[str]] = {}  # node → process incarnations seen, newest last
        self._shown: dict[str, tuple[str, bool]] = {}  # what takeover/ holds, as this controller wrote it
        self._wake = asyncio.Event()
        self._takeovers = (
            None
            if take_over is None
            else Takeovers(
                node, take_over, takeover_timeout, lambda n: self._incarnations.get(n, ()), self._wake.set
            )
        )
        self._quiet_since = 0.0  # monotonic time of the last change under nodes/ (or of the start)
        self._unsettled_since: float | None = None  # first change not yet acted on
        self.writes = 0  # assign keys written, for tests and metrics
        self.written_revision = 0  # of the last assign transaction that went through

    @property
    def takeovers(self) -> int:
        """Takeovers done, for tests and metrics."""
        return 0 if self._takeovers is None else self._takeovers.done

    @property
    def overruns(self) -> Mapping[str, int]:
        """node → its takeover attempts abandoned past their timeout."""
        return {} if self._takeovers is None else self._takeovers.overruns

    @property
    def late_returns(self) -> int:
        """Abandoned takeover attempts that returned (ignored)."""
        return 0 if self._takeovers is None else self._takeovers.late_returns

    def is_leader(self) -> bool:
        return self.epoch is not None and self.node.alive()

    def start(self) -> None:
        self.node.call(self._attach())

    async def _attach(self) -> None:
        nodes = self.node.mirror(self.keys.nodes)
        assigns = self.node.mirror(self.keys.assigns)
        owners = self.node.mirror(self.keys.owners)
        office = self.node.mirror(self.keys.controller)
        drains = self.node.mirror(self.keys.drains)
        incarnations = self.node.mirror(self.keys.incarnations)
        nodes.listen(lambda changed, revision: self._nodes_changed(changed))
        incarnations.listen(lambda changed, revision: self._incarnations_seen(changed))
        self._incarnations_seen(list(incarnations.current().items()))
        self._nodes_changed(list(nodes.current().items()))
        drains.listen(lambda changed, revision: self._nodes_changed())
        office.listen(lambda changed, revision: self._wake.set())
        self.node.on_lease_change(self._wake.set)
        self.node.spawn(self._run(nodes, assigns, owners, office, drains, incarnations), "controller")

    def _incarnations_seen(self, changed: Sequence[tuple[bytes, KeyValue | None]]) -> None:
        for key, kv in changed:
            if kv is not None:
                with contextlib.suppress(ValueError):
                    self._remember(self.keys.name_in(key, self.keys.incarnations), json.loads(kv.value))

    def _remember(self, node: str, incarnation: object) -> None:
        if not isinstance(incarnation, str) or not incarnation:
            return
        seen = self._incarnations.setdefault(node, [])
        if incarnation not in seen:
            seen.append(incarnation)
            del seen[:-KEPT_INCARNATIONS]

    def _nodes_changed(self, changed: Sequence[tuple[bytes, KeyValue | None]] = ()) -> None:
        now = time.monotonic()
        for key, kv in changed:
            with contextlib.suppress(ValueError, TypeError, KeyError):
                name = self.keys.name_in(key, self.keys.nodes)
                if kv is None:  # its grace counts from here, not from when the burst settled
                    self._gone_at[name] = now
                    continue
                self._gone_at.pop(name, None)
                self._departed.pop(name, None)
                if self._takeovers is not None:
                    self._takeovers.forget(name)
                record = json.loads(kv.value)
                self._remember(name, record.get("process", record.get("incarnation")))
        self._quiet_since = now
        if self._unsettled_since is None:
            self._unsettled_since = now
        self._wake.set()

    async def _run(
        self,
        nodes: PrefixMirror,
        assigns: PrefixMirror,
        owners: PrefixMirror,
        office: PrefixMirror,
        drains: PrefixMirror,
        incarnations: PrefixMirror,
    ) -> None:
        for mirror in (nodes, assigns, owners, office, drains, incarnations):
            await mirror.synced.wait()
        pause = 0.05
        while True:
            self._wake.clear()
            timeout: float | None = None
            try:
                lease = self.node.lease
                self.epoch = await self._campaign(lease, office) if lease is not None else None
                if self.epoch is not None:
                    timeout = await self._assign(self.epoch, nodes, assigns, owners, drains)
                pause = 0.05
            except ControllerDeposed:
                # our view of the office is behind: look again once the watch has caught up
                self.epoch = None
                timeout = pause
                pause = min(pause * 2, 1.0)
            except ClusterError as e:
                log.info("controller: %s; trying again", e)
                # the transactions that did go through (the others run on after one fails): look
                # again only once the view shows them, or their slots are written twice
                await assigns.wait_revision(self.written_revision)
                timeout = pause
                pause = min(pause * 2, 1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _campaign(self, lease: Lease, office: PrefixMirror) -> int | None:
        """The epoch if this node holds the office (winning it if it is free), else None."""
        held = office.current().get(self.keys.controller)
        if held is not None:
            return held.create_revision if held.lease == lease.id else None
        key = self.keys.controller
        result = await self.node.etcd.txn(
            [Compare.absent(key)], [Put(key, encode_assign(self.node.node_id), lease.id)], [Get(key)]
        )
        if result.succeeded:
            log.info("node %s is the controller (epoch %d)", self.node.node_id, result.revision)
            await office.wait_revision(result.revision)
            return result.revision
        current = result.gets[0][0] if result.gets and result.gets[0] else None
        return current.create_revision if current is not None and current.lease == lease.id else None

    async def _assign(
        self,
        epoch: int,
        nodes: PrefixMirror,
        assigns: PrefixMirror,
        owners: PrefixMirror,
        drains: PrefixMirror,
    ) -> float | None:
        """Write what changed; the seconds until it should look again (membership still
        settling, or a departed node's grace running), None when nothing is pending."""
        now = time.monotonic()
        settle = self.node.config.membership_settle
        if self._unsettled_since is not None:
            # nodes come and go in bursts (a cluster starting, a rolling restart): act once the
            # burst is over, or after 4 settle periods at the latest, not once per node
            quiet_at = self._quiet_since + settle
            if now < quiet_at and now < self._unsettled_since + 4 * settle:
                return min(quiet_at, self._unsettled_since + 4 * settle) - now
            self._unsettled_since = None
        registered = {
            self.keys.name_in(k, self.keys.nodes): kv.create_revision for k, kv in nodes.current().items()
        }
        live = set(registered)
        moves = {
            self.keys.slot_in(k, self.keys.assigns): (*decode_move(kv.value), kv.mod_revision)
            for k, kv in assigns.current().items()
        }
        current = {slot: node for slot, (node, _, _) in moves.items()}
        owned = {self.keys.slot_in(k, self.keys.owners): kv for k, kv in owners.current().items()}
        # a pending move whose giver's owner key went without a handover (its lease ran out, or
        # it restarted since): the slot is the giver's again, like its other slots, re-claimed
        # by it if it is back, else held for its takeover; never claimed by the taker unhanded.
        # (A giver registered since before the move, with no owner key in view, just handed the
        # slot over: its release made the move claimable, which this view has yet to show.)
        stranded = {
            slot: giver
            for slot, (_, giver, written) in moves.items()
            if giver is not None and slot not in owned and registered.get(giver, written + 1) > written
        }
        assigned = set(current.values()) | set(stranded.values())
        for gone in assigned - live:
            self._departed.setdefault(gone, min(now, self._gone_at.get(gone, now)) + self.grace)
        # forget a node once it is back or holds no slot any more
        self._departed = {n: t for n, t in self._departed.items() if n in assigned and n not in live}
        self._gone_at = {n: t for n, t in self._gone_at.items() if n in assigned and n not in live}
        held: dict[str, set[int]] = {n: set() for n in self._departed}
        for slot, owner in [*current.items(), *stranded.items()]:
            if owner in held:
                held[owner].add(slot)
        waiting = {n: t for n, t in self._departed.items() if t > now}
        taken: set[str] = set()
        due: set[str] = set()
        if self._takeovers is not None:  # past its grace, a node keeps its slots until taken over
            self._takeovers.keep(self._departed)
            taken = self._takeovers.taken(held)
            due = self._departed.keys() - waiting.keys() - taken
            self._takeovers.start(due, held)
        holding = waiting.keys() | due
        draining = {self.keys.name_in(k, self.keys.drains) for k in drains.current()}
        # a draining node gets no slot, unless every node drains (the slots must live somewhere)
        targets = live - draining or live
        if targets:
            desired = assignment(targets)
            desired.update(stranded)
            # a held node keeps its slots (their tenants are not handed over yet) and gets no other
            desired.update((slot, node) for node in holding for slot in held[node])
            wanted = changes(current, desired)
            if wanted:
                moving = sorted(taken & {current.get(s) for s in wanted})
                guards = [Compare.absent(self.keys.node(n)) for n in moving]
                started = time.monotonic()
                revision = await self.write(wanted, epoch, guards, owned)
                await assigns.wait_revision(revision)
                log.info(
                    "assigned %d slots to %s in %.2f s",
                    len(wanted),
                    sorted(targets),
                    time.monotonic() - started,
                )
                for node in moving:
                    self._incarnations.pop(node, None)  # fenced: nothing of it to fence again
        await self._show_takeovers(epoch)
        retry = None if self._takeovers is None else self._takeovers.next_retry(due)
        later = [*waiting.values(), *([] if retry is None else [retry])]
        return max(0.0, min(later) - now) if later else None

    async def _show_takeovers(self, epoch: int) -> None:
        """Make takeover/ say which takeovers fail and why (best effort: only for people)."""
        now = time.time()
        failed = {} if self._takeovers is None else self._takeovers.failed
        wanted = {n: r for n, r in failed.items() if n in self._departed}
        ops: list[Op] = [Delete(self.keys.takeover(n)) for n in self._shown.keys() - wanted.keys()]
        ops += [
            Put(self.keys.takeover(n), json.dumps({"reason": r, "since": now, "overrun": o}).encode())
            for n, (r, o) in wanted.items()
            if self._shown.get(n) != (r, o)
        ]
        if not ops:
            return
        try:
            for i in range(0, len(ops), TXN_OPS):
                await self.node.etcd.txn(
                    [Compare.created_at(self.keys.controller, epoch)], ops[i : i + TXN_OPS]
                )
        except ClusterError as e:
            log.info("could not show the takeovers in etcd: %s", e)
            return
        self._shown = wanted

    async def write(
        self,
        assignments: Mapping[int, str],
        epoch: int,
        guards: Collection[Compare] = (),
        owners: Mapping[int, KeyValue] | None = None,
    ) -> int:
        """Write `assign/<slot>` = node for each of `assignments` as controller of `epoch`; the
        last commit revision. A slot another node owns (per `owners`, slot -> its `owner/` key)
        is written as a move pending that owner's handover, anything else claimable; each write
        is guarded by the owner key being as `owners` says, so a stale view writes nothing (and
        by `guards`). In transactions of at most 128 compares and puts. Raises ControllerDeposed
        (and writes nothing more) once `epoch` is not the office's, ClusterError when another
        guard failed (look again once the watches caught up). Runs on the cluster loop."""
        key = self.keys.controller
        owners = {} if owners is None else owners
        items = sorted(assignments.items())
        size = TXN_OPS - 1 - len(guards)  # a compare per slot besides the office's and `guards`
        chunks = iter([items[i : i + size] for i in range(0, len(items), size)])
        revisions = [0]

        async def writer() -> None:  # a few transactions in flight hide etcd's round trips
            for chunk in chunks:
                compares, puts = [Compare.created_at(key, epoch), *guards], []
                for slot, node in chunk:
                    owner = owners.get(slot)
                    if owner is None:
                        compares.append(Compare.absent(self.keys.owner(slot)))
                        puts.append(Put(self.keys.assign(slot), encode_assign(node)))
                        continue
                    compares.append(Compare.created_at(self.keys.owner(slot), owner.create_revision))
                    giver = decode_owner(owner.value)[0]
                    value = encode_assign(node, None if giver == node else giver)
                    puts.append(Put(self.keys.assign(slot), value))
                result = await self.node.etcd.txn(compares, puts, [Get(key)])
                if not result.succeeded:
                    office = result.gets[0][0] if result.gets and result.gets[0] else None
                    if office is None or office.create_revision != epoch:
                        raise ControllerDeposed(f"epoch {epoch} is over: another node is the controller")
                    raise ClusterError(
                        "a slot's owner changed, or a node being taken over registered again (it "
                        "keeps its slots), while assigning"
                    )
                self.writes += len(puts)
                self.written_revision = max(self.written_revision, result.revision)
                revisions.append(result.revision)

        results = await asyncio.gather(*(writer() for _ in range(WRITES_IN_FLIGHT)), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return max(revisions)
