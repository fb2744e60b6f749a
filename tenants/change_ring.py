"""One tenant's recent change feed events, encoded, in a ring of bounded bytes (tenants.changes)."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable

from tenants.change_events import TOO_LARGE, Commit, Encode, End, Resync

log = logging.getLogger(__name__)


class Ring:
    """The recent events of one tenant, at most `buffer_bytes` of them (the newest always
    stays). Publishers are serialized by `publishing` (they hold the tenant's lock anyway);
    readers take only `_lock`, briefly, and never wait for a publisher's encoding."""

    def __init__(self, buffer_bytes: int) -> None:
        self.generation = secrets.token_hex(4)
        self.buffer_bytes = buffer_bytes
        self.publishing = threading.Lock()
        self._lock = threading.Lock()
        self._frames: list[bytes] = []
        self._head = 0  # index in _frames of the oldest kept
        self._bytes = 0
        self.first = 1  # sequence number of the oldest kept
        self.last = 0  # of the newest (0: none yet)
        self.armed = False  # complete from here on: every commit from now is published
        self.dropped = False
        self.end: End | None = None
        self.subscribers = 0
        self.idle_since = time.monotonic()
        self._wakes: dict[Callable[[], None], int] = {}

    def position(self, seq: int) -> str:
        return f"{self.generation}-{seq}"

    def publish(self, encode: Encode, make: Callable[[str], Commit | Resync], limit: int) -> None:
        with self.publishing:
            seq = self.last + 1
            event = make(self.position(seq))
            frame = encode(event)
            if len(frame) > limit:
                frame = encode(Resync(event.position, TOO_LARGE, event.time))
            with self._lock:
                self._frames.append(frame)
                self._bytes += len(frame)
                self.last = seq
                self._trim()
        self.wake()

    def _trim(self) -> None:
        while self._bytes > self.buffer_bytes and len(self._frames) - self._head > 1:
            self._bytes -= len(self._frames[self._head])
            self._frames[self._head] = b""
            self._head += 1
            self.first += 1
        if self._head > 64 and 2 * self._head > len(self._frames):
            del self._frames[: self._head]
            self._head = 0

    def read(self, after: int, max_bytes: int) -> tuple[list[bytes], int, bool]:
        """(frames after sequence `after`, up to about `max_bytes` but at least one; the new
        `after`; whether `after` was already dropped, then no frames and the newest's number)."""
        with self._lock:
            if after < self.first - 1:
                return [], self.last, True
            out: list[bytes] = []
            size = 0
            for i in range(self._head + after + 1 - self.first, len(self._frames)):
                out.append(self._frames[i])
                size += len(self._frames[i])
                if size >= max_bytes:
                    break
            return out, after + len(out), False

    def known(self, seq: int) -> bool:
        with self._lock:
            return self.first - 1 <= seq <= self.last

    def head(self) -> int:
        with self._lock:
            return self.last

    def add_wake(self, wake: Callable[[], None]) -> None:
        self._wakes[wake] = self._wakes.get(wake, 0) + 1

    def remove_wake(self, wake: Callable[[], None]) -> None:
        left = self._wakes.get(wake, 0) - 1
        if left > 0:
            self._wakes[wake] = left
        else:
            self._wakes.pop(wake, None)

    def wake(self) -> None:
        """Call each distinct wake callback once (subscribers may share one)."""
        for wake in list(self._wakes):
            try:
                wake()
            except Exception:  # a subscriber's trouble must not reach the committing thread
                log.exception("a change feed wake callback failed")

    def finish(self, end: End) -> None:
        self.end = end
        self.dropped = True
        self.wake()
