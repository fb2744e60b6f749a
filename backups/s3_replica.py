"""A replica in an S3-compatible bucket (AWS S3, MinIO, Cloudflare R2, moto) through boto3.

Only the plain object API is used — PutObject, GetObject with Range, HeadObject,
ListObjectsV2, DeleteObjects — with no multipart uploads, versioning, tagging or default
CRC checksums (boto3 >= 1.36 adds those to every request; several S3 look-alikes reject them),
so every S3 look-alike that speaks SigV4 works. Credentials come from boto3's standard chain
(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws, web identity, instance roles).
A conditional create is PutObject with `If-None-Match: *` (AWS since 2024, MinIO, R2, moto >= 5.1),
always signed: moto answers an unsigned failing one with an empty 403, and AWS requires SigV4.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    CredentialRetrievalError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    SSLError,
)

from backups.errors import ObjectExists, ReplicaError, ReplicaNotFound, ReplicaUnavailable
from backups.replica import ObjectInfo, ReplicaClient, check_range, validate_key, validate_prefix
from backups.spool import PIECE

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import PutObjectRequestTypeDef

DELETE_BATCH = 1000  # DeleteObjects' limit per request
_CHECKSUM_HEADERS = ("x-amz-checksum-", "x-amz-sdk-checksum-")
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "TooManyRequests",
        "RequestLimitExceeded",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
    }
)
# 412: the object exists. 409: AWS's answer to a conditional write racing another on the same key
# (moto never sends it); the other may land, so it means the same: someone else wrote it.
_EXISTS_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_CREDENTIAL_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}
)


class S3Replica(ReplicaClient):
    """ReplicaClient over `s3://bucket/prefix`. One instance is shared by all threads (boto3
    clients are thread-safe); `max_connections` should cover the threads that use it at once.

    Timeouts bound every call: botocore makes at most `max_attempts` tries in all (backing off
    between them), each bounded by the timeouts, then ReplicaUnavailable; it never hangs."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        force_path_style: bool = False,
        session: boto3.session.Session | None = None,
        max_connections: int = 32,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_attempts: int = 3,
    ) -> None:
        if not bucket:
            raise ReplicaError("S3 replica needs a bucket name")
        if prefix:
            validate_prefix(prefix)
        self.bucket = bucket
        self.prefix = prefix.rstrip("/") + "/" if prefix else ""
        self.endpoint_url = endpoint_url
        config = Config(
            region_name=region,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
            max_pool_connections=max_connections,
            s3={"addressing_style": "path" if force_path_style else "auto"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        with _translated(f"s3://{bucket}/{self.prefix}", bucket):
            try:
                self._s3: S3Client = (session or boto3.session.Session()).client(
                    "s3", endpoint_url=endpoint_url, config=config
                )
            except ValueError as e:  # botocore's complaint about a malformed endpoint URL
                raise ReplicaError(f"S3 endpoint {endpoint_url!r}: {e}", bucket=bucket) from e
        self._s3.meta.events.register("before-sign.s3.DeleteObjects", _add_content_md5)

    def __repr__(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"S3Replica('s3://{self.bucket}/{self.prefix}'{where})"

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        self.put_file(key, io.BytesIO(data), if_absent=if_absent)

    def put_file(self, key: str, source: IO[bytes], *, if_absent: bool = False) -> None:
        # One PutObject streamed from the file (botocore sends a file body in pieces and seeks
        # back to retry; checked against moto: memory stays flat for a 200 MB body). Content-MD5
        # makes the server reject a body damaged in transit; every S3 look-alike supports it,
        # unlike the newer CRC checksum headers.
        full_key = self._key(key)
        start = source.tell()
        digest = hashlib.md5(usedforsecurity=False)
        while piece := source.read(PIECE):
            digest.update(piece)
        source.seek(start)
        request: PutObjectRequestTypeDef = {
            "Bucket": self.bucket,
            "Key": full_key,
            "Body": source,
            "ContentMD5": base64.b64encode(digest.digest()).decode(),
        }
        if if_absent:
            request["IfNoneMatch"] = "*"
        with self._translated(key):
            self._s3.put_object(**request)

    def get(self, key: str) -> bytes:
        with self._translated(key):
            response = self._s3.get_object(Bucket=self.bucket, Key=self._key(key))
            return _read_body(response)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        full_key = self._key(key)
        check_range(start, length)
        if length == 0:
            self.head(key)  # still raises ReplicaNotFound for a missing object
            return b""
        with self._translated(key):
            try:
                response = self._s3.get_object(
                    Bucket=self.bucket, Key=full_key, Range=f"bytes={start}-{start + length - 1}"
                )
            except ClientError as e:
                if _status(e) == 416:  # the object exists; the range starts at or past its end
                    return b""
                raise
            data = _read_body(response)
        if "ContentRange" not in response:  # a server that ignored Range sent the whole object
            data = data[start : start + length]
        return data

    def head(self, key: str) -> ObjectInfo:
        with self._translated(key):
            response = self._s3.head_object(Bucket=self.bucket, Key=self._key(key))
        return ObjectInfo(key, response["ContentLength"], response["LastModified"])

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        paginator = self._s3.get_paginator("list_objects_v2")
        cut = len(self.prefix)
        with self._translated(prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for obj in page.get("Contents", []):
                    key = obj["Key"][cut:]
                    if not key or key.endswith("/"):
                        continue  # "folder" markers made by consoles are not objects
                    yield ObjectInfo(key, obj["Size"], obj["LastModified"])

    def delete(self, keys: Iterable[str]) -> None:
        full_keys = [self._key(k) for k in keys]
        for i in range(0, len(full_keys), DELETE_BATCH):
            batch = full_keys[i : i + DELETE_BATCH]
            with self._translated(batch[0][len(self.prefix) :]):
                response = self._s3.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            self._raise_delete_errors(response.get("Errors", []))

    def close(self) -> None:
        self._s3.close()

    def _key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _translated(self, key: str) -> contextlib.AbstractContextManager[None]:
        return _translated(key, self.bucket)

    def _raise_delete_errors(self, errors: Sequence[Any]) -> None:
        failed = [e for e in errors if e.get("Code") not in _NOT_FOUND_CODES]
        if not failed:
            return
        first = failed[0]
        transient = all(e.get("Code") in _TRANSIENT_CODES for e in failed)
        kind = ReplicaUnavailable if transient else ReplicaError
        raise kind(
            f"S3 delete failed for {len(failed)} keys, first {first.get('Key')!r}: "
            f"{first.get('Code')} {first.get('Message', '')}".rstrip(),
            bucket=self.bucket,
        )


def _content_md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def _add_content_md5(request: Any, **_: Any) -> None:
    """DeleteObjects must carry an integrity header. boto3 >= 1.36 sends a CRC32 one, which
    MinIO before 2025 and other look-alikes refuse (MissingContentMD5); send Content-MD5
    instead, as boto3 did before, which every implementation accepts."""
    for name in [h for h in request.headers if h.lower().startswith(_CHECKSUM_HEADERS)]:
        del request.headers[name]
    request.headers["Content-MD5"] = _content_md5(request.body or b"")


def _read_body(response: Any) -> bytes:
    body = response["Body"]
    try:
        data: bytes = body.read()
    finally:
        body.close()
    return data


def _status(error: ClientError) -> int:
    status: int = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return status


@contextlib.contextmanager
def _translated(key: str, bucket: str) -> Iterator[None]:
    """Turn botocore's exceptions into the ReplicaError the interface promises."""
    try:
        yield
    except ClientError as e:
        raise _client_error(e, key, bucket) from e
    except SSLError as e:  # a certificate problem does not fix itself
        raise ReplicaError(f"S3 TLS error: {e}", bucket=bucket) from e
    except (ConnectionError, HTTPClientError, IncompleteReadError, CredentialRetrievalError) as e:
        raise ReplicaUnavailable(f"S3 unreachable: {e}", bucket=bucket) from e
    except (NoCredentialsError, PartialCredentialsError) as e:
        raise ReplicaError(
            f"S3 credentials: {e}",
            bucket=bucket,
            hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
        ) from e
    except BotoCoreError as e:
        raise ReplicaError(f"S3 client error: {e}", bucket=bucket) from e


def _client_error(e: ClientError, key: str, bucket: str) -> ReplicaError:
    code = str(e.response.get("Error", {}).get("Code", ""))
    message = str(e.response.get("Error", {}).get("Message", "")) or code
    status = _status(e)
    if code == "NoSuchBucket":
        return ReplicaError(f"S3 bucket {bucket!r} does not exist", bucket=bucket)
    if code in _NOT_FOUND_CODES or (status == 404 and not code):
        return ReplicaNotFound(f"no replica object {key!r}", key=key)
    if code in _EXISTS_CODES or status == 412:
        return ObjectExists(f"replica object {key!r} exists already (S3 {code or status})", key=key)
    if status >= 500 or status == 429 or code in _TRANSIENT_CODES:
        return ReplicaUnavailable(f"S3 {code or status}: {message}", bucket=bucket)
    if status == 403 or code in _CREDENTIAL_CODES:
        return ReplicaError(
            f"S3 refused access to {bucket!r}: {code} {message}",
            bucket=bucket,
            hint="check the credentials, the bucket policy and s3_region",
        )
    return ReplicaError(f"S3 {code or status}: {message}", key=key, bucket=bucket)
