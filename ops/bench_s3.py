"""The S3 side of `sqlfleet bench backups`: a moto server to ship to, the segments read back from
its bucket, and the server's shipping metrics (lag histogram, PUT counter) from /metrics."""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from backups.segment import FRAMES, PREFIX_SIZE, ChunkRef, index_length, parse_index
from ops.bench import BenchError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

BUCKET, REGION, _KEY = "sqlfleet-bench", "us-east-1", "bench"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": _KEY,  # moto takes any credentials
    "AWS_SECRET_ACCESS_KEY": _KEY,
    "AWS_DEFAULT_REGION": REGION,
    "AWS_CONFIG_FILE": os.devnull,  # and these keep a developer's ~/.aws out of it
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
LAG = "sqlfleet_backup_lag_seconds"
SEGMENTS = "sqlfleet_backup_segments_uploaded_total"


# -- S3 ---------------------------------------------------------------------------------------------


class MotoS3:
    """`python -m moto.server` on a free loopback port with one bucket; `close()` ends it."""

    def __init__(self, log_path: Path) -> None:
        if importlib.util.find_spec("moto") is None:
            raise BenchError("bench backups needs an S3 server: pip install 'moto[server]'")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        self.url, self.log_path = f"http://127.0.0.1:{port}", log_path
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        with open(log_path, "wb") as log:
            env = {**os.environ, **AWS_ENV}
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, wait: float = 30.0) -> None:
        """Wait for moto to answer, then create the bucket. Raises BenchError."""
        deadline = time.monotonic() + wait
        while self.proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                httpx.put(f"{self.url}/{BUCKET}", timeout=1).raise_for_status()
                return
            time.sleep(0.1)
        raise BenchError(f"moto did not come up within {wait:g} s; log {self.log_path}")

    def serve_args(self, prefix: str) -> list[str]:
        return [
            "--replica-url",
            f"s3://{BUCKET}/{prefix}",
            "--s3-endpoint-url",
            self.url,
            "--s3-region",
            REGION,
            "--s3-force-path-style",
            "true",
        ]

    def client(self) -> S3Client:
        """A boto3 client (thread-safe once made) for reading the bucket behind the servers."""
        import boto3
        from botocore.config import Config

        session = boto3.session.Session(
            aws_access_key_id=_KEY, aws_secret_access_key=_KEY, region_name=REGION
        )
        config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3})
        return session.client("s3", endpoint_url=self.url, config=config)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Segments:
    """The segment objects under one server's prefix, read straight from the bucket."""

    def __init__(self, s3: S3Client, prefix: str) -> None:
        self.s3, self.prefix = s3, f"{prefix}/segments/"

    def after(self, key: str = "") -> list[tuple[str, int]]:
        """(key, size) of every segment after `key`, oldest first (keys start with their time)."""
        found = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=self.prefix, StartAfter=key or self.prefix
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
        return self.s3.get_object(Bucket=BUCKET, Key=key, Range=f"bytes=0-{length - 1}")["Body"].read()


@contextlib.contextmanager
def aws_env() -> Iterator[None]:
    """Dummy AWS credentials in this process's environment while server processes start: they
    inherit it, and the standard AWS credential chain reads it there."""
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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
