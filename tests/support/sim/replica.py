"""The simulated object store: a LocalReplica standing in for S3, with S3's failures injected
(errors, outages, timeouts, slow PUTs, and responses lost after the PUT took effect). It is a
remote service: one call is one tick of the simulation (the process may die waiting for it),
the files behind it see no disk faults and no power loss, and a PUT is atomic. While a PUT is in
flight other requests of the server go on (`during_put`): that is where commits meet a flush
that is between capturing and advancing."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO

from backups.errors import ReplicaUnavailable
from backups.local_replica import LocalReplica
from backups.replica import ObjectInfo, ReplicaClient
from tests.support.sim.clock import SimClock
from tests.support.sim.disk import SimDisk


@dataclass
class ReplicaFaults:
    down: bool = False  # an outage: every call fails
    put_error: float = 0.0  # a PUT fails before storing anything
    lost_response: float = 0.0  # a PUT stores the object, then fails as if its answer was lost
    timeout: float = 0.0  # a PUT hangs `timeout_seconds`, then fails; it may have stored the object
    slow: float = 0.0  # a PUT takes `slow_seconds`
    get_error: float = 0.0  # a read (GET, HEAD, LIST) fails
    slow_seconds: float = 3.0
    timeout_seconds: float = 30.0


class SimReplica(ReplicaClient):
    def __init__(
        self,
        inner: LocalReplica,
        disk: SimDisk,
        rng: random.Random,
        clock: SimClock,
        during_put: Callable[[], None] | None = None,
    ) -> None:
        self.inner = inner
        self.disk = disk
        self.rng = rng
        self.clock = clock
        self.faults = ReplicaFaults()
        self.during_put = during_put
        disk.remote.append(str(inner.root.resolve()) + "/")

    def _call(self, what: str, key: str) -> None:
        self.disk.tick(what, str(self.inner.root.resolve() / key))

    def _chance(self, rate: float) -> bool:
        return bool(rate) and not self.disk.quiet and self.rng.random() < rate

    def _fail(self, what: str, key: str, why: str) -> ReplicaUnavailable:
        self.disk.events.append(f"{self.disk.ticks} replica {what} {key}: {why}")
        return ReplicaUnavailable(f"simulated S3: {why}", key=key)

    def _read(self, what: str, key: str) -> None:
        self._call(what, key)
        faults = self.faults
        if (faults.down and not self.disk.quiet) or self._chance(faults.get_error):
            raise self._fail(what, key, "503 Slow Down")

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        self._put(key, lambda: self.inner.put(key, data, if_absent=if_absent))

    def put_file(self, key: str, source: IO[bytes], *, if_absent: bool = False) -> None:
        self._put(key, lambda: self.inner.put_file(key, source, if_absent=if_absent))

    def _put(self, key: str, store: Callable[[], None]) -> None:
        self._call("put", key)
        faults = self.faults
        if (faults.down and not self.disk.quiet) or self._chance(faults.put_error):
            raise self._fail("put", key, "503 Service Unavailable")
        if self._chance(faults.timeout):
            self.clock.advance(faults.timeout_seconds)
            if self.rng.random() < 0.5:
                with self.disk.quietly():
                    store()
            raise self._fail("put", key, "read timeout")
        if self._chance(faults.slow):
            self.clock.advance(faults.slow_seconds)
        if self.during_put is not None and not self.disk.quiet:
            self.during_put()
        with self.disk.quietly():
            store()
        if self._chance(faults.lost_response):
            raise self._fail("put", key, "connection reset after the PUT (response lost)")

    def get(self, key: str) -> bytes:
        self._read("get", key)
        with self.disk.quietly():
            return self.inner.get(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self._read("get", key)
        with self.disk.quietly():
            return self.inner.get_range(key, start, length)

    def head(self, key: str) -> ObjectInfo:
        self._read("head", key)
        with self.disk.quietly():
            return self.inner.head(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._read("list", prefix or ".")
        with self.disk.quietly():
            found = list(self.inner.list(prefix))
        return iter(found)

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        self._read("delete", keys[0] if keys else ".")
        with self.disk.quietly():
            self.inner.delete(keys)

    def close(self) -> None:
        self.inner.close()
