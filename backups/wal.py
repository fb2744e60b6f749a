"""Reading committed frames from a SQLite WAL file, validating salts and checksums.

Format (sqlite.org/fileformat2.html#walformat): a 32-byte header (magic, version, page size,
checkpoint seq, salt-1, salt-2, checksum), then frames of a 24-byte header (page number, db size in
pages for a commit frame else 0, salt-1, salt-2, cumulative checksum) and one page. A frame is valid
when its salts match the header's and its checksum continues the previous frame's; frames up to the
last valid commit frame are committed. Reading the WAL through our own descriptor is safe: in
exclusive locking mode SQLite holds no POSIX locks on the -wal file.

The checksum is a 2-word recurrence that is linear over 32-bit words mod 2^32, so per page size we
precompute its coefficients and evaluate whole frames with numpy instead of a Python loop.
Frames are read and validated a batch (BATCH_BYTES) at a time: the shipper's memory does not grow
with the WAL (`scan`, `tail` and `read_frames` return every frame, for tests and tools).
"""

from __future__ import annotations

import os
import struct
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import BinaryIO

import numpy as np

from backups.errors import WalCorrupt

WAL_HEADER_SIZE = 32
FRAME_HEADER_SIZE = 24
_MAGIC_LE, _MAGIC_BE = 0x377F0682, 0x377F0683
_MASK = 0xFFFFFFFF
BATCH_BYTES = 1 << 20  # WAL bytes read and checksummed at a time (bounds the shipper's memory)
Checksum = tuple[int, int]


@dataclass(frozen=True)
class WalHeader:
    page_size: int
    checkpoint_seq: int
    salt1: int
    salt2: int
    big_endian: bool
    checksum: Checksum

    @property
    def frame_size(self) -> int:
        return FRAME_HEADER_SIZE + self.page_size

    def frame_offset(self, index: int) -> int:
        return WAL_HEADER_SIZE + index * self.frame_size


@dataclass(frozen=True)
class Frame:
    index: int
    page_no: int
    commit_size: int  # database size in pages after this commit, 0 for a non-commit frame
    checksum: Checksum
    data: bytes


@lru_cache(maxsize=4096)  # the shipper re-reads the same headers every flush
def parse_header(raw: bytes) -> WalHeader | None:
    """The header, or None when `raw` is not a valid WAL header (short, bad magic or checksum)."""
    if len(raw) < WAL_HEADER_SIZE:
        return None
    magic, version, page_size, seq, salt1, salt2, c1, c2 = struct.unpack(">8I", raw[:WAL_HEADER_SIZE])
    if magic not in (_MAGIC_LE, _MAGIC_BE) or version != 3007000:
        return None
    big_endian = magic == _MAGIC_BE
    if checksum(raw[:24], (0, 0), big_endian) != (c1, c2):
        return None
    return WalHeader(page_size or 65536, seq, salt1, salt2, big_endian, (c1, c2))


def read_header(path: Path) -> WalHeader | None:
    try:
        with open(path, "rb") as f:
            return parse_header(f.read(WAL_HEADER_SIZE))
    except FileNotFoundError:
        return None


@cache
def _coefficients(pairs: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """For `pairs` word pairs: per-pair weights of a and b in (s1, s2), and M^pairs."""
    powers = np.empty((pairs + 1, 4), dtype=np.uint64)
    m = [1, 0, 0, 1]
    for j in range(pairs + 1):
        powers[j] = m
        # m = M @ m with M = [[1, 1], [1, 2]], mod 2^32
        m = [
            (m[0] + m[2]) & _MASK,
            (m[1] + m[3]) & _MASK,
            (m[0] + 2 * m[2]) & _MASK,
            (m[1] + 2 * m[3]) & _MASK,
        ]
    c = powers[pairs - 1 :: -1][:pairs]  # C_k = M^(pairs-1-k)
    weights_a = np.stack([(c[:, 0] + c[:, 1]) & _MASK, (c[:, 2] + c[:, 3]) & _MASK])
    weights_b = np.stack([c[:, 1], c[:, 3]])
    last = powers[pairs]
    return weights_a, weights_b, (int(last[0]), int(last[1]), int(last[2]), int(last[3]))


def _contributions(blocks: bytes, count: int, big_endian: bool) -> tuple[np.ndarray, int]:
    words = np.frombuffer(blocks, dtype=">u4" if big_endian else "<u4").reshape(count, -1)
    return _word_contributions(words.astype(np.uint64))


def _word_contributions(words: np.ndarray) -> tuple[np.ndarray, int]:
    """Per row of 32-bit words (as uint64): its (s1, s2) contribution, and its pair count."""
    pairs = words.shape[1] // 2
    weights_a, weights_b, _ = _coefficients(pairs)
    sums = words[:, 0::2] @ weights_a.T + words[:, 1::2] @ weights_b.T  # wraps mod 2^64: fine mod 2^32
    return sums & _MASK, pairs


def _advance(seed: Checksum, contribution: np.ndarray, pairs: int) -> Checksum:
    m = _coefficients(pairs)[2]
    s1 = (m[0] * seed[0] + m[1] * seed[1] + int(contribution[0])) & _MASK
    s2 = (m[2] * seed[0] + m[3] * seed[1] + int(contribution[1])) & _MASK
    return s1, s2


def checksum(data: bytes, seed: Checksum, big_endian: bool) -> Checksum:
    """SQLite's WAL checksum of `data` (a multiple of 8 bytes) continuing from `seed`."""
    contribution, pairs = _contributions(data, 1, big_endian)
    return _advance(seed, contribution[0], pairs)


def read_frames(path: Path, header: WalHeader, start: int, stop: int, seed: Checksum) -> list[Frame]:
    """Frames [start, stop) of the WAL, each validated against `header`'s salts and the checksum
    chain from `seed` (the checksum of frame start-1, or the header's for start 0).
    Raises WalCorrupt if any frame in the range is invalid or missing. Holds them all: the
    shipper streams with `read_batches`."""
    with open(path, "rb") as f:
        return read_frames_from(f, header, start, stop, seed)


def read_frames_from(f: BinaryIO, header: WalHeader, start: int, stop: int, seed: Checksum) -> list[Frame]:
    """`read_frames` on an open WAL file."""
    return [frame for batch in read_batches(f, header, start, stop, seed) for frame in batch]


def read_batches(
    f: BinaryIO, header: WalHeader, start: int, stop: int, seed: Checksum
) -> Iterator[list[Frame]]:
    """Frames [start, stop) as `read_frames` validates them, in file order, about BATCH_BYTES
    at a time: memory stays bounded however long the range. Raises WalCorrupt, while
    iterating, at the first frame that is invalid or missing (the batches before it are valid)."""
    size, per_batch = header.frame_size, _per_batch(header)
    index = start
    while index < stop:
        want = min(per_batch, stop - index)
        f.seek(header.frame_offset(index))
        raw = f.read(size * want)
        count = len(raw) // size
        frames = _validated(raw, header, index, count, seed)
        if len(frames) < count:
            raise WalCorrupt(f"WAL frame {index + len(frames)} fails its salt or checksum")
        if count < want:
            raise WalCorrupt(f"WAL ends at frame {index + count}, expected {stop}")
        yield frames
        index, seed = index + count, frames[-1].checksum


def valid_batches(f: BinaryIO, header: WalHeader, start: int, seed: Checksum) -> Iterator[list[Frame]]:
    """The longest run of valid frames from `start` on (to the end of the file or the first
    invalid frame), committed or not, in batches as `read_batches` gives them."""
    size, per_batch = header.frame_size, _per_batch(header)
    index = start
    while True:
        f.seek(header.frame_offset(index))
        raw = f.read(size * per_batch)
        count = len(raw) // size
        frames = _validated(raw, header, index, count, seed)
        if frames:
            yield frames
        if len(frames) < per_batch:
            return
        index, seed = index + len(frames), frames[-1].checksum


def _per_batch(header: WalHeader) -> int:
    return max(1, BATCH_BYTES // header.frame_size)


def _validated(raw: bytes, header: WalHeader, start: int, count: int, seed: Checksum) -> list[Frame]:
    """The longest prefix of valid frames in `raw` (which holds at least `count` whole frames)."""
    if count == 0:  # nothing after the position (e.g. a reopened, fully shipped WAL)
        return []
    size = header.frame_size
    view = memoryview(raw)
    # checksum input per frame: its first 8 header bytes (2 words), then the page (after 6 words)
    words = np.frombuffer(raw, dtype=">u4" if header.big_endian else "<u4", count=count * size // 4)
    words = words.reshape(count, size // 4).astype(np.uint64)
    contributions, pairs = _word_contributions(np.concatenate([words[:, :2], words[:, 6:]], axis=1))
    frames: list[Frame] = []
    state = seed
    for i in range(count):
        base = i * size
        page_no, commit, salt1, salt2, c1, c2 = struct.unpack_from(">6I", raw, base)
        state = _advance(state, contributions[i], pairs)
        if (salt1, salt2) != (header.salt1, header.salt2) or state != (c1, c2) or page_no == 0:
            break
        frames.append(Frame(start + i, page_no, commit, state, bytes(view[base + 24 : base + size])))
    return frames


@dataclass(frozen=True)
class Commit:
    """A committed transaction in a WAL: the WAL's length in frames after it, and the checksum
    its commit frame carries (what a shipped position records)."""

    frames: int
    checksum: Checksum


def _follows(f: BinaryIO, header: WalHeader, start: int, seed: Checksum) -> bool:
    """Whether frame `start - 1` (the header, for start 0) carries checksum `seed` and the
    header's salts: then the WAL continues the position (start, seed)."""
    if start == 0:
        return header.checksum == seed
    f.seek(header.frame_offset(start - 1))
    head = f.read(FRAME_HEADER_SIZE)
    return len(head) == FRAME_HEADER_SIZE and struct.unpack(">4I", head[8:]) == (
        header.salt1,
        header.salt2,
        *seed,
    )


def _commits(f: BinaryIO, header: WalHeader, start: int, seed: Checksum) -> list[Commit]:
    return [
        Commit(fr.index + 1, fr.checksum)
        for batch in valid_batches(f, header, start, seed)
        for fr in batch
        if fr.commit_size
    ]


def tail_commits(path: Path, header: WalHeader, start: int, seed: Checksum) -> list[Commit] | None:
    """The commits after frame `start - 1`, provided that frame (or the header, for start 0)
    carries checksum `seed` and the header's salts; None if it does not — then the WAL does not
    continue the position (start, seed). Reads the frames after it a batch at a time."""
    with open(path, "rb") as f:
        return _commits(f, header, start, seed) if _follows(f, header, start, seed) else None


def tail(path: Path, header: WalHeader, start: int, seed: Checksum) -> list[Frame] | None:
    """`tail_commits`, but every committed frame after the position, held in memory."""
    with open(path, "rb") as f:
        if not _follows(f, header, start, seed):
            return None
        frames = [fr for batch in valid_batches(f, header, start, seed) for fr in batch]
    last_commit = max((i for i, fr in enumerate(frames) if fr.commit_size), default=-1)
    return frames[: last_commit + 1]


def last_commit(path: Path) -> tuple[WalHeader | None, Commit | None]:
    """The header and the last commit SQLite's recovery would keep (None: no valid header, or
    no commit in the WAL), reading the WAL a batch at a time."""
    header = read_header(path)
    if header is None:
        return None, None
    try:
        with open(path, "rb") as f:
            commits = _commits(f, header, 0, header.checksum)
    except FileNotFoundError:
        return None, None
    return header, commits[-1] if commits else None


def scan(path: Path) -> tuple[WalHeader | None, list[Frame]]:
    """The header and every committed frame (valid frames up to the last commit frame), as SQLite's
    recovery would see them, held in memory. An absent, empty or invalid WAL gives (None or
    header, [])."""
    header = read_header(path)
    if header is None:
        return None, []
    return header, tail(path, header, 0, header.checksum) or []


# -- shipping: whole batches at a time, no per-frame objects --------------------------------------


@dataclass(frozen=True)
class Records:
    """Frames [start, start + count) of a WAL as a segment's frames chunk stores them: `body` is
    (u32 page_no, u32 commit_size, page) per frame; `commits` the WAL lengths in frames after
    each commit frame among them; `checksum` that of the last frame."""

    start: int
    count: int
    body: bytes
    commits: list[int]
    checksum: Checksum


@dataclass(frozen=True)
class Span:
    """Frames [start, stop) of one WAL, read whole (`raw`, fewer bytes if the file is shorter),
    for `check_spans`. `seed` is the checksum of frame start - 1 (the header's for start 0)."""

    header: WalHeader
    start: int
    stop: int
    seed: Checksum
    raw: bytes


def read_span(fd: int, header: WalHeader, start: int, stop: int, seed: Checksum) -> Span:
    """Frames [start, stop) of the WAL open at `fd`, unchecked (one read)."""
    return Span(
        header,
        start,
        stop,
        seed,
        os.pread(fd, header.frame_size * (stop - start), header.frame_offset(start)),
    )


def read_records(fd: int, header: WalHeader, start: int, stop: int, seed: Checksum) -> Iterator[Records]:
    """Frames [start, stop) of the WAL open at `fd`, validated as `read_batches` validates them
    (salts, checksum chain from `seed`), about BATCH_BYTES at a time, without per-frame Python.
    Raises WalCorrupt, while iterating, at the first frame that is invalid or missing (the
    batches before it are valid)."""
    per_batch = _per_batch(header)
    index = start
    while index < stop:
        end = min(index + per_batch, stop)
        records = check_spans([read_span(fd, header, index, end, seed)])[0]
        if isinstance(records, WalCorrupt):
            raise records
        yield records
        index, seed = end, records.checksum


def check_spans(spans: list[Span]) -> list[Records | WalCorrupt]:
    """Each span validated and converted, in order: its Records, or a WalCorrupt naming the first
    frame that is invalid (salts other than its header's, no page number, a checksum that does
    not continue the one before it) or missing. The spans of several WALs are checked with a
    few numpy operations for all of them: a flush's cost per dirty tenant stays small.

    Each frame is checked against its predecessor's *stored* checksum (the first against the
    seed), all at once; by induction a run of frames that pass is exactly the chain SQLite's
    recovery accepts."""
    out: list[Records | WalCorrupt] = [WalCorrupt("")] * len(spans)
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, span in enumerate(spans):
        groups.setdefault((span.header.frame_size, span.header.big_endian), []).append(i)
    for (size, big_endian), members in groups.items():
        for i, result in zip(
            members, _check_group([spans[i] for i in members], size, big_endian), strict=True
        ):
            out[i] = result
    return out


def _check_group(spans: list[Span], size: int, big_endian: bool) -> list[Records | WalCorrupt]:
    counts = [len(s.raw) // size for s in spans]
    total = sum(counts)
    if total == 0:
        return [_short(s, 0) if s.stop > s.start else _empty(s) for s in spans]
    raw = b"".join(s.raw[: c * size] for s, c in zip(spans, counts, strict=True))
    starts = np.cumsum([0, *counts[:-1]])
    fields = np.frombuffer(raw, dtype=">u4").reshape(total, size // 4)
    words = np.frombuffer(raw, dtype=">u4" if big_endian else "<u4").reshape(total, size // 4)
    contributions, pairs = _word_contributions(
        np.concatenate([words[:, :2], words[:, 6:]], axis=1).astype(np.uint64)
    )
    m = _coefficients(pairs)[2]
    stored = fields[:, 4:6].astype(np.uint64)
    previous = np.empty_like(stored)
    previous[1:] = stored[:-1]
    firsts = starts[np.array(counts) > 0]
    previous[firsts] = [s.seed for s, c in zip(spans, counts, strict=True) if c]
    s1 = (np.uint64(m[0]) * previous[:, 0] + np.uint64(m[1]) * previous[:, 1] + contributions[:, 0]) & _MASK
    s2 = (np.uint64(m[2]) * previous[:, 0] + np.uint64(m[3]) * previous[:, 1] + contributions[:, 1]) & _MASK
    salts = np.repeat(
        np.array([(s.header.salt1, s.header.salt2) for s in spans], dtype=np.uint64), counts, axis=0
    )
    ok = (fields[:, 2] == salts[:, 0]) & (fields[:, 3] == salts[:, 1]) & (fields[:, 0] != 0)
    ok &= (s1 == stored[:, 0]) & (s2 == stored[:, 1])
    frames = np.frombuffer(raw, dtype=np.uint8).reshape(total, size)
    body = np.empty((total, size - FRAME_HEADER_SIZE + 8), dtype=np.uint8)
    body[:, :8] = frames[:, :8]  # page number and commit size, big-endian as in the WAL
    body[:, 8:] = frames[:, FRAME_HEADER_SIZE:]
    bad = np.flatnonzero(~ok).tolist()
    commit_rows = np.flatnonzero(fields[:, 1]).tolist()
    results: list[Records | WalCorrupt] = []
    for span, count, first in zip(spans, counts, starts.tolist(), strict=True):
        end = first + count
        at = bisect_left(bad, first)
        failed = bad[at] if at < len(bad) and bad[at] < end else None
        if span.stop <= span.start:
            results.append(_empty(span))
        elif failed is not None:
            results.append(WalCorrupt(f"WAL frame {span.start + failed - first} fails its salt or checksum"))
        elif count < span.stop - span.start:
            results.append(_short(span, count))
        else:
            lo, hi = bisect_left(commit_rows, first), bisect_left(commit_rows, end)
            commits = [span.start + r - first + 1 for r in commit_rows[lo:hi]]
            checksum = (int(fields[end - 1, 4]), int(fields[end - 1, 5]))
            results.append(Records(span.start, count, body[first:end].tobytes(), commits, checksum))
    return results


def _empty(span: Span) -> Records:
    return Records(span.start, 0, b"", [], span.seed)


def _short(span: Span, count: int) -> WalCorrupt:
    return WalCorrupt(f"WAL ends at frame {span.start + count}, expected {span.stop}")
