"""router.bounded.ReplicaWork: a call is awaited until its deadline, or while it reports that
the replica answers; past it 503 replica_unavailable, telling whether it may still take effect."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from router.bounded import ReplicaWork
from tenants.errors import ReplicaUnavailable


def test_a_call_that_goes_on_answering_is_waited_for_and_a_silent_one_is_not() -> None:
    answered = [time.monotonic()]
    release = threading.Event()

    def reading() -> str:
        for _ in range(8):  # 0.8 s in all, answering every 0.1 s: past the 0.3 s bound
            time.sleep(0.1)
            answered[0] = time.monotonic()
        return "restored"

    def silent() -> str:
        release.wait(10)
        return "late"

    async def main() -> None:
        work = ReplicaWork(threads=1)
        assert await work.run("reading", "look", 0.3, reading, lambda: answered[0]) == "restored"
        with pytest.raises(ReplicaUnavailable, match="outcome is unknown: look"):
            await work.run("the silent call", "look", 0.3, silent)
        # its one thread is still held: the next call never begins, so nothing changed
        with pytest.raises(ReplicaUnavailable, match="nothing was changed"):
            await work.run("another", "look", 0.3, silent)
        release.set()

    asyncio.run(main())
