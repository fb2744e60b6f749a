"""backups.wal against WAL files written by the real SQLite (APSW, exclusive locking, no autocheckpoint)."""

from __future__ import annotations

import random
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from backups import wal
from backups.errors import WalCorrupt


def open_db(path: Path) -> apsw.Connection:
    """A connection set up the way the server opens tenants: the WAL survives close."""
    conn = apsw.Connection(str(path))
    conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
    conn.execute("PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL").fetchall()
    conn.wal_autocheckpoint(0)
    return conn


class Recorder:
    """Commits as SQLite reports them through the wal_hook: WAL frame count after each."""

    def __init__(self, conn: apsw.Connection) -> None:
        self.counts: list[int] = []
        conn.set_wal_hook(self._hook)

    def _hook(self, conn: apsw.Connection, dbname: str, frames: int) -> int:
        self.counts.append(frames)
        return apsw.SQLITE_OK


TRANSACTIONS = [
    "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB)",
    "INSERT INTO t(v) VALUES ('one')",
    "INSERT INTO t(v, b) VALUES ('big', randomblob(20000))",  # overflow pages: a multi-frame commit
    "BEGIN; UPDATE t SET v = 'uno' WHERE id = 1; INSERT INTO t(v) VALUES ('three'); COMMIT",
    "CREATE INDEX t_v ON t(v)",
    "DELETE FROM t WHERE v = 'big'",  # freed pages go to the freelist
]


Written = tuple[apsw.Connection, Path, Recorder, list[int]]
"""What the `db` fixture yields: the connection, the database path, its Recorder, page counts."""


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Written]:
    """A database whose main file is empty of data (checkpointed right after creation) and
    whose WAL holds TRANSACTIONS; also yields the page count after each transaction."""
    path = tmp_path / "t.db"
    conn = open_db(path)
    conn.execute("PRAGMA user_version = 1")
    conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    recorder = Recorder(conn)
    pages = []
    for sql in TRANSACTIONS:
        conn.execute(sql)
        ((count,),) = conn.execute("PRAGMA page_count").fetchall()
        assert isinstance(count, int)
        pages.append(count)
    yield conn, path, recorder, pages
    conn.close()


def wal_path(path: Path) -> Path:
    return Path(f"{path}-wal")


def test_scan_finds_every_commit_sqlite_reported(
    db: Written,
) -> None:
    _, path, recorder, pages = db
    header, frames = wal.scan(wal_path(path))

    assert header is not None and header.page_size == 4096 and not header.big_endian
    assert [f.index + 1 for f in frames if f.commit_size] == recorder.counts
    assert len(frames) == recorder.counts[-1]
    assert [f.commit_size for f in frames if f.commit_size] == pages
    assert [f.index for f in frames] == list(range(len(frames)))
    assert all(len(f.data) == 4096 and f.page_no > 0 for f in frames)


def test_frames_applied_to_the_main_file_give_the_database(
    db: Written,
) -> None:
    conn, path, _, _ = db
    image = bytearray(path.read_bytes())
    _, frames = wal.scan(wal_path(path))
    for f in frames:
        end = f.page_no * 4096
        image.extend(bytes(max(0, end - len(image))))
        image[end - 4096 : end] = f.data
    del image[frames[-1].commit_size * 4096 :]

    assert bytes(image) == conn.serialize("main")


def test_a_flipped_bit_stops_validation_at_that_frame(db: Written, tmp_path: Path) -> None:
    _, path, recorder, _ = db
    header, frames = wal.scan(wal_path(path))
    assert header is not None
    bad_frame = recorder.counts[1] + 2  # inside the big-blob transaction, not its first frame
    assert bad_frame < recorder.counts[2] - 1
    copy = tmp_path / "copy-wal"
    raw = bytearray(wal_path(path).read_bytes())
    raw[header.frame_offset(bad_frame) + wal.FRAME_HEADER_SIZE + 100] ^= 0x10
    copy.write_bytes(raw)

    _, valid = wal.scan(copy)
    assert len(valid) == recorder.counts[1]  # back to the last commit before the damage
    assert wal.read_frames(copy, header, 0, bad_frame, header.checksum) == frames[:bad_frame]
    with pytest.raises(WalCorrupt, match=f"frame {bad_frame}"):
        wal.read_frames(copy, header, 0, bad_frame + 1, header.checksum)
    seed = frames[bad_frame - 1].checksum
    with pytest.raises(WalCorrupt):
        wal.read_frames(copy, header, bad_frame, len(frames), seed)


def test_a_frame_with_foreign_salts_is_not_valid(db: Written, tmp_path: Path) -> None:
    _, path, recorder, _ = db
    header, _ = wal.scan(wal_path(path))
    assert header is not None
    raw = bytearray(wal_path(path).read_bytes())
    at = header.frame_offset(recorder.counts[0]) + 8  # salt-1 of the 2nd transaction's first frame
    raw[at : at + 4] = struct.pack(">I", header.salt1 ^ 1)
    copy = tmp_path / "copy-wal"
    copy.write_bytes(raw)

    assert len(wal.scan(copy)[1]) == recorder.counts[0]


def test_read_frames_past_the_end_is_corrupt(db: Written) -> None:
    _, path, recorder, _ = db
    header = wal.read_header(wal_path(path))
    assert header is not None
    end = recorder.counts[-1]

    assert len(wal.read_frames(wal_path(path), header, 0, end, header.checksum)) == end
    assert wal.read_frames(wal_path(path), header, 3, 3, (1, 2)) == []
    with pytest.raises(WalCorrupt, match="ends at frame"):
        wal.read_frames(wal_path(path), header, 0, end + 1, header.checksum)


def test_salts_after_a_truncate_checkpoint(db: Written) -> None:
    conn, path, recorder, _ = db
    before = wal.read_header(wal_path(path))
    assert before is not None

    conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    assert wal_path(path).stat().st_size == 0
    assert wal.read_header(wal_path(path)) is None
    assert wal.scan(wal_path(path)) == (None, [])

    conn.execute("INSERT INTO t(v) VALUES ('after')")
    after, frames = wal.scan(wal_path(path))
    assert after is not None
    assert after.salt1 == (before.salt1 + 1) & 0xFFFFFFFF  # SQLite increments salt-1 on restart
    assert after.salt2 != before.salt2
    assert after.checkpoint_seq == before.checkpoint_seq + 1
    assert [f.index + 1 for f in frames if f.commit_size] == [recorder.counts[-1]] == [len(frames)]
    # the old position does not continue into the new WAL
    assert wal.tail(wal_path(path), before, 3, (0, 0)) is None


def test_tail_continues_a_position_and_refuses_a_wrong_seed(
    db: Written,
) -> None:
    _, path, recorder, _ = db
    header, frames = wal.scan(wal_path(path))
    assert header is not None
    at = recorder.counts[1]

    assert wal.tail(wal_path(path), header, at, frames[at - 1].checksum) == frames[at:]
    assert wal.tail(wal_path(path), header, 0, header.checksum) == frames
    assert wal.tail(wal_path(path), header, len(frames), frames[-1].checksum) == []
    wrong = (frames[at - 1].checksum[0] ^ 1, frames[at - 1].checksum[1])
    assert wal.tail(wal_path(path), header, at, wrong) is None
    assert wal.tail(wal_path(path), header, at, frames[at - 2].checksum) is None
    assert wal.tail(wal_path(path), header, 0, (header.checksum[0], header.checksum[1] ^ 1)) is None
    assert wal.tail(wal_path(path), header, len(frames) + 5, frames[-1].checksum) is None


def test_tail_stops_at_the_last_commit(db: Written, tmp_path: Path) -> None:
    _, path, recorder, _ = db
    header, frames = wal.scan(wal_path(path))
    assert header is not None
    # cut the WAL inside the last transaction: its frames are there but it never committed
    copy = tmp_path / "cut-wal"
    copy.write_bytes(wal_path(path).read_bytes()[: header.frame_offset(len(frames) - 1)])

    assert wal.tail(copy, header, 0, header.checksum) == frames[: recorder.counts[-2]]


def test_parse_header_rejects_what_is_not_a_wal(
    db: Written,
) -> None:
    _, path, _, _ = db
    raw = wal_path(path).read_bytes()[:32]
    assert wal.parse_header(raw) is not None
    assert wal.parse_header(raw[:31]) is None
    assert wal.parse_header(b"\x00" * 32) is None
    damaged = bytearray(raw)
    damaged[20] ^= 1  # salt-1: the header checksum no longer matches
    assert wal.parse_header(bytes(damaged)) is None
    assert wal.read_header(path.parent / "absent-wal") is None


# -- the checksum -------------------------------------------------------------------------------


def reference_checksum(data: bytes, seed: tuple[int, int], big_endian: bool) -> tuple[int, int]:
    """SQLite's walChecksumBytes, as the file format document gives it."""
    s0, s1 = seed
    fmt = ">" if big_endian else "<"
    for pos in range(0, len(data), 8):
        x0, x1 = struct.unpack_from(f"{fmt}II", data, pos)
        s0 = (s0 + x0 + s1) & 0xFFFFFFFF
        s1 = (s1 + x1 + s0) & 0xFFFFFFFF
    return s0, s1


@pytest.mark.parametrize("big_endian", [False, True])
def test_checksum_matches_the_reference_on_random_data(big_endian: bool) -> None:
    rng = random.Random(7)
    for size in (8, 16, 24, 512, 4096 + 8, 65536 + 8):
        for _ in range(3):
            data = rng.randbytes(size)
            seed = (rng.getrandbits(32), rng.getrandbits(32))
            assert wal.checksum(data, seed, big_endian) == reference_checksum(data, seed, big_endian)
    worst = b"\xff" * 4104  # every word at its maximum: the vectorized sums must not lose bits
    top = (0xFFFFFFFF, 0xFFFFFFFF)
    assert wal.checksum(worst, top, big_endian) == reference_checksum(worst, top, big_endian)


def to_big_endian(raw: bytes) -> bytes:
    """Rewrite a little-endian-checksummed WAL as the big-endian variant (what SQLite writes on
    a big-endian machine), recomputing every checksum with the reference implementation."""
    out = bytearray(raw)
    out[0:4] = struct.pack(">I", 0x377F0683)
    state = reference_checksum(bytes(out[:24]), (0, 0), True)
    out[24:32] = struct.pack(">II", *state)
    page_size = struct.unpack(">I", out[8:12])[0]
    size = wal.FRAME_HEADER_SIZE + page_size
    for base in range(32, len(out) - size + 1, size):
        state = reference_checksum(
            bytes(out[base : base + 8]) + bytes(out[base + 24 : base + size]), state, True
        )
        out[base + 16 : base + 24] = struct.pack(">II", *state)
    return bytes(out)


def test_big_endian_wal(db: Written, tmp_path: Path) -> None:
    conn, path, recorder, _ = db
    expected = conn.execute("SELECT id, v, length(b) FROM t ORDER BY id").fetchall()
    _, le_frames = wal.scan(wal_path(path))
    copy = tmp_path / "be.db"
    shutil.copyfile(path, copy)
    wal_path(copy).write_bytes(to_big_endian(wal_path(path).read_bytes()))

    header, frames = wal.scan(wal_path(copy))
    assert header is not None and header.big_endian
    assert [(f.page_no, f.commit_size, f.data) for f in frames] == [
        (f.page_no, f.commit_size, f.data) for f in le_frames
    ]
    seed = frames[recorder.counts[0] - 1].checksum
    assert wal.tail(wal_path(copy), header, recorder.counts[0], seed) == frames[recorder.counts[0] :]
    # SQLite itself recovers the rewritten WAL: the big-endian variant we validate is the real one
    other = apsw.Connection(str(copy))
    try:
        assert other.execute("SELECT id, v, length(b) FROM t ORDER BY id").fetchall() == expected
    finally:
        other.close()
