"""The sealed-object format of backups/crypto.py: round trips at every size that matters, the
exact layout, and every way of damaging an object (a flipped bit anywhere, truncation, reordered,
dropped, duplicated or spliced blocks, an object moved to another name) detected. Most tests
write 1 KiB blocks (readers take any block size the header names) so objects of a few blocks
stay small enough to flip every bit."""

from __future__ import annotations

import base64
import io
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from backups import crypto
from backups.crypto import (
    BLOCK_SIZE,
    MAGIC,
    TAG_SIZE,
    ObjectCipher,
    SealingReader,
    parse_header,
    seal_bytes,
    seal_file,
    unseal_bytes,
    unseal_file,
)
from backups.errors import BackupKeyMismatch, BackupKeyMissing, BackupNotEncrypted, BackupTampered
from backups.keyring import Keyring
from backups.readers import read_exactly
from tenants.errors import BadRequest

SMALL = 1024


def ring(*ids: str, seed: int = 0) -> Keyring:
    return Keyring([(i, bytes([n + seed]) * 32) for n, i in enumerate(ids, 1)])


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(crypto, "BLOCK_SIZE", SMALL)
    yield SMALL


def data(size: int) -> bytes:
    return bytes((i * 7 + i // 251) % 256 for i in range(size))


def blocks_of(sealed: bytes, block: int) -> tuple[bytes, list[bytes]]:
    header = parse_header(sealed, "x")
    assert header is not None
    body = sealed[header.size :]
    step = block + TAG_SIZE
    return sealed[: header.size], [body[i : i + step] for i in range(0, len(body), step)]


# -- round trips and layout ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, SMALL - 1, SMALL, SMALL + 1, 3 * SMALL, 3 * SMALL + 5])
def test_round_trip_at_block_edges(small_blocks: int, size: int) -> None:
    keys, plain = ring("k1"), data(size)
    sealed = seal_bytes(keys, "segments/a.seg", plain)
    assert unseal_bytes(keys, "segments/a.seg", sealed) == plain
    header, blocks = blocks_of(sealed, SMALL)
    assert len(blocks) == max(1, -(-size // SMALL))  # an empty object still has its final block
    assert len(sealed) == len(header) + size + TAG_SIZE * len(blocks)
    out = io.BytesIO()
    assert unseal_file(keys, "segments/a.seg", io.BytesIO(sealed), out) == size
    assert out.getvalue() == plain


def test_the_header_is_laid_out_as_documented() -> None:
    sealed = seal_bytes(ring("key-2026.a"), "n", b"hello")
    assert sealed[:8] == MAGIC == b"SQFENC01"
    assert sealed[8] == len("key-2026.a") and sealed[9:19] == b"key-2026.a"
    assert struct.unpack(">I", sealed[19:23]) == (BLOCK_SIZE,) == (65536,)
    header = parse_header(sealed, "n")
    assert header is not None
    assert (header.key_id, header.block_size, len(header.salt), len(header.nonce), len(header.check)) == (
        "key-2026.a",
        65536,
        16,
        12,
        8,
    )
    assert header.size == 8 + 1 + 10 + 4 + 16 + 12 + 8
    assert len(sealed) == header.size + 5 + TAG_SIZE


def test_every_object_gets_a_fresh_salt_and_nonce_and_blocks_distinct_nonces(small_blocks: int) -> None:
    keys = ring("k1")
    headers = [parse_header(seal_bytes(keys, "same", b"same"), "same") for _ in range(50)]
    assert len({h.salt for h in headers if h}) == 50 and len({h.nonce for h in headers if h}) == 50
    cipher = ObjectCipher.create(keys, "n")
    nonces = {cipher._nonce_of(i) for i in range(1000)}
    assert len(nonces) == 1000 and all(len(n) == 12 for n in nonces)
    # the same plaintext twice never gives the same ciphertext
    assert seal_bytes(keys, "n", b"x" * 100) != seal_bytes(keys, "n", b"x" * 100)


@pytest.mark.parametrize("size", [0, 10, SMALL, 4 * SMALL, 4 * SMALL + 1])
def test_sealing_reader_is_a_seekable_repeatable_view(small_blocks: int, size: int) -> None:
    keys, plain = ring("k1"), data(size)
    source = io.BytesIO(b"skipped" + plain)
    source.seek(7)  # from the current position on, as put_file reads
    reader = SealingReader(keys, "obj", source)
    first = reader.read()
    assert len(first) == reader.size and unseal_bytes(keys, "obj", first) == plain
    reader.seek(0)
    assert reader.read() == first  # an upload's retry or checksum pass reads the same bytes
    for position in (0, 5, 100, reader.size // 2, reader.size - 1, reader.size):
        reader.seek(position)
        assert read_exactly(reader, 50) == first[position : position + 50]
    assert reader.seek(0, io.SEEK_END) == reader.size


def test_seal_file_streams_with_memory_bounded_by_a_block(tmp_path: Path) -> None:
    import tracemalloc

    keys, size = ring("k1"), 24 << 20
    source = tmp_path / "plain"
    with open(source, "wb") as f:
        for i in range(size >> 20):
            f.write(bytes([i]) * (1 << 20))
    tracemalloc.start()
    try:
        with open(source, "rb") as src, open(tmp_path / "sealed", "wb") as out:
            seal_file(keys, "big", src, out)
        with open(tmp_path / "sealed", "rb") as src, open(tmp_path / "back", "wb") as out:
            assert unseal_file(keys, "big", src, out) == size
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20, f"peaked at {peak >> 10} KiB"
    assert (tmp_path / "back").read_bytes() == source.read_bytes()


# -- damage of every kind is detected -----------------------------------------------------------------


def test_every_flipped_bit_is_detected(small_blocks: int) -> None:
    keys, plain = ring("k1"), data(2 * SMALL + 100)
    sealed = seal_bytes(keys, "obj", plain)
    for position in range(len(sealed)):
        for bit in (0, 3, 7):
            damaged = bytearray(sealed)
            damaged[position] ^= 1 << bit
            # a flipped key id names a key that is not configured; any other flip fails authentication
            with pytest.raises((BackupTampered, BackupKeyMissing)):
                unseal_bytes(keys, "obj", bytes(damaged))


def test_a_truncated_object_is_detected_at_every_length(small_blocks: int) -> None:
    keys = ring("k1")
    sealed = seal_bytes(keys, "obj", data(3 * SMALL))
    for length in range(len(sealed)):
        with pytest.raises(BackupTampered):
            unseal_bytes(keys, "obj", sealed[:length])


def test_reordered_dropped_duplicated_and_appended_blocks_are_detected(small_blocks: int) -> None:
    keys = ring("k1")
    sealed = seal_bytes(keys, "obj", data(4 * SMALL))
    header, b = blocks_of(sealed, SMALL)
    assert len(b) == 4
    for order in ([1, 0, 2, 3], [0, 2, 1, 3], [0, 1, 3], [0, 1, 2], [0, 1, 1, 2, 3], [0, 1, 2, 3, 3], [3]):
        with pytest.raises(BackupTampered):
            unseal_bytes(keys, "obj", header + b"".join(b[i] for i in order))
    with pytest.raises(BackupTampered, match="follows the final block"):
        unseal_bytes(keys, "obj", sealed + b[1])


def test_blocks_of_another_object_do_not_splice_in(small_blocks: int) -> None:
    keys = ring("k1")
    one = seal_bytes(keys, "obj", data(3 * SMALL))
    other = seal_bytes(keys, "obj", data(3 * SMALL)[::-1])
    header, mine = blocks_of(one, SMALL)
    _, theirs = blocks_of(other, SMALL)
    with pytest.raises(BackupTampered):
        unseal_bytes(keys, "obj", header + mine[0] + theirs[1] + mine[2])


def test_an_object_moved_to_another_name_does_not_open() -> None:
    keys = ring("k1")
    sealed = seal_bytes(keys, "segments/1.seg", b"tenant data")
    with pytest.raises(BackupTampered, match=r"segments/2\.seg"):
        unseal_bytes(keys, "segments/2.seg", sealed)


def test_range_blocks_must_end_with_the_final_block(small_blocks: int) -> None:
    keys = ring("k1")
    sealed = seal_bytes(keys, "obj", data(3 * SMALL))
    header = parse_header(sealed, "obj")
    assert header is not None
    cipher = ObjectCipher.opening(keys, header, "obj")
    step = SMALL + TAG_SIZE
    body = sealed[header.size :]
    plain, final = cipher.open_blocks(1, body[step:], ended=True)
    assert plain == data(3 * SMALL)[SMALL:] and final
    plain, final = cipher.open_blocks(0, body[:step], ended=False)  # a range in the middle
    assert plain == data(SMALL) and not final
    with pytest.raises(BackupTampered, match="without its final block"):
        cipher.open_blocks(0, body[: 2 * step], ended=True)  # the object "ended" early: cut


# -- keys ------------------------------------------------------------------------------------------------


def test_a_missing_key_is_named_and_nothing_is_returned() -> None:
    sealed = seal_bytes(ring("old"), "obj", b"secret")
    with pytest.raises(BackupKeyMissing, match="'old'") as caught:
        unseal_bytes(ring("new"), "obj", sealed)
    assert caught.value.detail == {"key_id": "old"} and caught.value.status == 500
    with pytest.raises(BackupKeyMissing, match="no encryption keys") as off:
        unseal_bytes(None, "obj", sealed)
    assert off.value.detail["key_id"] == "old"


def test_a_different_key_under_the_same_id_is_told_apart_from_tampering() -> None:
    sealed = seal_bytes(ring("k1"), "obj", b"secret")
    with pytest.raises(BackupKeyMismatch, match="'k1'") as caught:
        unseal_bytes(ring("k1", seed=50), "obj", sealed)
    assert caught.value.code == "backup_key_mismatch"


def test_older_keys_open_and_the_first_seals() -> None:
    old = seal_bytes(ring("k1"), "obj", b"before")
    rotated = Keyring([("k2", b"\x09" * 32), ("k1", b"\x01" * 32)])
    assert unseal_bytes(rotated, "obj", old) == b"before"
    header = parse_header(seal_bytes(rotated, "obj", b"after"), "obj")
    assert header is not None and header.key_id == "k2"


def test_plaintext_passes_only_when_encryption_is_off_or_adopted() -> None:
    assert seal_bytes(None, "obj", b"plain") == b"plain"
    assert unseal_bytes(None, "obj", b"plain") == b"plain"
    with pytest.raises(BackupNotEncrypted, match="rekey"):
        unseal_bytes(ring("k1"), "obj", b"SQFSEG01 a plain segment")
    assert unseal_bytes(ring("k1"), "obj", b"plain", allow_plaintext=True) == b"plain"


def test_the_key_file_format() -> None:
    k1, k2 = base64.b64encode(b"\x01" * 32).decode(), base64.b64encode(b"\x02" * 32).decode()
    keys = Keyring.parse(f"# rotated 2026-01\n\n k2:{k2} \nk1:{k1}\n")
    assert keys.current == "k2" and keys.ids == ["k2", "k1"]
    assert "AQEB" not in repr(keys) and "k2" in repr(keys)
    line = Keyring.generate("k3")
    assert Keyring.parse(line).current == "k3" and len(base64.b64decode(line.split(":")[1])) == 32
    for text, message in [
        ("", "holds no key"),
        ("# only a comment", "holds no key"),
        (f"k1 {k1}", "line 1: expected KEYID:BASE64KEY"),
        ("k1:not base64!", "line 1: the key is not valid base64"),
        (f"k1:{base64.b64encode(b'short').decode()}", "line 1: key 'k1' has 5 bytes"),
        (f"k1:{k1}\nk1:{k2}", "line 2: key id 'k1' appears twice"),
        (f"bad/id:{k1}", "line 1: key id 'bad/id'"),
        (f"{'x' * 65}:{k1}", "line 1: key id"),
    ]:
        with pytest.raises(BadRequest, match=message):
            Keyring.parse(text, "keys.txt")


def test_a_key_file_that_cannot_be_read_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="backup_encryption_key_file"):
        Keyring.load(tmp_path / "absent")
    path = tmp_path / "keys"
    path.write_text(Keyring.generate("k1") + "\n")
    assert Keyring.load(path).current == "k1"
