"""The fleet metadata's objects in the replica: their keys, their documents, and reading what
one server's namespace holds (backups/fleet_meta.py publishes and uses them).

Every server writes only under its own namespace, `fleet/<server id>/`, so servers sharing a
bucket never overwrite each other; a reader merges the namespaces (newest record wins). Each
object is one PUT (atomic), zstd-compressed, and sealed like every object when encryption is on
(SealedReplica). Self-describing: each document (a group archive's `group.json` likewise) says
{"format": "sqlfleet-fleet", "version": 1, "kind": ...}.

fleet/<server>/server.json.zst              kind "server": `token_key`, the fingerprint of the
                                            public key that signs this server's tenant tokens
fleet/<server>/tenants/base-<seq>.json.zst  kind "tenants": every record of the server as of <seq>
fleet/<server>/tenants/log-<seq>.json.zst   kind "tenants": the records changed since <seq> - 1
fleet/<server>/groups/<name>.tar.zst        one schema group (schema_sync/archive.py)
fleet/cluster.json.zst                      kind "cluster": `cluster`, the name of the cluster
                                            whose prefix this is (written by its first node;
                                            absent for a single server's)

A tenant's state is the newest base plus the logs after it, in order. A record:
{"created", "group", "incarnation", "token_generation", "updated", "deleted"} (times in unix
seconds; `deleted` null while the tenant exists). The tenant's schema version is in its own file.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import zstandard

from backups.errors import BackupBroken, ObjectExists, ReplicaNotFound
from backups.replica import ObjectInfo
from backups.sealed_replica import SealedReplica

PREFIX = "fleet/"
FORMAT = "sqlfleet-fleet"
VERSION = 1
_KEY = re.compile(
    r"fleet/(?P<server>[0-9a-z]+)/(?:(?P<doc>server)\.json\.zst"
    r"|tenants/(?P<kind>base|log)-(?P<seq>\d{12})\.json\.zst"
    r"|groups/(?P<group>[a-z0-9][a-z0-9_-]{0,62})\.tar\.zst)"
)
_READERS = 8  # logs of a namespace fetched at once
_READS = 3  # a namespace read again when its writer deleted an object meanwhile (compaction)


CLUSTER_KEY = f"{PREFIX}cluster.json.zst"


def read_cluster(replica: SealedReplica) -> str | None:
    """The name of the cluster whose prefix this is; None if no cluster claimed it. Raises
    ReplicaError, BackupBroken."""
    try:
        data = replica.get(CLUSTER_KEY)
    except ReplicaNotFound:
        return None
    name = unpack(CLUSTER_KEY, data, "cluster").get("cluster")
    if not isinstance(name, str):
        raise BackupBroken(f"fleet metadata {CLUSTER_KEY} names no cluster")
    return name


def claim_cluster(replica: SealedReplica, name: str, server: str) -> str:
    """Record that this prefix is cluster `name`'s unless a cluster claimed it first; returns
    the name recorded (another's, if one was first). Raises ReplicaError, BackupBroken."""
    with contextlib.suppress(ObjectExists):  # another node was first: its name counts
        replica.put(CLUSTER_KEY, pack("cluster", server, {"cluster": name}), if_absent=True)
    recorded = read_cluster(replica)
    if recorded is None:
        raise BackupBroken(f"fleet metadata {CLUSTER_KEY} vanished right after it was written")
    return recorded


def server_key(server: str) -> str:
    return f"{PREFIX}{server}/server.json.zst"


def tenants_prefix(server: str) -> str:
    return f"{PREFIX}{server}/tenants/"


def tenants_key(server: str, kind: str, seq: int) -> str:
    return f"{tenants_prefix(server)}{kind}-{seq:012d}.json.zst"


def group_key(server: str, name: str) -> str:
    return f"{PREFIX}{server}/groups/{name}.tar.zst"


@dataclass(frozen=True)
class TenantRecord:
    """What a restore needs to bring a tenant back as itself (see the module docstring)."""

    created: float
    group: str | None
    incarnation: str
    token_generation: int
    updated: float  # when this record was made: the newest of several namespaces' wins
    deleted: float | None = None

    def same_tenant(self, other: TenantRecord | None) -> bool:
        """Whether `other` says the same of the tenant (whenever it was made)."""
        return other is not None and asdict(self) | {"updated": 0} == asdict(other) | {"updated": 0}

    @classmethod
    def from_json(cls, raw: Any) -> TenantRecord:
        """Raises ValueError for anything but a record."""
        if not isinstance(raw, dict) or set(raw) != {f for f in cls.__dataclass_fields__}:
            raise ValueError(f"not a tenant record: {raw!r}"[:200])
        record = cls(**raw)
        numbers = (record.created, record.updated, record.deleted or 0.0, record.token_generation)
        if not all(isinstance(n, int | float) and not isinstance(n, bool) for n in numbers) or not (
            isinstance(record.incarnation, str) and isinstance(record.group, str | None)
        ):
            raise ValueError(f"not a tenant record: {raw!r}"[:200])
        return record


def pack(kind: str, server: str, body: dict[str, Any]) -> bytes:
    doc = {"format": FORMAT, "version": VERSION, "kind": kind, "server": server, "written": time.time()}
    return compress(json.dumps({**doc, **body}, separators=(",", ":")).encode())


def unpack(key: str, data: bytes, kind: str) -> dict[str, Any]:
    """The document stored under `key`. Raises BackupBroken for anything but a `kind` document
    of this format and version."""
    try:
        doc = json.loads(decompress(key, data))
    except ValueError as exc:
        raise BackupBroken(f"fleet metadata {key} cannot be decoded: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("kind") != kind:
        raise BackupBroken(f"fleet metadata {key} is not a {FORMAT} {kind} document")
    if doc.get("version") != VERSION:
        raise BackupBroken(
            f"fleet metadata {key} is version {doc.get('version')!r}; this server reads version {VERSION}"
        )
    return doc


def compress(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data)


def decompress(key: str, data: bytes) -> bytes:
    try:
        return zstandard.ZstdDecompressor().decompress(data)
    except zstandard.ZstdError as exc:
        raise BackupBroken(f"fleet metadata {key} cannot be decoded: {exc}") from None


@dataclass
class Namespace:
    """What one server's namespace holds, as read (`read_namespace`)."""

    server: str
    token_key: str | None = None  # None: no server document (yet)
    records: dict[str, TenantRecord] = field(default_factory=dict)
    seq: int = 0  # the newest base or log seen; the next one written is seq + 1
    base_bytes: int = 0  # stored size of the newest base
    logs: int = 0  # logs after the newest base ...
    log_bytes: int = 0  # ... and their stored bytes
    groups: dict[str, ObjectInfo] = field(default_factory=dict)


def parse_key(key: str) -> re.Match[str] | None:
    """The parts of a fleet metadata key; None for any other key (a newer kind: ignored)."""
    return _KEY.fullmatch(key)


def newest_seq(infos: Iterable[ObjectInfo]) -> int:
    """The highest base or log number among `infos` (0: none)."""
    return max((int(m["seq"]) for i in infos if (m := parse_key(i.key)) and m["seq"]), default=0)


def listing(replica: SealedReplica) -> dict[str, list[ObjectInfo]]:
    """Every fleet metadata object in the bucket, by namespace."""
    spaces: dict[str, list[ObjectInfo]] = {}
    for info in replica.list(PREFIX):
        match = parse_key(info.key)
        if match is not None:
            spaces.setdefault(match["server"], []).append(info)
    return spaces


def read_namespace(
    replica: SealedReplica, server: str, objects: Iterable[ObjectInfo] | None = None, own: bool = False
) -> Namespace:
    """Read a namespace: its server document and its newest base plus the logs after it (group
    archives are only listed). `own` also reads objects written before encryption was turned on
    (this server's own; the next base seals them). Raises ReplicaError, BackupBroken."""
    for attempt in range(_READS):
        infos = list(replica.list(f"{PREFIX}{server}/")) if objects is None or attempt else list(objects)
        try:
            return _read(replica, server, infos, own)
        except ReplicaNotFound:
            if attempt == _READS - 1:
                raise
    raise AssertionError("unreachable")


def _read(replica: SealedReplica, server: str, infos: list[ObjectInfo], own: bool) -> Namespace:
    space = Namespace(server)
    tenants: list[tuple[int, str, ObjectInfo]] = []
    for info in infos:
        match = parse_key(info.key)
        if match is None or match["server"] != server:
            continue
        if match["doc"]:
            doc = unpack(info.key, replica.get(info.key, allow_plaintext=own), "server")
            token_key = doc.get("token_key")
            space.token_key = token_key if isinstance(token_key, str) else None
        elif match["group"]:
            space.groups[match["group"]] = info
        else:
            tenants.append((int(match["seq"]), match["kind"], info))
    tenants.sort(key=lambda t: (t[0], t[1] == "log"))
    space.seq = max((seq for seq, _, _ in tenants), default=0)
    base = max((t for t in tenants if t[1] == "base"), default=None, key=lambda t: t[0])
    start = 0
    if base is not None:
        start = base[0]
        space.base_bytes = base[2].size
        space.records = _records(replica, base[2].key, own)
    logs = [info for seq, kind, info in tenants if kind == "log" and seq > start]
    # up to MAX_LOGS small GETs: a few at a time (a takeover reads a dead node's namespace
    # while its tenants wait), applied in order
    with ThreadPoolExecutor(_READERS, thread_name_prefix="sqlfleet-fleet-read") as pool:
        for info, records in zip(logs, pool.map(lambda i: _records(replica, i.key, own), logs), strict=True):
            space.records.update(records)
            space.logs += 1
            space.log_bytes += info.size
    return space


def _records(replica: SealedReplica, key: str, own: bool) -> dict[str, TenantRecord]:
    doc = unpack(key, replica.get(key, allow_plaintext=own), "tenants")
    raw = doc.get("tenants")
    if not isinstance(raw, dict):
        raise BackupBroken(f"fleet metadata {key} holds no tenants")
    try:
        return {str(tenant): TenantRecord.from_json(record) for tenant, record in raw.items()}
    except (TypeError, ValueError) as exc:
        raise BackupBroken(f"fleet metadata {key}: {exc}") from None


def records_body(seq: int, records: dict[str, TenantRecord]) -> dict[str, Any]:
    return {"seq": seq, "tenants": {tenant: asdict(r) for tenant, r in records.items()}}
