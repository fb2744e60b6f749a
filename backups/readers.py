"""Reading byte streams whose `read(n)` may return fewer than `n` bytes before their end
(decompressors, raw files, HTTP bodies)."""

from __future__ import annotations

from typing import Protocol


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


def read_exactly(source: Readable, size: int) -> bytes:
    """`size` bytes from `source`, fewer only at its end."""
    parts, got = [], 0
    while got < size:
        part = source.read(size - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)
