"""backups.carry: carried chunks are durable when written, small ones written at the same time
share a file, and a file goes once every chunk in it is shipped (discarded)."""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from backups import carry
from backups.carry import MAGIC, Carried, Carry
from backups.segment import FRAMES, SNAPSHOT, Chunk
from tests.support.waiting import wait_until


def _snapshot(tenant: str, at: float = 1.0) -> Chunk:
    return Chunk(tenant, "g1", SNAPSHOT, 0, 0, 4096, taken_at=at)


def _body(c: Carried) -> bytes:
    return b"".join(c.body())


def _files(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_writes_at_the_same_time_share_a_file_until_each_is_shipped(tmp_path: Path) -> None:
    folder = tmp_path / "carry"
    store = Carry(folder)
    images = {f"t{i}": bytes([i]) * 4096 for i in range(8)}
    first = store._write_pack  # the first file's write waits until the eight have queued
    entered, gate = threading.Event(), threading.Event()

    def held(items: list[tuple[Chunk, bytes]]) -> list[Carried | BaseException]:
        entered.set()
        assert gate.wait(10)
        return first(items)

    store._packs._commit = held
    with ThreadPoolExecutor(9) as pool:
        leader = pool.submit(store.write, _snapshot("lead"), [b"x" * 100])
        assert entered.wait(10)  # the leader took its batch
        others = {
            t: pool.submit(store.write, _snapshot(t), [image[:1000], image[1000:]])
            for t, image in images.items()
        }
        wait_until(lambda: store._packs.queued == 8, interval=0.001)
        gate.set()
        alone, written = leader.result(10), {t: f.result(10) for t, f in others.items()}
    shared = {c.path for c in written.values()}
    assert len(shared) == 1 and alone.path not in shared  # the eight in one file
    assert alone.path.name == "lead-g1-000000000000-snapshot-000000000000.carry"  # alone: its own
    for tenant, c in written.items():
        assert (c.tenant, c.kind, c.body_length) == (tenant, SNAPSHOT, 4096)
        assert _body(c) == images[tenant]
    assert _body(alone) == b"x" * 100

    # after a crash: the same chunks, read back from the files
    again = Carry(folder).recover()
    assert sorted((c.tenant, c.path.name, _body(c)) for c in again) == sorted(
        [("lead", alone.path.name, b"x" * 100)] + [(t, c.path.name, images[t]) for t, c in written.items()]
    )
    # a shared file goes with the last of its chunks; discarding twice changes nothing
    pack = next(iter(shared))
    for c in list(written.values())[:-1]:
        Carry.discard(c)
        Carry.discard(c)
        assert pack.exists()
    Carry.discard(list(written.values())[-1])
    assert not pack.exists()
    Carry.discard(alone)
    assert _files(folder) == []


def test_a_large_chunk_streams_into_a_file_of_its_own(tmp_path: Path) -> None:
    store = Carry(tmp_path)
    pieces = [bytes([i]) * 8192 for i in range(20)]  # past PACK_LIMIT
    chunk = Chunk("acme", "g1", FRAMES, 1, 40, 4096, commits=[(40, 2.0)])
    written = store.write(chunk, iter(pieces))
    assert written.path.name == "acme-g1-000000000001-000000000040.carry" and written.pack is None
    assert _body(written) == b"".join(pieces) and written.commits == ((40, 2.0),)
    (found,) = store.recover()
    assert found == written and _body(found) == b"".join(pieces)


def test_recover_reads_files_of_one_chunk_without_a_stated_length(tmp_path: Path) -> None:
    # as versions before shared files wrote them
    meta = {"tenant": "old", "generation": "g0", "first_lsn": 3, "last_lsn": 5, "page_size": 4096}
    raw = json.dumps({**meta, "commits": [[5, 1.5]], "kind": FRAMES, "taken_at": 0.0}).encode()
    path = tmp_path / "old-g0-000000000003-000000000005.carry"
    path.write_bytes(b"frames" + raw + carry._TRAILER.pack(len(raw)) + MAGIC)
    (found,) = Carry(tmp_path).recover()
    assert (found.tenant, found.first_lsn, found.last_lsn, found.commits) == ("old", 3, 5, ((5, 1.5),))
    assert _body(found) == b"frames"


def test_a_write_a_crash_cut_short_leaves_nothing_to_ship(tmp_path: Path) -> None:
    store = Carry(tmp_path)
    kept = store.write(_snapshot("kept"), [b"k" * 10])
    (tmp_path / ".pack-0123.tmp99").write_bytes(b"partial")  # not renamed: never durable
    assert [c.tenant for c in store.recover()] == ["kept"]
    assert _files(tmp_path) == [kept.path.name]
