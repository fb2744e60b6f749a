"""A Server-Sent Events client for tests: a stream read in its own thread, its events queued, so a
test waits for the next one with a timeout (or, for a slow consumer, reads none at all)."""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Event:
    kind: str
    data: dict[str, Any]
    id: str | None


class EventStream:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._events: queue.Queue[Event | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, name="test-sse", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        kind, data, event_id = "message", "", None
        try:
            for line in self.response.iter_lines():
                if line == "":
                    if data:
                        self._events.put(Event(kind, json.loads(data), event_id))
                    kind, data, event_id = "message", "", None
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data += line[6:]
                elif line.startswith("id: "):
                    event_id = line[4:]
        except httpx.HTTPError:
            pass  # closed by the test, or by the server
        finally:
            self._events.put(None)

    def next(self, timeout: float = 10.0, skip: tuple[str, ...] = ("heartbeat",)) -> Event:
        """The next event not of a kind in `skip`; raises EOFError once the stream ended."""
        while True:
            event = self._events.get(timeout=timeout)
            if event is None:
                self._events.put(None)
                raise EOFError("the stream ended")
            if event.kind not in skip:
                return event

    def until(self, kind: str, timeout: float = 10.0) -> list[Event]:
        """Every event up to and including the next of `kind` (heartbeats left out)."""
        seen: list[Event] = []
        while not seen or seen[-1].kind != kind:
            seen.append(self.next(timeout))
        return seen

    def ended(self, timeout: float = 10.0) -> bool:
        """Whether the stream is over within `timeout` (events before its end are dropped)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


@contextlib.contextmanager
def subscribe(
    client: httpx.Client, tenant: str, headers: dict[str, str], last_event_id: str | None = None
) -> Iterator[EventStream]:
    """The tenant's change feed for the block (a 200 is asserted); closed at the end."""
    extra = {} if last_event_id is None else {"Last-Event-ID": last_event_id}
    with client.stream("GET", f"/v1/tenants/{tenant}/changes", headers={**headers, **extra}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = EventStream(response)
        try:
            yield stream
        finally:
            response.close()
            stream.ended(10)
