"""What one request may still use across all its statements: time, and result bytes.

A request (a REST call, a Hrana pipeline, a cursor) gets one Budget. Every statement it runs
is bounded by the earlier of its own time limit and the request's deadline; between statements
the request stops once the deadline has passed (RequestTimeLimit, 504). Rows are charged as
they are fetched, at their size in the protocol's JSON (`Encoding`: base64 is 4/3 of a blob,
escapes up to 6 bytes a character), so a request stops holding rows once it is past
`max_bytes` (ResultsTooLarge, 413), and all requests of a server together hold at most what
their ResultMemory allows, counted at HELD_PER_BYTE times the JSON size (ServerBusy, 503: try
again shortly).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from metrics.instruments import LIMIT_REFUSALS
from tenants.errors import SqlfleetError, TooLarge
from tenants.sqlvalues import relax

T = TypeVar("T")

_RESERVE_CHUNK = 256 << 10  # server-wide memory is taken in steps this big (one lock per step)
_ESCAPED = re.compile(r'[\x00-\x1f"\\]')  # what JSON escapes: at most 6 bytes (\u001f) each
_ESCAPED_BYTES = bytes(range(0x20)) + b'"\\'
_PIECE = 1 << 18  # characters of a long text measured at once: well under a millisecond
# Memory a result holds per byte of its JSON while it is built: the Python values, SQLite's copy
# of the row being fetched and the encoded response. `bench isolation` measured ~31 MiB of peak
# RSS for one 8 MB result, so the server-wide bound counts each charged byte three times.
HELD_PER_BYTE = 3


class ResultsTooLarge(TooLarge):
    """The results of one request (all its statements) are over `max_request_result_bytes`."""

    code = "results_too_large"


class ServerBusy(SqlfleetError):
    """Requests in flight hold `max_inflight_result_bytes` of results: retry shortly."""

    status = 503
    code = "server_busy"


class RequestTimeLimit(SqlfleetError):
    """The request's statements took its whole `request_timeout`; the rest did not run."""

    status = 504
    code = "request_time_limit"


class ResultMemory:
    """Result bytes held by every request in flight, at most `limit`. Thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()

    def reserve(self, size: int) -> bool:
        with self._lock:
            if self.held + size > self.limit:
                return False
            self.held += size
            return True

    def release(self, size: int) -> None:
        with self._lock:
            self.held -= size


@dataclass(frozen=True)
class Encoding:
    """What a protocol's JSON adds to each value and row (separators, {"type": ...} wrappers)."""

    per_value: int
    per_row: int


class Budget:
    """One request's allowance. Used by one thread at a time (the request's); `release` once
    its response is sent (idempotent)."""

    def __init__(self, timeout: float, max_bytes: int, memory: ResultMemory, encoding: Encoding) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.max_bytes = max_bytes
        self.memory = memory
        self.encoding = encoding
        self.used = 0
        self._reserved = 0
        # a statement run with it may have written or committed (tenants.execute sets it, only
        # ever to True): a refused durable ack tells the client so (router.request_writes)
        self.wrote = False

    # -- time --------------------------------------------------------------------------------------

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def statement_limit(self, statement_timeout: float) -> float:
        """Seconds the next statement may run. Raises RequestTimeLimit if none are left."""
        left = self.time_left()
        if left <= 0:
            raise self.expired()
        return min(statement_timeout, left)

    def check_time(self) -> None:
        """Raises RequestTimeLimit once the deadline has passed."""
        if self.time_left() <= 0:
            raise self.expired()

    def expired(self) -> RequestTimeLimit:
        LIMIT_REFUSALS.labels("request_time").inc()
        return RequestTimeLimit(f"the request took longer than its {self.timeout:g} s time limit")

    # -- result bytes ------------------------------------------------------------------------------

    def charge(self, row: Sequence[object]) -> None:
        """Count one row as the response will hold it. Raises ResultsTooLarge past
        `max_bytes`, ServerBusy when the server's result memory is full."""
        size = self.encoding.per_row + len(row) * self.encoding.per_value
        long: list[str] = []
        for value in row:
            if isinstance(value, str) and len(value) > _PIECE:
                size += len(value) + 2  # at least: a character is a byte or more, unescaped
                long.append(value)
            else:
                size += json_size(value)
        if long and self.used + size <= self.max_bytes:  # else it does not fit anyway: no scan
            size += sum(json_size(value) - len(value) - 2 for value in long)
        self.add(size)

    def add(self, size: int) -> None:
        self.used += size
        if self.used > self.max_bytes:
            LIMIT_REFUSALS.labels("request_result_bytes").inc()
            raise ResultsTooLarge(
                f"the results of this request are larger than {self.max_bytes} bytes: "
                "fetch fewer rows (LIMIT) or split the request"
            )
        held = self.used * HELD_PER_BYTE
        if held > self._reserved:
            need = max(_RESERVE_CHUNK, held - self._reserved)
            if not self.memory.reserve(need):
                LIMIT_REFUSALS.labels("inflight_result_bytes").inc()
                raise ServerBusy("the server holds too many results in flight: retry shortly")
            self._reserved += need

    def rewind(self, used: int) -> None:
        """Forget what was charged after `used` (the rows of a statement that failed are not
        kept, so they do not count against the request's later statements)."""
        self.used = min(self.used, used)

    def release(self) -> None:
        reserved, self._reserved = self._reserved, 0
        if reserved:
            self.memory.release(reserved)


def json_size(value: object) -> int:
    """Bytes `value` takes as JSON, wrappers aside: exact for text (UTF-8, escapes), blobs
    (base64) and NULL, an upper bound for numbers."""
    if isinstance(value, str):
        if len(value) > _PIECE:
            return _long_text_size(value)
        size = len(value) if value.isascii() else len(value.encode())
        if _ESCAPED.search(value) is not None:
            size += 5 * sum(1 for _ in _ESCAPED.finditer(value))
        return size + 2
    if isinstance(value, bytes):
        return (len(value) + 2) // 3 * 4 + 2
    if value is None:
        return 4
    return 24  # a 64-bit integer has at most 20 digits; a double in shortest form at most 24


def _long_text_size(text: str) -> int:
    """json_size of a long text, a piece at a time, letting other threads have the GIL
    between pieces: one regex search over an 8 MB value held it for ~20 ms, so a few tenants
    fetching such values kept the event loop (every other tenant) waiting for seconds."""
    size = 2
    since = time.perf_counter()
    for start in range(0, len(text), _PIECE):
        piece = text[start : start + _PIECE].encode()  # what JSON escapes is one byte in UTF-8
        size += len(piece) + 5 * (len(piece) - len(piece.translate(None, _ESCAPED_BYTES)))
        since = relax(since)
    return size


def drain(steps: Generator[None, None, T]) -> T:
    """Run a generator of steps (see `tenants.execute.batch_steps`) to its end; its value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            value: T = done.value
            return value
