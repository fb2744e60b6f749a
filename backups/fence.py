"""The data-path fence: once another node has fenced an incarnation, nothing that incarnation
ships can become part of the backups, whatever its clock or its etcd lease says.

A shipper given a writer identity (a node and one incarnation of it: a new process, a new
incarnation) names its segments `segments/<node>/<incarnation>/<seq:012d>.seg`, seq 1, 2, 3, ...
with no gap, each created conditionally (`put(..., if_absent=True)`: S3 `If-None-Match: *`).
A node taking over an incarnation lists its prefix (S3 LIST is strongly consistent) and creates
a FENCE at the next seq, under the very key the old writer's next segment would take: of the
two conditional creates of that key exactly one wins, so either the fence is there and the old
writer's PUT fails (412), or the old writer's segment landed first and the fencer tries the
next seq. A FENCE is a segment with no chunk whose index meta holds `"fence"`; that is how a
reader tells it from a segment (the name cannot differ: the two must race for one key).

Who reads the backups honours fences: a catalog rebuild (`BelowFences`) takes an incarnation's
segments strictly below its fence and never records the fence itself, so retention, which deletes
only what the catalog knows, never deletes it. Retention also keeps the newest segment of every
incarnation (`keep_newest`): a fencer places its fence above the highest seq it can list, so
deleting the top of a live incarnation would let the fence land below the writer.

Keys of the older flat form (`segments/<ms>-<server>-<n>.seg`, a shipper without a writer
identity) are outside all of this and read as before.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from backups.errors import ObjectExists, ReplicaNotFound, ReplicaUnavailable, SegmentCorrupt
from backups.replica import ReplicaClient
from backups.sealed_replica import SealedReplica
from backups.segment import RangeReader, index_only, read_index

log = logging.getLogger(__name__)

SEGMENTS = "segments/"
FENCE_ATTEMPTS = 64  # a writer that lands a segment between our LIST and PUT each time, this often
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class Writer:
    """One incarnation of one node: who writes a segment sequence. Both are key components
    (letters, digits, '.', '-', '_', starting with a letter or digit; the incarnation is e.g. the
    etcd lease id in hex). Raises ValueError for anything else."""

    node: str
    incarnation: str

    def __post_init__(self) -> None:
        for what, value in (("node", self.node), ("incarnation", self.incarnation)):
            if not _NAME.fullmatch(value):
                raise ValueError(f"{what} {value!r}: 1-128 letters, digits, '.', '-' or '_' expected")

    @property
    def prefix(self) -> str:
        return f"{SEGMENTS}{self.node}/{self.incarnation}/"

    def key(self, seq: int) -> str:
        return f"{self.prefix}{seq:012d}.seg"

    def meta(self) -> dict[str, object]:
        """What a segment's index records of its writer (with the server id and the time)."""
        return {"node": self.node, "incarnation": self.incarnation}


def parse_key(key: str) -> tuple[Writer, int] | None:
    """(writer, seq) of a segment key of the incarnation form (rekeyed copies, `<seq>.r<hex>.seg`,
    included); None for a key of the flat form, or anything else."""
    parts = key.split("/")
    if len(parts) != 4 or f"{parts[0]}/" != SEGMENTS:
        return None
    stem = parts[3].split(".", 1)[0]
    if not (stem.isascii() and stem.isdigit()):
        return None
    try:
        return Writer(parts[1], parts[2]), int(stem)
    except ValueError:
        return None


def is_fence(meta: dict[str, object]) -> bool:
    return "fence" in meta


def fence_body(writer: Writer, by: str) -> bytes:
    now = time.time()
    return index_only({**writer.meta(), "created": now, "fence": {"by": by, "at": now}})


def top(replica: ReplicaClient, writer: Writer) -> tuple[int, bool]:
    """(highest seq listed under the incarnation, 0 if none; whether that object is a FENCE).
    Raises ReplicaError (ReplicaNotFound if the top object went between the LIST and its read:
    a rekey replacing it by a copy; look again)."""
    seq, key = 0, None
    for info in replica.list(writer.prefix):
        parsed = parse_key(info.key)
        if parsed is not None and parsed[0] == writer and parsed[1] >= seq:
            seq, key = parsed[1], info.key
    if key is None:
        return 0, False
    try:
        meta, _ = read_index(_reader(replica), key)
    except SegmentCorrupt:
        return seq, False  # not even a segment: certainly no FENCE (one goes above it)
    return seq, is_fence(meta)


def written_by(replica: ReplicaClient, key: str, writer: Writer) -> bool:
    """Whether the object at `key` is a segment `writer` wrote (not a FENCE, not another's)."""
    try:
        meta, _ = read_index(_reader(replica), key)
    except SegmentCorrupt:
        return False  # not a segment at all: certainly not ours
    return (
        not is_fence(meta)
        and meta.get("node") == writer.node
        and meta.get("incarnation") == writer.incarnation
    )


def _reader(replica: ReplicaClient) -> RangeReader:
    """Reads an index whether or not it is sealed: a FENCE says nothing secret, and a sealed
    writer must see one written without encryption (or before it was turned on) as a fence."""
    if isinstance(replica, SealedReplica):
        sealed = replica
        return lambda key, start, length: sealed.read_range(key, start, length, allow_plaintext=True)
    return replica.get_range


def fence_incarnation(replica: ReplicaClient, node: str, incarnation: str, by: str = "") -> int:
    """Fence incarnation `incarnation` of `node`: afterwards no segment of it can be created at or
    past the returned seq, and readers take its segments strictly below it. Idempotent: a FENCE
    already there (another fencer's, or ours) is reused. `by` names the fencer (recorded).
    Raises ReplicaError; ReplicaUnavailable if the old writer kept landing segments first
    FENCE_ATTEMPTS times in a row."""
    writer = Writer(node, incarnation)
    for _ in range(FENCE_ATTEMPTS):
        try:
            seq, fenced = top(replica, writer)
        except ReplicaNotFound:
            continue
        if fenced:
            return seq
        try:
            replica.put(writer.key(seq + 1), fence_body(writer, by), if_absent=True)
        except ObjectExists:
            continue  # the old writer's in-flight PUT landed there, or another fencer's: look again
        log.warning("fenced incarnation %s of node %s at seq %d", incarnation, node, seq + 1)
        return seq + 1
    raise ReplicaUnavailable(
        f"could not fence incarnation {incarnation} of node {node}: it kept writing first",
        node=node,
    )


def incarnation_segments(replica: ReplicaClient, node: str, incarnation: str) -> tuple[list[str], int | None]:
    """(the keys of the incarnation's segments below its fence, in seq order; the fence's seq,
    None if it is not fenced). Reads the index of the top object only. Raises ReplicaError."""
    writer = Writer(node, incarnation)
    keyed = [(p[1], o.key) for o in replica.list(writer.prefix) if (p := parse_key(o.key)) and p[0] == writer]
    seq, fenced = top(replica, writer)
    limit = seq if fenced else None
    return [k for s, k in sorted(keyed) if limit is None or s < limit], limit


class BelowFences:
    """For a reader walking segment keys in key order (as `list` yields them): which to read
    (`wanted`), and, once its index is read, whether it is a FENCE (`fence`), which is no
    segment: never recorded in a catalog. An incarnation's objects at or past its fence come
    after it in key order; none should exist (its writer's creates there fail), but if one
    does it is not part of the backups."""

    def __init__(self) -> None:
        self._fences: dict[Writer, int] = {}

    def wanted(self, key: str) -> bool:
        parsed = parse_key(key)
        return parsed is None or parsed[0] not in self._fences or parsed[1] < self._fences[parsed[0]]

    def fence(self, key: str, meta: dict[str, object]) -> bool:
        if not is_fence(meta):
            return False
        parsed = parse_key(key)
        if parsed is not None:
            writer, seq = parsed
            self._fences[writer] = min(seq, self._fences.get(writer, seq))
        return True


def keep_newest(keys: list[str], staying: Callable[[], Iterable[str]]) -> list[str]:
    """`keys` (segments to delete) less the newest segment of each incarnation among `keys` and
    `staying()` (the segments that stay; only called if a key is of the incarnation form): what
    stays must still show a fencer the incarnation's highest seq. Of several objects at that seq
    (a rekeyed copy and its original) one is kept."""
    parsed = {k: p for k in keys if (p := parse_key(k)) is not None}
    if not parsed:
        return keys
    writers = {writer for writer, _ in parsed.values()}
    others = list(staying())
    tops: dict[Writer, int] = {}
    for key in [*keys, *others]:
        p = parse_key(key)
        if p is not None and p[0] in writers:
            tops[p[0]] = max(p[1], tops.get(p[0], 0))
    stays = {p for k in others if (p := parse_key(k)) is not None}
    kept: dict[Writer, str] = {}
    # a rekeyed copy (`<seq>.r<hex>.seg`, newer: more dots) over its original
    for key in sorted(parsed, key=lambda k: (k.count("."), k)):
        writer, seq = parsed[key]
        if seq == tops[writer] and (writer, seq) not in stays:
            kept[writer] = key
    keep = set(kept.values())
    return [k for k in keys if k not in keep]
