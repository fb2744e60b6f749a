"""The S3 test server for tests: `ops.moto_s3.MotoServer` (moto in a child process on loopback,
shared with `sqlfleet bench backups`), plus a fresh key prefix per test."""

from __future__ import annotations

import uuid

from ops.moto_s3 import BUCKET, REGION, MotoServer, aws_env

__all__ = ["BUCKET", "REGION", "MotoServer", "aws_env", "unique_prefix"]


def unique_prefix(label: str = "t") -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"
