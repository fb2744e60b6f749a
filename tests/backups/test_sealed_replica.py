"""SealedReplica: the ReplicaClient contract holds through it (the conformance tests that do not
look at stored sizes, run here against a local directory and S3 over HTTP), every byte reaches
the inner replica sealed, ranges read back exactly whatever their alignment, damage in the bucket
is detected on ranged reads too, and with encryption off objects pass through untouched."""

from __future__ import annotations

import io
import os
import random
import tracemalloc
from pathlib import Path

import pytest

from backups import crypto
from backups.crypto import MAGIC, seal_bytes
from backups.errors import BackupKeyMissing, BackupNotEncrypted, BackupTampered, ReplicaNotFound
from backups.keyring import Keyring
from backups.local_replica import LocalReplica
from backups.replica import ReplicaClient
from backups.sealed_replica import SealedReplica
from tests.backups.test_replica_conformance import (  # noqa: F401  (run again here, through the seal)
    test_concurrent_puts_are_atomic,
    test_delete_is_idempotent,
    test_get_range_edges,
    test_invalid_keys_are_rejected_before_any_io,
    test_missing_objects_raise_not_found,
    test_put_file_of_a_spooled_file_in_memory_or_on_disk,
    test_put_file_rejects_invalid_keys_before_reading,
    test_put_get_round_trip,
)

KEYS = Keyring([("k1", b"\x01" * 32)])


class Counting(LocalReplica):
    """A LocalReplica that counts its ranged reads."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.ranges: list[tuple[str, int, int]] = []

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self.ranges.append((key, start, length))
        return super().get_range(key, start, length)


@pytest.fixture
def replica(replica: ReplicaClient) -> SealedReplica:
    """What the imported conformance tests run against: the seal over each backend (the
    conftest's `replica`)."""
    return SealedReplica(replica, KEYS)


def test_what_reaches_the_bucket_is_sealed(replica: SealedReplica, tmp_path: Path) -> None:
    replica.put("meta/small", b"tenant acme, group shop")
    with open(tmp_path / "f", "w+b") as f:
        f.write(b"acme " * 100_000)
        f.seek(0)
        replica.put_file("segments/1.seg", f)
    for key in ("meta/small", "segments/1.seg"):
        stored = replica.inner.get(key)
        assert stored.startswith(MAGIC) and b"acme" not in stored
    assert replica.get("segments/1.seg") == b"acme " * 100_000
    assert replica.key_id("segments/1.seg") == "k1"


@pytest.mark.parametrize("size", [0, 1, 1023, 1024, 1025, 5 * 1024, 5 * 1024 + 77])
def test_any_range_reads_back_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    monkeypatch.setattr(crypto, "BLOCK_SIZE", 1024)  # many blocks in a small object
    replica = SealedReplica(LocalReplica(tmp_path / "r"), KEYS)
    plain = os.urandom(size)
    replica.put_file("obj", io.BytesIO(plain))
    rng = random.Random(size)
    cases = [(0, size + 10), (size, 5), (size + 3000, 5), (0, 1)]
    cases += [(rng.randrange(size + 2), rng.randrange(1, 3000)) for _ in range(300)]
    for start, length in cases:
        assert replica.get_range("obj", start, length) == plain[start : start + length], (start, length)
    assert replica.get_range("obj", 7, 0) == b""


def test_objects_written_here_are_read_without_a_header_request(tmp_path: Path) -> None:
    inner = Counting(tmp_path / "r")
    replica = SealedReplica(inner, KEYS)
    replica.put_file("segments/1.seg", io.BytesIO(os.urandom(300_000)))
    replica.get_range("segments/1.seg", 200_000, 50_000)
    assert len(inner.ranges) == 1  # the blocks only
    other = SealedReplica(inner, KEYS)  # another process: one header read, then cached
    for start in (0, 100_000, 250_000):
        other.get_range("segments/1.seg", start, 1000)
    assert len(inner.ranges) == 1 + 1 + 3


def test_damage_in_the_bucket_is_detected_on_ranged_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(crypto, "BLOCK_SIZE", 1024)
    inner = LocalReplica(tmp_path / "r")
    plain = os.urandom(4 * 1024 + 10)
    SealedReplica(inner, KEYS).put("obj", plain)
    SealedReplica(inner, KEYS).put("other", plain)
    stored = inner.get("obj")
    header_size = len(stored) - len(plain) - 5 * 16
    step = 1024 + 16

    def reader() -> SealedReplica:
        return SealedReplica(inner, KEYS)  # a cold header cache each time

    # a flipped bit in block 2 fails reads that touch block 2 only
    damaged = bytearray(stored)
    damaged[header_size + 2 * step + 100] ^= 1
    inner.put("obj", bytes(damaged))
    assert reader().get_range("obj", 0, 2048) == plain[:2048]
    with pytest.raises(BackupTampered, match="block 2"):
        reader().get_range("obj", 2000, 100)
    # truncated at a block boundary: reading up to or past the end notices the missing final block
    for cut in (header_size + 3 * step, header_size + 3 * step + 500):
        inner.put("obj", stored[:cut])
        assert reader().get_range("obj", 0, 1024) == plain[:1024]
        with pytest.raises(BackupTampered):
            reader().get_range("obj", 2048, 10_000)
        with pytest.raises(BackupTampered):
            reader().get_range("obj", 4 * 1024, 10)  # starts past what is left
    # an object swapped with another: nothing opens
    inner.put("obj", inner.get("other"))
    with pytest.raises(BackupTampered, match="'obj'"):
        reader().get_range("obj", 0, 10)


def test_an_object_replaced_behind_a_cached_header_is_read_anew(tmp_path: Path) -> None:
    inner = LocalReplica(tmp_path / "r")
    mine, theirs = SealedReplica(inner, KEYS), SealedReplica(inner, KEYS)
    mine.put("fleet/meta", b"version 1")
    assert mine.get_range("fleet/meta", 0, 100) == b"version 1"
    theirs.put("fleet/meta", b"version 2, longer")  # another process rewrites it in place
    assert mine.get_range("fleet/meta", 0, 100) == b"version 2, longer"


def test_encryption_off_passes_objects_through_and_names_the_key_of_a_sealed_one(tmp_path: Path) -> None:
    inner = Counting(tmp_path / "r")
    plain = SealedReplica(inner, None)
    plain.put("segments/0.seg", b"SQFSEG01 plain bytes")
    assert inner.get("segments/0.seg") == b"SQFSEG01 plain bytes"
    inner.ranges.clear()
    assert plain.get_range("segments/0.seg", 3, 5) == b"SEG01"
    assert len(inner.ranges) == 1  # no header probe while encryption is off
    SealedReplica(inner, Keyring([("k9", b"\x09" * 32)])).put("segments/1.seg", b"secret")
    with pytest.raises(BackupKeyMissing, match="'k9'"):
        plain.get("segments/1.seg")
    with pytest.raises(BackupKeyMissing, match="'k9'"):
        plain.get_range("segments/1.seg", 0, 64)
    with pytest.raises(BackupKeyMissing, match="'k9'"):
        plain.check_readable(["segments/0.seg", "segments/1.seg"])
    assert plain.key_id("segments/0.seg") is None


def test_an_unsealed_object_is_refused_unless_adopted(tmp_path: Path) -> None:
    inner = LocalReplica(tmp_path / "r")
    inner.put("segments/old.seg", b"SQFSEG01 written before encryption")
    sealed = SealedReplica(inner, KEYS)
    with pytest.raises(BackupNotEncrypted, match="rekey"):
        sealed.get_range("segments/old.seg", 0, 10)
    with pytest.raises(BackupNotEncrypted):
        sealed.get("segments/old.seg")
    assert sealed.read_range("segments/old.seg", 0, 8, allow_plaintext=True) == b"SQFSEG01"
    out = io.BytesIO()
    assert sealed.copy_plaintext("segments/old.seg", out, allow_plaintext=True) == 34
    with pytest.raises(ReplicaNotFound):
        sealed.key_id("segments/absent.seg")


def test_a_key_that_is_not_configured_is_named(tmp_path: Path) -> None:
    inner = LocalReplica(tmp_path / "r")
    inner.put("obj", seal_bytes(Keyring([("gone", b"\x05" * 32)]), "obj", b"x"))
    with pytest.raises(BackupKeyMissing, match="'gone'") as caught:
        SealedReplica(inner, KEYS).get_range("obj", 0, 1)
    assert caught.value.to_json()["error"]["key_id"] == "gone"


def test_copy_plaintext_and_uploads_stay_bounded_in_memory(replica: SealedReplica, tmp_path: Path) -> None:
    size = 24 << 20
    with open(tmp_path / "big", "w+b") as f:
        for i in range(size >> 20):
            f.write(bytes([i]) * (1 << 20))
        f.seek(0)
        tracemalloc.start()
        try:
            replica.put_file("big/segment", f)
            with open(tmp_path / "back", "wb") as out:
                assert replica.copy_plaintext("big/segment", out) == size
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < size // 4, f"peaked at {peak >> 20} MiB"
    with open(tmp_path / "back", "rb") as back:
        back.seek(size - (1 << 20))
        assert back.read() == bytes([(size >> 20) - 1]) * (1 << 20)
