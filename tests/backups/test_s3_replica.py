"""S3-only behaviour: prefixes, error mapping, and outages that must fail fast, never hang."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from backups.errors import ReplicaError, ReplicaNotFound, ReplicaUnavailable
from backups.s3_replica import S3Replica
from tests.support.loopback import Quiet, loopback_http
from tests.support.s3 import BUCKET, MotoServer, unique_prefix
from tests.support.server import free_port


class _Quiet(Quiet):
    protocol_version = "HTTP/1.1"  # answers botocore's "Expect: 100-continue" at once


def failing_s3(status: int, code: str) -> contextlib.AbstractContextManager[str]:
    """An endpoint answering every request with this S3 error (fault injection)."""
    body = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()

    class Handler(_Quiet):
        def _fail(self) -> None:
            self.body()
            self.answer(status, body, "application/xml")

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _fail

    return loopback_http(Handler)


def _every_operation(replica: S3Replica) -> list[tuple[str, Callable[[], object]]]:
    return [
        ("put", lambda: replica.put("k", b"x")),
        ("get", lambda: replica.get("k")),
        ("get_range", lambda: replica.get_range("k", 0, 4)),
        ("head", lambda: replica.head("k")),
        ("list", lambda: list(replica.list())),
        ("delete", lambda: replica.delete(["k"])),
    ]


def _replica_at(s3: MotoServer, endpoint: str, **options: Any) -> S3Replica:
    return S3Replica(
        BUCKET, "p", endpoint_url=endpoint, force_path_style=True, session=s3.session(), **options
    )


def test_prefix_is_applied_and_isolates_replicas(s3: MotoServer) -> None:
    one, two = s3.replica(unique_prefix("one")), s3.replica(unique_prefix("two") + "/")
    one.put("seg/1", b"1")
    two.put("seg/2", b"2")
    raw = s3.client()
    raw.put_object(Bucket=BUCKET, Key=one.prefix + "folder/", Body=b"")  # a console "folder"

    assert [o.key for o in one.list()] == ["seg/1"]
    assert [o.key for o in two.list("seg/")] == ["seg/2"]
    assert raw.get_object(Bucket=BUCKET, Key=one.prefix + "seg/1")["Body"].read() == b"1"
    assert two.prefix.endswith("/") and not two.prefix.endswith("//")
    with pytest.raises(ReplicaNotFound):
        one.get("seg/2")
    raw.close()


def test_unreachable_endpoint_fails_fast_as_unavailable(s3: MotoServer) -> None:
    replica = _replica_at(s3, f"http://127.0.0.1:{free_port()}")  # default timeouts and retries

    for name, call in _every_operation(replica):
        started = time.monotonic()
        with pytest.raises(ReplicaUnavailable) as caught:
            call()
        assert time.monotonic() - started < 5, name
        assert caught.value.transient and caught.value.status == 503
    replica.close()


def test_hung_server_times_out_as_unavailable(s3: MotoServer) -> None:
    replica = s3.replica(unique_prefix(), read_timeout=0.5, connect_timeout=0.5, max_attempts=1)
    replica.put("k", b"before")
    s3.freeze()

    started = time.monotonic()
    with pytest.raises(ReplicaUnavailable):
        replica.get("k")
    assert time.monotonic() - started < 5

    s3.thaw()
    assert replica.get("k") == b"before"
    replica.close()


def test_stopped_server_is_unavailable_and_keeps_data_when_started(s3: MotoServer) -> None:
    replica = s3.replica(unique_prefix(), max_attempts=1)
    replica.put("k", b"kept")
    assert replica.get("k") == b"kept"

    s3.stop()
    for name, call in _every_operation(replica):
        with pytest.raises(ReplicaUnavailable):
            call()
        assert name

    s3.start()
    assert replica.get("k") == b"kept"
    replica.put("k2", b"after")
    assert [o.key for o in replica.list()] == ["k", "k2"]
    replica.close()


def test_stop_cuts_requests_in_flight(s3: MotoServer) -> None:
    with socket.create_connection(("127.0.0.1", s3.port), timeout=5) as upload:
        upload.sendall(
            f"PUT /{BUCKET}/half HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode() + b"x" * 10
        )
        time.sleep(0.2)  # let the server start reading the body

        s3.stop()

        with contextlib.suppress(ConnectionResetError):
            assert upload.recv(1024) == b""  # closed, not left waiting for the rest


def test_killed_server_restarts_empty_with_its_bucket(s3: MotoServer) -> None:
    replica = s3.replica(unique_prefix(), max_attempts=1)
    replica.put("k", b"lost")

    s3.kill()
    with pytest.raises(ReplicaUnavailable):
        replica.get("k")
    s3.start()

    with pytest.raises(ReplicaNotFound):
        replica.get("k")
    replica.put("k", b"new")
    assert replica.get("k") == b"new"
    replica.close()


def test_missing_bucket_is_a_permanent_error_not_not_found(s3: MotoServer) -> None:
    replica = s3.replica("p", bucket="no-such-bucket")

    for call in (lambda: replica.put("k", b"x"), lambda: replica.get("k"), lambda: list(replica.list())):
        with pytest.raises(ReplicaError) as caught:
            call()
        assert type(caught.value) is ReplicaError
        assert not caught.value.transient
        assert "no-such-bucket" in caught.value.message
    replica.close()


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (503, "SlowDown", ReplicaUnavailable),
        (500, "InternalError", ReplicaUnavailable),
        (502, "BadGateway", ReplicaUnavailable),
        (429, "TooManyRequests", ReplicaUnavailable),
        (403, "AccessDenied", ReplicaError),
        (403, "SignatureDoesNotMatch", ReplicaError),
        (400, "InvalidArgument", ReplicaError),
        (404, "NoSuchKey", ReplicaNotFound),
    ],
)
def test_server_errors_map_to_replica_errors(
    s3: MotoServer, status: int, code: str, expected: type[ReplicaError]
) -> None:
    with failing_s3(status, code) as endpoint:
        replica = _replica_at(s3, endpoint, max_attempts=1)
        for name, call in _every_operation(replica):
            if name == "delete" and expected is ReplicaNotFound:
                continue  # S3 never answers a delete with NoSuchKey
            with pytest.raises(ReplicaError) as caught:
                call()
            assert type(caught.value) is expected, name
            assert caught.value.transient == (expected is ReplicaUnavailable)
        replica.close()


def test_delete_reports_per_key_errors(s3: MotoServer) -> None:
    """DeleteObjects answers 200 with an <Error> per key it could not delete."""
    body = (
        b"<DeleteResult><Error><Key>p/k</Key><Code>AccessDenied</Code>"
        b"<Message>no</Message></Error></DeleteResult>"
    )

    class Handler(_Quiet):
        def do_POST(self) -> None:
            self.body()
            self.answer(200, body)

    with loopback_http(Handler) as endpoint:
        replica = _replica_at(s3, endpoint, max_attempts=1)
        with pytest.raises(ReplicaError, match="AccessDenied") as caught:
            replica.delete(["k", "other"])
        assert not caught.value.transient
        replica.close()


def test_requests_avoid_features_s3_lookalikes_lack(s3: MotoServer) -> None:
    """Content-MD5 on PutObject and DeleteObjects; no CRC checksum headers, no aws-chunked
    bodies (older MinIO, R2 and others refuse them)."""
    seen: list[tuple[str, dict[str, str], bytes]] = []

    class Recorder(_Quiet):
        def _record(self) -> None:
            seen.append((self.command, {k.lower(): v for k, v in self.headers.items()}, self.body()))
            self.answer(200)

        do_PUT = do_POST = _record

    with loopback_http(Recorder) as endpoint:
        replica = _replica_at(s3, endpoint, max_attempts=1)
        replica.put("k", b"payload")
        replica.delete(["k", "j"])
        replica.close()

    assert [command for command, _, _ in seen] == ["PUT", "POST"]
    for _, headers, body in seen:
        assert headers["content-md5"] == base64.b64encode(hashlib.md5(body).digest()).decode()
        assert "aws-chunked" not in headers.get("content-encoding", "")
        assert not [name for name in headers if name.startswith(("x-amz-checksum-", "x-amz-sdk-checksum-"))]
