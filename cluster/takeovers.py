"""The controller's takeovers of departed nodes (cluster.controller decides when a node is due).

Each attempt reads `token`, the store revision (above the dead owner's tokens, below the claims
of the new owners, above every earlier attempt's), then calls the server's hook
`take_over(node, incarnations, slots, token)` in a thread of its own; up to TAKEOVERS_AT_ONCE
nodes at once, so a stuck node holds up no other. A node counts as taken over once its current
attempt returned, for the slots that attempt was given.

An attempt that overruns its timeout is abandoned (a thread cannot be stopped): shown as
overrun, tried again with backoff under a newer token, and whatever it returns later is ignored.
Its manifests, if it still writes them, sort below the retry's (a lower token) and are never
the newest; accepting its return could move the slots on a view that is no longer the node's
(it may have run again since, as an incarnation the attempt does not fence). A node back in the
cluster abandons its attempt the same way, and one that ran again meanwhile unseen (only its
new incarnation shows) has it done again. While ABANDONED_PER_NODE abandoned attempts of a node
still run it is not tried again, so its threads stay bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cluster.membership import Node

log = logging.getLogger(__name__)

# Seconds one takeover attempt may run before it is abandoned (and tried again). It reads a
# catalog and a few minutes of segments per node.
TAKEOVER_TIMEOUT = 300.0
TAKEOVER_RETRY = (0.5, 30.0)  # seconds before a failed takeover is tried again: first, at most
TAKEOVERS_AT_ONCE = 4  # departed nodes taken over at once (attempts within their timeout)
ABANDONED_PER_NODE = 2  # a node's abandoned attempts still running that hold off its next one

# take_over(node, incarnations, slots, token): make the departed `node`'s tenants of `slots`
# available to whoever claims those slots next (fence `incarnations`, write the manifests at
# `token`); raises to have it tried again later. Runs in a thread of its own.
TakeOver = Callable[[str, Collection[str], Collection[int], int], None]


@dataclass(eq=False)
class _Attempt:
    """One call of the hook for `node`, on its `slots` as assigned when it began; only the
    node's current attempt counts, whatever the others return."""

    node: str
    slots: frozenset[int]
    token: int | None = None  # the store revision it hands over at, once read
    incarnations: tuple[str, ...] = ()  # the node's incarnations it fences (none: all it finds)
    thread: threading.Thread | None = None
    timer: asyncio.TimerHandle | None = None

    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


class Takeovers:
    """Attempts, their outcomes and retry times, per departed node. Everything but the hook runs
    on the cluster loop; `incarnations(node)` names what the controller saw of the node, newest
    last; `wake()` is called whenever an attempt ends (the controller looks again)."""

    def __init__(
        self,
        node: Node,
        take_over: TakeOver,
        timeout: float,
        incarnations: Callable[[str], Sequence[str]],
        wake: Callable[[], None],
    ) -> None:
        self.node = node
        self._take_over = take_over
        self._timeout = timeout
        self._incarnations = incarnations
        self._wake = wake
        self._taken: dict[str, frozenset[int]] = {}  # node → slots taken over, not reassigned yet
        self._attempts: dict[str, _Attempt] = {}  # node → its current attempt
        self._abandoned: list[_Attempt] = []  # attempts whose result no longer counts, may still run
        self._retry_at: dict[str, float] = {}  # node → monotonic time of its next attempt
        self._backoff: dict[str, float] = {}
        # node → why its takeover failed last and whether it overran its timeout
        self.failed: dict[str, tuple[str, bool]] = {}
        self.done = 0  # takeovers done, for tests and metrics
        self.overruns: dict[str, int] = {}  # node → its attempts abandoned past the timeout
        self.late_returns = 0  # abandoned attempts that returned (ignored)

    def forget(self, node: str) -> None:
        """`node` is back, or holds no slot any more: what its takeover did or does no longer
        counts."""
        self._taken.pop(node, None)
        self._abandon(node)
        self._retry_at.pop(node, None)
        self._backoff.pop(node, None)
        self.failed.pop(node, None)

    def keep(self, departed: Collection[str]) -> None:
        """Forget every node but `departed`."""
        for node in {*self._taken, *self._attempts, *self._retry_at, *self.failed} - set(departed):
            self.forget(node)

    def taken(self, held: Mapping[str, Collection[int]]) -> set[str]:
        """The nodes of `held` (node → the slots assigned to it) taken over. A takeover speaks
        for the slots it was given: a node holding others too (assigned to it meanwhile, so in no
        manifest of it) is taken over again."""
        for node in [n for n, slots in self._taken.items() if not slots.issuperset(held.get(n, ()))]:
            del self._taken[node]
        return self._taken.keys() & held.keys()

    def start(self, due: Collection[str], held: Mapping[str, Collection[int]]) -> None:
        """Start the takeover of each node of `due` whose retry time has come, as far as there is
        room (TAKEOVERS_AT_ONCE), oldest retry first; none of a node with an attempt running,
        current or ABANDONED_PER_NODE abandoned ones."""
        now = time.monotonic()
        self._abandoned = [a for a in self._abandoned if a.running()]
        stuck = [a.node for a in self._abandoned]
        ready = sorted(
            (self._retry_at.get(n, 0.0), n)
            for n in set(due) - self._attempts.keys()
            if self._retry_at.get(n, 0.0) <= now and stuck.count(n) < ABANDONED_PER_NODE
        )
        for _, node in ready[: max(0, TAKEOVERS_AT_ONCE - len(self._attempts))]:
            attempt = _Attempt(node, frozenset(held[node]))
            self._attempts[node] = attempt
            self.node.spawn(self._attempt(attempt), f"takeover {node}")

    def next_retry(self, due: Collection[str]) -> float | None:
        """The monotonic time the next of `due` not running now may be tried again, if later than
        now (a running attempt, an abandoned one ending and a free place all wake the controller)."""
        now = time.monotonic()
        times = [self._retry_at.get(n, 0.0) for n in set(due) - self._attempts.keys()]
        return min((t for t in times if t > now), default=None)

    def _abandon(self, node: str) -> None:
        """Stop counting on `node`'s current attempt (its thread, if one runs, runs on)."""
        attempt = self._attempts.pop(node, None)
        if attempt is not None:
            if attempt.timer is not None:
                attempt.timer.cancel()
            self._abandoned = [*(a for a in self._abandoned if a.running()), attempt]

    async def _attempt(self, attempt: _Attempt) -> None:
        node = attempt.node
        try:
            record, token = await self.node.etcd.get(self.node.keys.node(node))
        except Exception as exc:
            if self._attempts.get(node) is attempt:
                self._failed(attempt, _reason(exc), overrun=False)
            return
        if self._attempts.get(node) is not attempt:  # back meanwhile
            return
        if record is not None:  # back: the mirror will say so
            del self._attempts[node]
            self._wake()
            return
        attempt.token = token
        attempt.incarnations = incarnations = tuple(self._incarnations(node))
        log.warning(
            "taking over node %s (incarnations %s, %d slots, token %d)",
            node,
            ", ".join(incarnations) or "unknown",
            len(attempt.slots),
            token,
        )
        started = time.monotonic()
        args = (node, incarnations, sorted(attempt.slots), token)
        loop = asyncio.get_running_loop()
        attempt.timer = loop.call_later(self._timeout, self._overran, attempt)
        attempt.thread = _in_thread(
            loop,
            f"takeover-{node}",
            self._take_over,
            args,
            lambda error: self._ended(attempt, started, error),
        )

    def _ended(self, attempt: _Attempt, started: float, error: BaseException | None) -> None:
        """The hook returned (`error` None) or raised, for `attempt` (on the cluster loop)."""
        node, took = attempt.node, time.monotonic() - started
        self._wake()  # a place is free, or an abandoned attempt's node may be tried again
        if self._attempts.get(node) is not attempt:
            self.late_returns += 1
            log.warning(
                "an abandoned takeover of node %s (token %s) %s after %.1f s: ignored",
                node,
                attempt.token,
                "returned" if error is None else f"failed ({error})",
                took,
            )
            return
        del self._attempts[node]
        if attempt.timer is not None:
            attempt.timer.cancel()
        if error is not None:
            self._failed(attempt, _reason(error), overrun=False)
            return
        # the node ran again meanwhile (its registration came and went between two looks of the
        # watch): what that incarnation shipped may be in no manifest, and is not fenced
        new = [i for i in self._incarnations(node) if i not in attempt.incarnations]
        if new:
            self._failed(attempt, f"it ran again meanwhile, as incarnation {new[-1]}", overrun=False)
            return
        log.warning("took over node %s in %.2f s (token %s)", node, took, attempt.token)
        self.done += 1
        self._taken[node] = attempt.slots
        self._retry_at.pop(node, None)
        self._backoff.pop(node, None)
        self.failed.pop(node, None)

    def _overran(self, attempt: _Attempt) -> None:
        if self._attempts.get(attempt.node) is attempt:
            self._abandon(attempt.node)
            self.overruns[attempt.node] = self.overruns.get(attempt.node, 0) + 1
            reason = f"overrun: not done within {self._timeout:g} s, abandoned and tried again"
            self._failed(attempt, reason, overrun=True)

    def _failed(self, attempt: _Attempt, reason: str, *, overrun: bool) -> None:
        node = attempt.node
        self._attempts.pop(node, None)
        pause = min(self._backoff.get(node, TAKEOVER_RETRY[0] / 2) * 2, TAKEOVER_RETRY[1])
        self._backoff[node] = pause
        self._retry_at[node] = time.monotonic() + pause
        self.failed[node] = (reason, overrun)
        log.warning(
            "takeover of node %s (token %s) failed (%s); trying again in %.1f s",
            node,
            attempt.token,
            reason,
            pause,
        )
        self._wake()


def _reason(error: BaseException) -> str:
    return str(getattr(error, "message", None) or error) or type(error).__name__


def _in_thread(
    loop: asyncio.AbstractEventLoop,
    name: str,
    fn: Callable[..., object],
    args: Sequence[Any],
    ended: Callable[[BaseException | None], None],
) -> threading.Thread:
    """Run `fn(*args)` in a daemon thread of its own (a hook that hangs must not hold a pool's
    thread, nor the process at exit); then `ended(its exception or None)` on `loop`."""

    def run() -> None:
        error: BaseException | None = None
        try:
            fn(*args)
        except BaseException as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(ended, error)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread
