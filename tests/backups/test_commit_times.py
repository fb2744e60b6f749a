"""Issue 11, item 2: commit times survive the process. Each commit's time is appended to the
commit-times journal in the commit path, so after kill -9 the commits found unshipped in a WAL
get their own times back, and a restore to a moment between two of them is exact."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backups import wal
from backups.commit_times import CommitTimes
from tenants.rfc3339 import format_time
from tests.support.app import ADMIN
from tests.support.server import start_server
from tests.support.shipper import Rig


def rows(http: httpx.Client, tenant: str) -> list[Any]:
    r = http.post(f"/v1/tenants/{tenant}/query", json={"sql": "SELECT v FROM t ORDER BY rowid"})
    assert r.status_code == 200, r.text
    return [row[0] for row in r.json()["rows"]]


def test_a_restore_after_kill9_is_exact_to_one_commit(tmp_path: Path) -> None:
    env = {"SQLFLEET_BACKUP_FLUSH_INTERVAL": "3600", "SQLFLEET_REPLICA_URL": str(tmp_path / "replica")}
    data = tmp_path / "data"
    moments: list[tuple[float, float]] = []  # (sent, acknowledged) of each row's commit
    with start_server(data, env=env) as server, server.client() as http:
        assert http.post("/v1/admin/tenants", json={"id": "acme"}).status_code == 201
        assert http.post("/v1/tenants/acme/query", json={"sql": "CREATE TABLE t(v)"}).status_code == 200
        assert http.get("/v1/admin/tenants/acme/backups").status_code == 200  # flushes: shipped so far
        for i in range(8):
            sent = time.time()
            r = http.post("/v1/tenants/acme/query", json={"sql": "INSERT INTO t VALUES (?)", "params": [i]})
            assert r.status_code == 200, r.text
            moments.append((sent, time.time()))
            time.sleep(0.03)
        server.kill9()  # long before the next flush: every row is unshipped

    with start_server(data, env=env) as server, server.client() as http:
        for k in (0, 3, 6):
            between = (moments[k][1] + moments[k + 1][0]) / 2
            body = {"timestamp": format_time(between), "as": f"at-{k}"}
            r = http.post("/v1/admin/tenants/acme/restore", json=body, headers=ADMIN)
            assert r.status_code == 200, r.text
            assert rows(http, f"at-{k}") == list(range(k + 1))
        assert rows(http, "acme") == list(range(8))


# -- the journal itself ---------------------------------------------------------------------------


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "times"


def test_recorded_times_come_back_after_a_restart_once(journal: Path) -> None:
    times = CommitTimes(journal)
    times.note("acme", (1, 2), 3, 100.5)
    times.note("acme", (1, 2), 5, 101.5)
    times.note("beta", (7, 8), 2, 102.5)
    times.close()

    again = CommitTimes(journal)
    try:
        assert again.recovered_tenants() == ["acme", "beta"]
        assert again.recovered("acme") == {(1, 2, 3): 100.5, (1, 2, 5): 101.5}
        assert again.recovered("acme") == {}  # handed over once
        again.end_recovery()
        assert again.recovered_tenants() == []
    finally:
        again.close()


def test_a_torn_tail_ends_the_reading(journal: Path) -> None:
    times = CommitTimes(journal)
    times.note("acme", (1, 2), 3, 100.5)
    times.note("acme", (1, 2), 4, 101.5)
    times.close()
    (log,) = journal.iterdir()
    log.write_bytes(log.read_bytes()[:-3])  # power loss in the middle of the last record

    again = CommitTimes(journal)
    try:
        assert again.recovered("acme") == {(1, 2, 3): 100.5}
    finally:
        again.close()


def test_files_go_once_a_flush_shipped_what_they_name(journal: Path) -> None:
    times = CommitTimes(journal)
    times.note("acme", (1, 2), 3, 100.5)
    times.close()
    times = CommitTimes(journal)  # a restart: the old file holds a commit not shipped yet
    try:
        times.note("acme", (1, 2), 4, 101.5)
        before_recovery = times.rotate()
        times.prune(before_recovery)
        assert len(list(journal.iterdir())) == 2  # the file from before the restart stays
        assert times.recovered("acme")  # its tenant opened: its commits go to the ledger
        times.note("acme", (1, 2), 5, 102.5)
        after = times.rotate()
        times.prune(after)
        assert len(list(journal.iterdir())) == 1  # only the current one
        assert times.rotate() == after  # nothing written since: no new file
    finally:
        times.close()


def test_the_rig_keeps_times_across_a_crash(tmp_path: Path) -> None:
    """Through the shipper's own hooks: a crash (no flush, no close), then a new shipper over the
    same files gives the recovered commits their times, and a restore between them is exact."""
    rig = Rig(tmp_path)
    try:
        rig.create("acme")
        assert rig.shipper.flush()
        moments = []  # (before, after) each commit
        for i in range(4):
            before = time.time()
            rig.insert("acme", i)
            moments.append((before, time.time()))
            time.sleep(0.01)
        rig.conns.pop("acme").close()
        rig.new_shipper()
        rig.open("acme")
        assert rig.shipper.flush()
        for k in range(3):
            between = (moments[k][1] + moments[k + 1][0]) / 2
            assert rig.restored("acme", between) == list(range(k + 1))
    finally:
        rig.shutdown()


def test_notes_from_many_threads_survive_rotations_each_once(journal: Path) -> None:
    """Notes write outside the journal's lock: a descriptor retired by `rotate` is closed by its
    last writer, so no record is lost, doubled or written into another file."""
    times = CommitTimes(journal)
    per_thread, threads = 400, 8
    stop = threading.Event()

    def rotate() -> None:
        while not stop.is_set():
            times.rotate()

    def note(k: int) -> None:
        for i in range(per_thread):
            times.note(f"t{k}", (k, 7), i + 1, float(i))

    rotator = threading.Thread(target=rotate)
    rotator.start()
    writers = [threading.Thread(target=note, args=(k,)) for k in range(threads)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    rotator.join()
    times.close()
    assert len(list(journal.iterdir())) > 2  # it did rotate meanwhile
    recovered = CommitTimes(journal)
    try:
        for k in range(threads):
            assert recovered.recovered(f"t{k}") == {(k, 7, i + 1): float(i) for i in range(per_thread)}
    finally:
        recovered.close()


def test_each_record_names_the_wal_its_commit_is_in_across_checkpoints(tmp_path: Path) -> None:
    """The hook takes the WAL's salts from the shipped position while the WAL continues it, and
    reads the header after a checkpoint restarted it: every key is the WAL's own."""
    rig = Rig(tmp_path)

    def keys_now() -> set[tuple[int, int, int]]:
        journal = CommitTimes(rig.layout.system_dir / "commit-times")  # reads every file there
        try:
            return set(journal.recovered("acme"))
        finally:
            journal.close()

    def current() -> tuple[int, int, int]:
        header, frames = wal.scan(rig.wal("acme"))
        assert header is not None
        return header.salt1, header.salt2, len(frames)

    try:
        rig.create("acme")
        assert rig.shipper.flush()
        rig.insert("acme", 1)  # salts from the shipped position
        assert current() in keys_now()
        assert rig.shipper.flush()
        entry = rig.shipper.ledger.get("acme")
        assert entry is not None
        rig.shipper.checkpointer.checkpoint("acme", entry, snapshot=False)
        rig.insert("acme", 2)  # a new WAL whose salts the ledger does not know: from its header
        assert current() in keys_now()
        assert rig.shipper.flush()
        rig.insert("acme", 3)  # the new WAL's, from the shipped position again
        assert current() in keys_now()
        assert current()[2] == 2  # the same WAL as commit 2's
    finally:
        rig.shutdown()
