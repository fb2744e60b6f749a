"""This server as a node of a cluster (`cluster_etcd` set; issue 16): the etcd agent (membership,
slot ownership, routing table, controller candidate), the proxy that makes every node answer for
every tenant, and the fence on the node's backups.

What it promises:
- a request for a tenant is served here only while this node owns the tenant's slot and can
  prove its etcd lease alive (router.proxy checks every request; `admit` is the fleet's own
  check on every lease, for paths that bypass the proxy such as a long-lived WebSocket);
- segments are shipped under this process's incarnation and created conditionally, so once
  another node fences the incarnation nothing more from here becomes part of the backups: the
  node then leaves the cluster and serves nothing (`/readyz` says why) until it is restarted;
- a node gone for longer than `cluster_takeover_grace` is taken over (`take_over`, run by the
  controller on whichever node it is): its incarnations fenced, its tenants handed to the new
  owners of its slots through handoff manifests, as a planned move would;
- local copies are served only while nobody else can have served their tenants since: when a
  node restarts (`forget_if_taken_over`, before shipping anything) or gets a lease again after
  losing one (`_verify_after_lease_loss`, serving nothing meanwhile), it looks whether its previous
  incarnation was fenced; if it was, it was taken over, so the restarted node drops every local
  copy (a tenant comes back from the replica, with the writes of its owners since, when its slot
  comes back to this node), and a running one stops as a fenced one does. The controller moves a
  taken-over node's slots only while the node is not registered (cluster.controller), and a
  node looks only once registered: so a node that finds no fence keeps slots nobody else had.
Failure modes: etcd unreachable at start → EtcdUnavailable (the server does not start); etcd
lost later → the node stops serving within its lease TTL (503 "slot_unowned"/421), proxies to
other nodes keep working as far as their owners can serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, cast

from starlette.applications import Starlette
from starlette.middleware import Middleware

from backups import fleet_doc
from backups.errors import ReplicaError, ReplicaFenced
from backups.fence import SEGMENTS, Writer, parse_key, top
from backups.sealed_replica import SealedReplica
from backups.service import Backups
from cluster.agent import Agent
from cluster.config import ClusterConfig
from cluster.errors import ClusterError
from cluster.routing import NodeInfo
from cluster.slots import slot_of
from ops.node_guard import (
    FENCED,
    FencedGate,
    ForeignReplica,
    NodeFenced,
    NodeNotLive,
    NoOtherNode,
    NotOwner,
    PeerUnreachable,
)
from router.proxy.forward import WATCH_SECONDS, Forwarder, ProxyConfig, Unreachable
from router.proxy.middleware import ClusterProxy
from router.proxy.placement import Located
from router.proxy.websocket import WebSocketRelay
from tenants.errors import SqlfleetError
from tenants.files import write_durably
from tenants.fleet import Fleet
from tenants.state import TenantState

log = logging.getLogger(__name__)

# Seconds a proxy waits for its routing table to change after a 421 (watch events arrive within
# milliseconds; a table that does not change by then is as fresh as it gets).
REFRESH_WAIT = 0.5
REFRESH_POLL = 0.01
# Where a node notes the incarnation it runs as (in its data dir's system folder), so that after
# a restart it can ask the replica whether that incarnation was taken over meanwhile.
INCARNATION_FILE = "cluster-incarnation.json"
# Seconds between looks at the replica while a node that lost its lease checks whether it was
# taken over meanwhile (it serves nothing until it knows).
VERIFY_RETRY = 1.0
# Seconds between looks for slots this node gained (whose handed-over tenants it then restores).
ADOPT_POLL = 0.5
# Seconds between a node's looks at the cluster marker in the replica prefix (`keep_marker`).
MARKER_INTERVAL = 60.0
# Seconds a release waits for the server being built before it fails (and is tried again).
DRAIN_WAITS_FOR_START = 5.0
# the longest Retry-After of a cluster-wide answer lacking a node without a lease: it may come back
# sooner than its takeover
GATHER_RETRY_CAP = 30
# Drain marks tried at most this often when other drains land between the look and the mark
DRAIN_TRIES = 3


def noted_writer(system_dir: Path) -> Writer | None:
    """The node and process incarnation the data dir last ran as (None: never, or unreadable)."""
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
        record = json.loads((system_dir / INCARNATION_FILE).read_bytes())
        return Writer(str(record["node"]), str(record["incarnation"]))
    return None


class ClusterNode:
    """Built by the server when `cluster_config` is set; `start()` joins (raises
    EtcdUnavailable), `stop()` leaves. `locate`, `serves`, `unavailable`, `admit` are safe
    from any thread; `refresh` is for the event loop."""

    def __init__(
        self,
        config: ClusterConfig,
        proxy: ProxyConfig,
        max_message_bytes: int,
        previous: Writer | None = None,
    ) -> None:
        """`previous`: what the data dir last ran as (`noted_writer`), read while its lock is free."""
        self.config = config
        self.agent = Agent(
            config,
            before_release=self._drain,
            on_lease_lost=self._lease_lost,
            take_over=self._take_over,
            before_rejoin=self._before_rejoin,
            previous_process=previous.incarnation if previous and previous.node == config.node_id else None,
        )
        self.forwarder = Forwarder(proxy)
        self.websockets = WebSocketRelay(proxy.connect_timeout, max_message_bytes, proxy.answer_timeout)
        self.writer: Writer | None = None
        self._fenced: str | None = None
        self._verifying: str | None = None  # lease lost: serving nothing until we know we were not taken over
        self._lock = threading.Lock()
        self._served: tuple[Fleet, Backups] | None = None  # `serve`: what the drain moves
        self._serving = threading.Event()
        self._stopping = threading.Event()
        self._adopter = threading.Thread(target=self._adopt, name="cluster-adopt", daemon=True)

    def start(self) -> None:
        self.agent.start()
        incarnation = self.agent.node.process_incarnation
        assert incarnation is not None  # start() returns registered
        self.writer = Writer(self.config.node_id, incarnation)
        log.info(
            "joined cluster %s as node %s (incarnation %s)",
            self.config.name,
            self.config.node_id,
            incarnation,
        )

    def check_replica(self, replica: SealedReplica) -> None:
        """At start, before the node registers in etcd and before anything is read from or
        shipped to the replica: raise ForeignReplica unless its prefix is this cluster's (the
        first node of a cluster records the cluster's name there, `fleet_doc.claim_cluster`, and
        every node writes it again if it vanished, `keep_marker`; a prefix holding a single
        server's segments is no cluster's). Raises ReplicaError, BackupBroken (the server does
        not start)."""
        name = self.config.name
        recorded = fleet_doc.read_cluster(replica)
        if recorded is None:
            flat = next((i.key for i in replica.list(SEGMENTS) if parse_key(i.key) is None), None)
            if flat is not None:
                raise ForeignReplica(
                    f"the replica prefix holds a single server's backups (e.g. {flat.rsplit('/', 1)[-1]}), "
                    f"not cluster {name!r}'s: give every node of a new cluster a replica prefix of its own"
                )
            recorded = fleet_doc.claim_cluster(replica, name, self.config.node_id)
            if recorded == name:
                log.info("the replica prefix is cluster %s's", name)
        if recorded != name:
            raise ForeignReplica(
                f"the replica prefix is marked ({fleet_doc.CLUSTER_KEY}) as the backups of cluster "
                f"{recorded!r}, and this node is one of cluster {name!r}: give cluster {name!r} a "
                "replica prefix of its own (nodes of one cluster share its name and its prefix)"
            )

    def keep_marker(self, replica: SealedReplica) -> None:
        """Write the cluster's marker again if it vanished from the replica prefix (a wiped
        bucket), so no other cluster can claim the prefix meanwhile; log what was found. Every
        `MARKER_INTERVAL` seconds on a serving node; never raises (logged, looked at next time)."""
        name = self.config.name
        try:
            recorded = fleet_doc.read_cluster(replica)
            if recorded is None:
                recorded = fleet_doc.claim_cluster(replica, name, self.config.node_id)
                log.error(
                    "the cluster marker %s had vanished from the replica prefix (was the bucket wiped?): "
                    "written again for cluster %s; backups made before it vanished may be gone too",
                    fleet_doc.CLUSTER_KEY,
                    name,
                )
            if recorded != name:
                log.error(
                    "the replica prefix is now marked as the backups of cluster %r, not of this cluster "
                    "(%r): two clusters share a replica prefix; give each one a prefix of its own",
                    recorded,
                    name,
                )
        except SqlfleetError as exc:  # ReplicaError, BackupBroken
            log.warning("cannot check the cluster marker in the replica prefix (%s)", exc.message)

    def forget_if_taken_over(self, fleet: Fleet, backups: Backups) -> int:
        """At start, once registered and before anything ships: if the incarnation this data dir
        last ran as was fenced (another node took it over), or was another node's, drop every
        local tenant copy (their tenants live on elsewhere, or come back here from the replica);
        then note the new incarnation. Returns the copies dropped. Raises ReplicaError (the
        server does not start: it cannot tell whether its copies are stale)."""
        assert self.writer is not None
        noted = fleet.layout.system_dir / INCARNATION_FILE
        previous = noted_writer(fleet.layout.system_dir)
        why = None
        if previous is not None and previous.node != self.config.node_id:
            why = f"this data dir last ran as node {previous.node}, whose slots are others' now"
        elif previous is not None and previous != self.writer and top(backups.replica, previous)[1]:
            why = f"incarnation {previous.incarnation} of this node was taken over while it was away"
        dropped = 0
        if why is not None:
            stale = sorted(fleet.catalog.all_states())
            fleet.let_go(stale, lambda _: None)
            dropped = len(stale)
            log.warning(
                "%s: dropped its %d local tenant copies (their owners have them; any commit not shipped "
                "before the takeover is lost)",
                why,
                dropped,
            )
        body = json.dumps({"node": self.config.node_id, "incarnation": self.writer.incarnation})
        write_durably(noted, body.encode())
        return dropped

    @property
    def fenced(self) -> str | None:
        """Why this node serves nothing until restarted (`FENCED`), or None."""
        return self._fenced

    def guard(self, app: Starlette) -> None:
        """Put `FencedGate` in `app`'s middleware (before it starts), just outside the proxy."""
        stack = app.user_middleware
        at = next((i for i, m in enumerate(stack) if cast(object, m.cls) is ClusterProxy), len(stack))
        stack.insert(at, Middleware(FencedGate, node=self))

    def serve(self, fleet: Fleet, backups: Backups) -> None:
        """The fleet and backups whose tenants move when this node gives up slots; a release
        before then waits a little, then fails and is tried again (the server is starting)."""
        backups.handoffs.slot_of = slot_of
        self._served = (fleet, backups)
        self._serving.set()
        self._adopter.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._adopter.is_alive():
            self._adopter.join(ADOPT_POLL * 4)
        self.agent.stop()

    def _adopt(self) -> None:
        """Restore, one at a time in the background, the tenants handed over with the slots this
        node gains (backups.handoff), so they are listed and answer at full speed at once; a
        request that comes first restores its tenant itself (`Backups.recover`). Also keeps the
        cluster's marker in the replica prefix (`keep_marker`)."""
        seen: set[int] = set()
        marked = time.monotonic()  # `check_replica` wrote or read the marker at start
        while not self._stopping.wait(ADOPT_POLL):
            if time.monotonic() - marked >= MARKER_INTERVAL and self._served is not None:
                self.keep_marker(self._served[1].replica)
                marked = time.monotonic()
            owned = set(self.agent.ownership.owned())
            gained, seen = owned - seen, owned
            if gained and not self.restore_handed_over(gained, self._stopping):
                seen -= gained  # try them again next time

    def restore_handed_over(self, slots: Collection[int], stop: threading.Event) -> bool:
        """Restore, one at a time, the tenants handed over with `slots` (backups.handoff) that
        this node lacks, until `stop` is set; False if their manifests could not be read (logged)."""
        if self._served is None:
            return False
        fleet, backups = self._served
        try:
            tenants = backups.handoffs.handed_over(slots)
        except SqlfleetError as exc:
            log.warning("cluster: cannot read the handoffs of %d gained slots (%s)", len(slots), exc.message)
            return False
        for tenant in tenants:
            if stop.is_set():
                break
            if fleet.catalog.get(tenant) is None:
                # moved on or gone meanwhile: its own request will say so
                with contextlib.suppress(SqlfleetError), fleet.lease(tenant, readonly=True, passing=True):
                    pass
        return True

    def _take_over(
        self, node: str, incarnations: Collection[str], slots: Collection[int], token: int
    ) -> None:
        """The controller's takeover of the departed `node` (cluster.controller; its own thread):
        fence it and hand its tenants of `slots` over at `token` (backups.takeover). Raises to
        have it tried again (ReplicaError, or the server still starting)."""
        if not self._serving.wait(DRAIN_WAITS_FOR_START) or self._served is None:
            raise ClusterError("the server is still starting")
        _, backups = self._served
        started = time.monotonic()
        handed = backups.take_over(node, incarnations, slots, token)
        log.warning(
            "took over node %s: %d tenants of %d slots handed over in %.2f s",
            node,
            handed,
            len(slots),
            time.monotonic() - started,
        )

    def _drain(self, tokens: Mapping[int, int]) -> None:
        """A planned move out (cluster.ownership, worker thread; the slots are not served any
        more): per slot, close its tenants, ship their last commits, write the handoff for the
        new owner, drop the local copies. Raises (ReplicaError...) to keep the slots."""
        if not self._serving.wait(DRAIN_WAITS_FOR_START) or self._served is None:
            raise ClusterError("the server is still starting: its slots move once it has")
        fleet, backups = self._served
        by_slot: dict[int, list[str]] = defaultdict(list)
        for tenant, state in fleet.catalog.all_states().items():
            slot = slot_of(tenant)
            if slot in tokens and state == TenantState.ACTIVE:
                by_slot[slot].append(tenant)
        started = time.monotonic()
        moving = [tenant for slot in sorted(by_slot) for tenant in by_slot[slot]]
        fleet.let_go(moving, lambda _: backups.handoffs.hand_off(tokens, by_slot))
        log.info(
            "handed off %d slots (%d tenants) in %.2f s", len(tokens), len(moving), time.monotonic() - started
        )

    # -- the proxy's Placement (router.proxy.placement) ------------------------------------------

    def locate(self, tenant: str) -> Located:
        slot = slot_of(tenant)
        route = self.agent.routing.route(slot)
        if route is None:
            return Located(slot, 0, None)
        return Located(slot, route.token, None if route.node == self.config.node_id else route.url)

    async def refresh(self, tenant: str) -> Located:
        routing = self.agent.routing
        version, waited = routing.version, 0.0
        while routing.version == version and waited < REFRESH_WAIT:
            await asyncio.sleep(REFRESH_POLL)
            waited += REFRESH_POLL
        return self.locate(tenant)

    def serves(self, slot: int, token: int) -> bool:
        return self._fenced is None and self._verifying is None and self.agent.ownership.owns(slot, token)

    def unavailable(self) -> str | None:
        return self._fenced or self.agent.why_not_serving() or self._verifying

    def describe(self, tenant: str | None) -> dict[str, object]:
        if self._fenced is not None:
            return self._describe_fenced(tenant)
        table = self.agent.routing.table()
        slots = Counter(route.node for route in table if route is not None)
        draining = self.agent.draining()
        nodes: dict[str, dict[str, object]] = {
            node: {
                "url": info.url,
                "incarnation": info.incarnation,
                "slots": slots.get(node, 0),
                "draining": node in draining,
                "state": "live",
            }
            for node, info in sorted(self.agent.routing.nodes().items())
        }
        nodes.update(self._departed(draining))
        why = self.unavailable()
        status: dict[str, object] = {
            "node": self.config.node_id,
            "serving": why is None,
            "reason": why,
            "slots_owned": sum(slots.values()),
            "nodes": nodes,
            "takeovers": self.agent.takeovers(),
        }
        if tenant is not None:
            slot = slot_of(tenant)
            route = table[slot]
            owner = None if route is None else {"node": route.node, "token": route.token}
            status["tenant"] = {"id": tenant, "slot": slot, "owner": owner}
        return status

    def _describe_fenced(self, tenant: str | None) -> dict[str, object]:
        """A fenced node left the cluster: what it saw of it stopped changing then, so it shows
        only itself, fenced (and no owner for `tenant`)."""
        me: dict[str, object] = {
            "url": self.config.node_url,
            "incarnation": None if self.writer is None else self.writer.incarnation,
            "slots": 0,
            "draining": False,
            "state": "fenced",
        }
        status: dict[str, object] = {
            "node": self.config.node_id,
            "serving": False,
            "reason": self._fenced,
            "slots_owned": 0,
            "nodes": {self.config.node_id: me},
            "takeovers": {},
        }
        if tenant is not None:
            status["tenant"] = {"id": tenant, "slot": slot_of(tenant), "owner": None}
        return status

    def _departed(self, draining: frozenset[str]) -> dict[str, dict[str, object]]:
        """The nodes that hold slots but no lease (cluster_api's "lease_lost" entries): none of
        their slots is served until they come back or are taken over."""
        now, grace = time.time(), self.config.takeover_grace
        shown: dict[str, dict[str, object]] = {}
        for node, (assigned, lost) in self.agent.departed().items():
            ago = None if lost is None else max(0.0, now - lost.since)
            shown[node] = {
                "url": None if lost is None else lost.info.url,
                "incarnation": None if lost is None else lost.info.incarnation,
                "slots": 0,
                "draining": node in draining,
                "state": "lease_lost",
                "assigned_slots": assigned,
                "lease_lost_ago_s": None if ago is None else round(ago, 1),
                # the controller's count starts when it sees the loss (about when we did)
                "takeover_in_s": None if ago is None else round(max(0.0, grace - ago), 1),
            }
        return shown

    async def gather(self, path: str, authorization: str, marker: str) -> list[dict[str, Any]]:
        # a node holding slots without a lease cannot answer for its tenants until it is back or
        # taken over: say so at once rather than leave them out or wait for its silence
        departed = next(iter(self.agent.departed()), None)
        if departed is not None:
            raise lease_gone(self.agent, self.config.takeover_grace, departed)
        peers = {n: i for n, i in self.agent.routing.nodes().items() if n != self.config.node_id}
        headers = {"Authorization": authorization, marker: "1"}

        async def ask(node: str, info: NodeInfo) -> Any:
            # as the proxy stops waiting for an owner that lost its slot: not past its lease
            answer = asyncio.ensure_future(self.forwarder.get_json(info.url + path, headers))
            try:
                while not (await asyncio.wait((answer,), timeout=WATCH_SECONDS))[0]:
                    if self.agent.routing.nodes().get(node) != info:
                        raise lease_gone(self.agent, self.config.takeover_grace, node)
                return answer.result()
            finally:
                answer.cancel()

        try:
            return list(await asyncio.gather(*(ask(n, i) for n, i in peers.items())))
        except Unreachable as exc:
            raise PeerUnreachable(
                f"a node did not answer, so the answer would be incomplete: {exc}", retry_after=1
            ) from None

    def set_draining(self, node: str, draining: bool) -> None:
        live = self.agent.routing.nodes()
        if node not in live:
            raise NodeNotLive(
                f"node {node!r} is not registered: only a live node can "
                + ("hand its tenants over (start it again, then drain it)" if draining else "be undrained")
            )
        drained = self.agent.draining()
        for _ in range(DRAIN_TRIES):
            others = live.keys() - drained - {node}
            if draining and not others:  # the controller would leave every slot where it is
                raise NoOtherNode(
                    f"node {node!r} is the last live node not draining: no other node to take its "
                    "slots (start another node, or undo another node's drain, first)"
                )
            if self.agent.set_draining(node, draining, keep=others):
                return
            drained = self.agent.draining_now()  # another drain came first: look again
        raise NoOtherNode(f"other drains kept changing the cluster while node {node!r} was marked: retry")

    # -- the fleet's and the shipper's hooks ----------------------------------------------------

    def admit(self, tenant: str) -> None:
        """Raise NotOwner unless this node may serve `tenant` right now."""
        if (
            self._fenced is not None
            or self._verifying is not None
            or not self.agent.ownership.owns(slot_of(tenant))
        ):
            if self._fenced is not None:
                raise NodeFenced(FENCED)
            why = self.unavailable()
            raise NotOwner(
                f"this node does not serve tenant {tenant!r} now{f' ({why})' if why else ''}: retry"
            )

    def on_fenced(self, error: ReplicaFenced) -> None:
        """The shipper found this incarnation fenced (another node took over): serve nothing
        more, and leave the cluster so our slots go at once. Called once, from the flush thread."""
        self._fence(error.message)

    def _fence(self, why: str) -> None:
        with self._lock:
            if self._fenced is not None:
                return
            self._fenced = FENCED
        log.error("this node's incarnation was fenced: it serves nothing until restarted (%s)", why)
        threading.Thread(target=self.agent.stop, name="cluster-leave", daemon=True).start()

    def _lease_lost(self, reason: str) -> None:
        """On the cluster thread, before a new lease can make the node alive again: serve
        nothing until the replica shows this incarnation was not taken over meanwhile (else
        its local copies may be stale: another node may have served their tenants)."""
        log.warning("cluster lease lost (%s): this node stops serving its slots", reason)
        with self._lock:
            if self._verifying is not None or self._fenced is not None:
                return
            self._verifying = "lease lost: checking whether another node took this one over"
        threading.Thread(target=self._verify_after_lease_loss, name="cluster-verify", daemon=True).start()

    def _before_rejoin(self) -> bool:
        """Before joining again after a lease loss (cluster.membership; worker thread): not if
        this incarnation was taken over meanwhile (then it stops as a fenced node does), so its
        slots do not come back to it only to move once more. Raises ReplicaError (it joins,
        and `_verify_after_lease_loss` decides)."""
        if self._served is None or self.writer is None:
            return True
        _, fenced = top(self._served[1].replica, self.writer)
        if fenced:
            self._fence(f"incarnation {self.writer.incarnation} was taken over while its lease was lost")
        return not fenced

    def _verify_after_lease_loss(self) -> None:
        """Once registered again (so the controller moves no slot of ours any more, see the
        module docstring): fenced → stop as a fenced node does; not fenced → serve again."""
        while not self._stopping.is_set() and self._fenced is None:
            if not self.agent.node.alive() or self.writer is None or not self._serving.is_set():
                self._stopping.wait(VERIFY_RETRY / 4)
                continue
            assert self._served is not None
            try:
                _, fenced = top(self._served[1].replica, self.writer)
            except ReplicaError as exc:
                log.warning("cannot tell whether this node was taken over (%s); looking again", exc)
                self._stopping.wait(VERIFY_RETRY)
                continue
            if fenced:
                self._fence(f"incarnation {self.writer.incarnation} was taken over while its lease was lost")
            with self._lock:
                self._verifying = None
            return


def lease_gone(agent: Agent, takeover_grace: float, node: str) -> PeerUnreachable:
    """What a cluster-wide answer is while `node` holds slots without a lease: its tenants are
    missing until it is back or taken over (Retry-After: the takeover's due time, capped)."""
    lost = agent.routing.lost().get(node)
    ago = 0.0 if lost is None else max(0.0, time.time() - lost.since)
    left = max(0.0, takeover_grace - ago)
    return PeerUnreachable(
        f"node {node!r} lost its cluster lease, so its tenants are left out of the answer until it "
        f"is back or taken over (due in {left:.0f} s): retry then",
        retry_after=max(1, min(math.ceil(left), GATHER_RETRY_CAP)),
    )
