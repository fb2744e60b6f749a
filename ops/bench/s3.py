"""The S3 side of `sqlfleet bench backups`: the segments read back from the bucket the servers
ship to (an `ops.moto_s3.MotoServer`), and the servers' shipping metrics (lag histogram, PUT
counter) from /metrics."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import httpx

from backups.segment import FRAMES, PREFIX_SIZE, ChunkRef, index_length, parse_index
from ops.bench.errors import BenchError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

BUCKET = "sqlfleet-bench"
LAG = "sqlfleet_backup_lag_seconds"
SEGMENTS = "sqlfleet_backup_segments_uploaded_total"


class Segments:
    """The segment objects under one server's prefix, read straight from the bucket."""

    def __init__(self, s3: S3Client, bucket: str, prefix: str) -> None:
        self.s3, self.bucket, self.prefix = s3, bucket, f"{prefix}/segments/"

    def after(self, key: str = "") -> list[tuple[str, int]]:
        """(key, size) of every segment after `key`, oldest first (keys start with their time)."""
        found = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix, StartAfter=key or self.prefix
        ):
            found += [(o["Key"], o["Size"]) for o in page.get("Contents", [])]
        return found

    def last(self) -> str:
        keys = self.after()
        return keys[-1][0] if keys else ""

    def chunks(self, key: str) -> list[ChunkRef]:
        head = self._read(key, 64 << 10)
        need = PREFIX_SIZE + index_length(head)
        return parse_index(head if len(head) >= need else self._read(key, need), key)[1]

    def dirty(self, keys: Sequence[tuple[str, int]]) -> dict[str, Any]:
        """How many tenants had new commits in each segment, and the segments' sizes."""
        tenants = [len({c.tenant for c in self.chunks(k) if c.kind == FRAMES}) for k, _ in keys]
        n = len(keys)
        return {
            "segments": n,
            "dirty_tenants_per_segment_mean": round(sum(tenants) / n, 1) if n else 0.0,
            "dirty_tenants_per_segment_max": max(tenants, default=0),
            "segment_bytes_mean": round(sum(size for _, size in keys) / n) if n else 0,
        }

    def _read(self, key: str, length: int) -> bytes:
        return self.s3.get_object(Bucket=self.bucket, Key=key, Range=f"bytes=0-{length - 1}")["Body"].read()


# -- metrics ----------------------------------------------------------------------------------------


def scrape(url: str) -> dict[str, float]:
    """The backup, restore and pool samples of /metrics, by full name (labels included)."""
    samples = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(("sqlfleet_backup", "sqlfleet_restore", "sqlfleet_pool")):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def lag_histogram(before: dict[str, float], after: dict[str, float]) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of the lag histogram's buckets, as deltas."""
    buckets = []
    for name in after:
        if name.startswith(f'{LAG}_bucket{{le="'):
            bound = name.split('le="')[1].rstrip('"}')
            buckets.append((math.inf if bound == "+Inf" else float(bound), delta(before, after, name)))
    return sorted(buckets)


def quantile(buckets: Sequence[tuple[float, float]], q: float) -> float:
    """Prometheus' histogram_quantile: linear inside the bucket holding rank q; the top finite
    bound when that is the +Inf bucket; 0 for an empty histogram."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return 0.0
    rank, lower, below = q * total, 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / max(cumulative - below, 1e-12)
        lower, below = bound, cumulative
    return lower


def share_within(buckets: Sequence[tuple[float, float]], bound: float) -> float:
    """Exact share of observations <= `bound`, which must be a bucket edge."""
    total = buckets[-1][1] if buckets else 0.0
    within = next((c for b, c in buckets if b == bound), None)
    if within is None:
        raise BenchError(f"the lag histogram has no {bound} s bucket edge")
    return within / total if total else 1.0
