"""The ReplicaClient contract, run against every backend (fixture `replica`: local dir, S3/moto)."""

from __future__ import annotations

import io
import os
import tempfile
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backups.errors import InvalidReplicaKey, ReplicaNotFound
from backups.replica import ReplicaClient

BAD_KEYS = [
    "",
    "/a",
    "a/",
    "a//b",
    "..",
    "../a",
    "a/../b",
    "a/./b",
    ".hidden",
    "a/.tmp-123",
    "a\\b",
    "a\x00b",
    "a\nb",
    "\udc80",
    "x" * 1025,
]


def _put_many(replica: ReplicaClient, keys: list[str], data: bytes = b"x") -> None:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: replica.put(k, data), keys))


def test_put_get_round_trip(replica: ReplicaClient) -> None:
    every_byte = bytes(range(256)) * 3
    replica.put("segments/0001.seg", every_byte)
    replica.put("empty", b"")
    replica.put("dir/ünïcode ключ", b"u")

    assert replica.get("segments/0001.seg") == every_byte
    assert replica.get("empty") == b""
    assert replica.get("dir/ünïcode ключ") == b"u"
    assert replica.exists("segments/0001.seg")


def test_put_overwrites(replica: ReplicaClient) -> None:
    replica.put("k", b"first version, longer")
    replica.put("k", b"second")
    replica.put("k", b"second")  # idempotent

    assert replica.get("k") == b"second"
    assert replica.head("k").size == 6
    assert [o.key for o in replica.list()] == ["k"]


def test_head_reports_size_and_time(replica: ReplicaClient) -> None:
    replica.put("a/b", b"12345")

    info = replica.head("a/b")

    assert (info.key, info.size) == ("a/b", 5)
    assert info.modified.tzinfo is not None
    assert abs(info.modified - datetime.now(UTC)) < timedelta(minutes=1)


def test_missing_objects_raise_not_found(replica: ReplicaClient) -> None:
    replica.put("present/x", b"x")

    for key in ("absent", "present/y", "present", "present/x/deeper"):
        with pytest.raises(ReplicaNotFound):
            replica.get(key)
        with pytest.raises(ReplicaNotFound):
            replica.get_range(key, 0, 10)
        with pytest.raises(ReplicaNotFound):
            replica.get_range(key, 100, 0)
        with pytest.raises(ReplicaNotFound):
            replica.head(key)
        assert not replica.exists(key)


def test_get_range_edges(replica: ReplicaClient) -> None:
    data = bytes(range(100))
    replica.put("obj", data)
    replica.put("empty", b"")

    assert replica.get_range("obj", 0, 1) == data[:1]
    assert replica.get_range("obj", 0, 100) == data
    assert replica.get_range("obj", 10, 20) == data[10:30]
    assert replica.get_range("obj", 99, 1) == data[99:]
    assert replica.get_range("obj", 90, 50) == data[90:]  # cut at the end
    assert replica.get_range("obj", 100, 1) == b""  # starts exactly at the end
    assert replica.get_range("obj", 500, 10) == b""  # starts past the end
    assert replica.get_range("obj", 5, 0) == b""
    assert replica.get_range("empty", 0, 10) == b""
    with pytest.raises(ValueError):
        replica.get_range("obj", -1, 5)
    with pytest.raises(ValueError):
        replica.get_range("obj", 0, -5)


def test_list_is_sorted_and_filtered_by_prefix(replica: ReplicaClient) -> None:
    # '-' and '.' sort before '/', '0' after it: a directory walk in name order gets these wrong.
    keys = ["a-1", "a/1", "a/10", "a/2-y", "a/2/x", "a.b", "a0", "ab/c", "b", "é/x", "seg/000/1"]
    _put_many(replica, keys)

    def listed(prefix: str) -> list[str]:
        return [o.key for o in replica.list(prefix)]

    for prefix in ["", "a", "a/", "a/2", "a/2/", "a/1", "ab", "é", "seg/000/", "nope", "nope/deeper/"]:
        assert listed(prefix) == sorted(k for k in keys if k.startswith(prefix)), prefix
    assert [o.size for o in replica.list("a/")] == [1, 1, 1, 1]


def test_list_paginates_and_delete_batches_past_1000_keys(replica: ReplicaClient) -> None:
    keys = [f"many/{i:05d}" for i in range(1100)]
    _put_many(replica, keys, b"12")
    replica.put("other", b"o")

    listed = list(replica.list("many/"))

    assert [o.key for o in listed] == keys
    assert {o.size for o in listed} == {2}
    assert [o.key for o in replica.list("many/0105")] == [f"many/0105{i}" for i in range(10)]

    replica.delete(keys)

    assert list(replica.list("many/")) == []
    assert [o.key for o in replica.list()] == ["other"]


def test_delete_is_idempotent(replica: ReplicaClient) -> None:
    replica.put("d/1", b"1")
    replica.put("d/2", b"2")
    replica.put("keep", b"k")

    replica.delete(["d/1", "d/missing", "never/was/here"])
    replica.delete(["d/1"])
    replica.delete([])
    replica.delete(iter(["d/2", "d/2"]))

    assert not replica.exists("d/1")
    with pytest.raises(ReplicaNotFound):
        replica.get("d/2")
    assert [o.key for o in replica.list()] == ["keep"]
    replica.put("d/1", b"again")  # a deleted key (and its emptied directory) can be reused
    assert replica.get("d/1") == b"again"


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_invalid_keys_are_rejected_before_any_io(replica: ReplicaClient, key: str) -> None:
    with pytest.raises(InvalidReplicaKey):
        replica.put(key, b"x")
    with pytest.raises(InvalidReplicaKey):
        replica.get(key)
    with pytest.raises(InvalidReplicaKey):
        replica.get_range(key, 0, 1)
    with pytest.raises(InvalidReplicaKey):
        replica.head(key)
    with pytest.raises(InvalidReplicaKey):
        replica.delete(["fine", key])
    assert list(replica.list()) == []


@pytest.mark.parametrize("prefix", ["/a", "../", "a/../", "./x", "a//", "a\\b/"])
def test_invalid_prefixes_are_rejected(replica: ReplicaClient, prefix: str) -> None:
    with pytest.raises(InvalidReplicaKey):
        list(replica.list(prefix))


def test_delete_validates_every_key_before_deleting(replica: ReplicaClient) -> None:
    replica.put("fine", b"x")

    with pytest.raises(InvalidReplicaKey):
        replica.delete(["fine", "../escape"])

    assert replica.get("fine") == b"x"


def test_large_object(replica: ReplicaClient) -> None:
    data = os.urandom(8 << 20)

    replica.put("big/snapshot", data)

    assert replica.get("big/snapshot") == data
    assert replica.head("big/snapshot").size == len(data)
    middle = (4 << 20) - 7
    assert replica.get_range("big/snapshot", middle, 1 << 20) == data[middle : middle + (1 << 20)]
    assert replica.get_range("big/snapshot", len(data) - 3, 100) == data[-3:]


def test_concurrent_puts_are_atomic(replica: ReplicaClient) -> None:
    # Writers overwrite one key with values of different lengths while readers check that
    # every read is exactly one whole value, and also put keys of their own.
    versions = [bytes([i]) * (50_000 + 997 * i) for i in range(8)]
    replica.put("contested", versions[0])
    torn: list[bytes] = []
    done = threading.Event()

    def write(i: int) -> None:
        for round_ in range(4):
            replica.put("contested", versions[i])
            replica.put(f"own/{i}/{round_}", versions[i][:100])

    def read() -> None:
        for _ in range(200):
            value = replica.get("contested")
            if value not in versions:
                torn.append(value[:16])
            if done.is_set():
                return

    with ThreadPoolExecutor(12) as pool:
        readers = [pool.submit(read) for _ in range(4)]
        writers = [pool.submit(write, i) for i in range(8)]
        for f in writers:
            f.result()
        done.set()
        for f in readers:
            f.result()

    assert torn == []
    assert replica.get("contested") in versions
    assert [o.key for o in replica.list("own/")] == sorted(f"own/{i}/{r}" for i in range(8) for r in range(4))
    assert next(o.key for o in replica.list()) == "contested"  # no temporary files listed


# -- streaming: put_file uploads from a file without holding it in memory -------------------------


def test_put_file_stores_the_rest_of_the_file(replica: ReplicaClient, tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    with open(tmp_path / "source", "w+b") as f:
        f.write(b"skipped" + data)
        f.seek(len(b"skipped"))

        replica.put_file("seg/from-file", f)
        assert not f.closed

    assert replica.get("seg/from-file") == data
    replica.put_file("seg/from-file", io.BytesIO(b"shorter"))  # replaces, like put
    assert replica.get("seg/from-file") == b"shorter"
    replica.put_file("seg/empty", io.BytesIO())
    assert replica.head("seg/empty").size == 0


def test_put_file_of_a_spooled_file_in_memory_or_on_disk(replica: ReplicaClient, tmp_path: Path) -> None:
    for size in (1000, 300_000):  # stays in memory; rolls over to a temporary file
        with tempfile.SpooledTemporaryFile(max_size=100_000, dir=str(tmp_path)) as f:
            f.write(bytes(range(256)) * (size // 256))
            f.seek(0)
            replica.put_file(f"spooled/{size}", f)
        assert replica.get(f"spooled/{size}") == bytes(range(256)) * (size // 256)


def test_put_file_memory_does_not_grow_with_the_object(replica: ReplicaClient, tmp_path: Path) -> None:
    size = 32 << 20
    tail = b""
    with open(tmp_path / "big", "w+b") as f:
        for _ in range(size >> 20):
            tail = os.urandom(1 << 20)
            f.write(tail)
        f.seek(0)
        tracemalloc.start()
        try:
            replica.put_file("big/segment", f)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < size // 4, f"put_file of {size >> 20} MiB peaked at {peak >> 20} MiB"
    assert replica.head("big/segment").size == size
    assert replica.get_range("big/segment", size - 5, 10) == tail[-5:]


@pytest.mark.parametrize("key", BAD_KEYS[:6], ids=repr)
def test_put_file_rejects_invalid_keys_before_reading(replica: ReplicaClient, key: str) -> None:
    source = io.BytesIO(b"never read")
    with pytest.raises(InvalidReplicaKey):
        replica.put_file(key, source)
    assert source.tell() == 0
    assert list(replica.list()) == []
