"""Whether a request wrote: what a refused durable ack tells its client (router.ack_gate).

A response held for the replica (`ack = replica`) and refused must say whether its request
wrote (the outcome is then unknown: read it back) or only read (retry): a write of another
request committing meanwhile must not make a read look like one. So a request's work is
`tracking` a Tracked: every Budget made meanwhile (`Context.budget`: each REST call, Hrana
pipeline, cursor and WebSocket request makes one) joins it, and each statement run with a
budget marks it when it may write or commit (tenants.execute). The gate tracks each HTTP
request; a Hrana WebSocket session tracks each message it handles, in the task that sends its
response (the gate looks where the response is sent).

A Tracked no budget joined knows nothing (an admin route writes without statements) unless it
is `complete`: its owner knows every write of its work runs as a statement with a budget.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from contextvars import ContextVar

from tenants.budget import Budget


class Tracked:
    """The budgets of one request's work. Event loop only; each budget's `wrote` is set in a
    worker thread, only ever to True (so reading it here is safe)."""

    def __init__(self, complete: bool = False, budgets: Iterable[Budget] = ()) -> None:
        self.complete = complete
        self.budgets = list(budgets)

    def wrote(self) -> bool | None:
        """Whether a statement of the work may have written or committed; None: not known."""
        if any(budget.wrote for budget in self.budgets):
            return True
        return False if self.budgets or self.complete else None


_CURRENT: ContextVar[Tracked | None] = ContextVar("sqlfleet_request_writes", default=None)


@contextlib.contextmanager
def tracking(tracked: Tracked) -> Iterator[Tracked]:
    """Make `tracked` the current one inside the block: in this task, and in the tasks it
    starts meanwhile (they copy the context)."""
    token = _CURRENT.set(tracked)
    try:
        yield tracked
    finally:
        _CURRENT.reset(token)


def current() -> Tracked | None:
    """The Tracked of the work running here, if any."""
    return _CURRENT.get()


def joined(budget: Budget) -> Budget:
    """`budget`, joined to the current Tracked (if any)."""
    tracked = _CURRENT.get()
    if tracked is not None:
        tracked.budgets.append(budget)
    return budget
