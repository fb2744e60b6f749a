"""/readyz: 503 once the replica has refused several flushes in a row, 200 again when it is
back; 503 while shutting down."""

from __future__ import annotations

from pathlib import Path

from router.app import UNREADY_AFTER_FAILED_FLUSHES
from tests.support.app import in_process


def test_readyz_turns_503_after_failed_flushes_and_recovers(tmp_path: Path) -> None:
    replica = tmp_path / "replica"
    with in_process(tmp_path / "data", replica_url=str(replica), backup_flush_interval=3600.0) as app:
        assert app.server.backups is not None
        shipper = app.server.backups.shipper
        app.create("acme")
        assert shipper.flush()
        ready = app.client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["replica"] is True
        assert ready.json()["replica"]["last_success"] > 0

        replica.rename(tmp_path / "away")  # root ignores permissions: a file where the dir was
        replica.write_text("not a directory")
        r = app.query("acme", "create table t(x)")
        assert r.status_code == 200  # writes go on; the backlog is on local disk
        for attempt in range(1, UNREADY_AFTER_FAILED_FLUSHES + 1):
            assert app.client.get("/readyz").status_code == 200, attempt  # a blip is not an outage
            assert not shipper.flush()
        down = app.client.get("/readyz")
        assert down.status_code == 503
        assert down.json()["checks"] == {"data_dir_lock": True, "accepting": True, "replica": False}
        assert down.json()["replica"]["failed_flushes_in_a_row"] == UNREADY_AFTER_FAILED_FLUSHES

        replica.unlink()
        (tmp_path / "away").rename(replica)
        assert shipper.flush()
        assert app.client.get("/readyz").status_code == 200

        app.server.stop_accepting()
        stopping = app.client.get("/readyz")
        assert stopping.status_code == 503 and stopping.json()["checks"]["accepting"] is False


def test_readyz_without_backups_has_no_replica_check(tmp_path: Path) -> None:
    with in_process(tmp_path / "data", backups=False) as app:
        r = app.client.get("/readyz")
        assert r.status_code == 200 and "replica" not in r.json()["checks"]
