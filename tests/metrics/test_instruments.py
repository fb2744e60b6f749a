"""Every instrument exists and moves when the thing it counts happens: /metrics is parsed with
prometheus-client's parser before and after each action, and the right series must have moved."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support.app import ADMIN, InProcess, in_process

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]

# Settings that make the shipper flush only when a test says so (no background surprises).
QUIET = {"backup_flush_interval": 3600.0, "pool_capacity": 1}


def scrape(app: InProcess) -> Series:
    r = app.client.get("/metrics")
    assert r.status_code == 200
    series: Series = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            series[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return series


def value(series: Series, name: str, **labels: str) -> float:
    return series.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: Series, after: Series, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def wait_for(app: InProcess, name: str, want: float, **labels: str) -> Series:
    """The tenant-state gauges are cached for a second: scrape until they show `want`."""
    for _ in range(60):
        series = scrape(app)
        if value(series, name, **labels) == want:
            return series
        time.sleep(0.05)
    raise AssertionError(f"{name}{labels} never became {want}: {value(series, name, **labels)}")


def ok(r: Any, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json() if r.content else None


def test_no_series_carries_a_tenant_label(app: InProcess) -> None:
    app.create("acme")
    ok(app.query("acme", "select 1"))
    for _name, labels in scrape(app):
        assert "tenant" not in dict(labels)
        assert "acme" not in dict(labels).values()


def test_requests_statements_and_the_pool_move(tmp_path: Path) -> None:
    with in_process(tmp_path / "data", **QUIET) as app:
        before = scrape(app)
        ok(app.client.get("/healthz"))
        after = scrape(app)
        assert moved(before, after, "sqlfleet_http_requests_total", route="/healthz", status="2xx") == 1
        assert moved(before, after, "sqlfleet_http_request_duration_seconds_count", route="/healthz") == 1
        assert value(after, "sqlfleet_pool_capacity") == 1

        app.create("a")
        app.create("b")
        before = scrape(app)
        ok(app.query("a", "create table t(x)"))  # opens a: a miss
        ok(app.query("a", "insert into t values (1)"))  # a is open: a hit
        mid = scrape(app)
        assert moved(before, mid, "sqlfleet_pool_misses_total") == 1
        assert moved(before, mid, "sqlfleet_pool_hits_total") == 1
        assert moved(before, mid, "sqlfleet_pool_open_duration_seconds_count") == 1
        assert moved(before, mid, "sqlfleet_statement_duration_seconds_count") == 2
        assert value(mid, "sqlfleet_pool_open_handles") == 1
        ok(app.query("b", "select 1"))  # capacity 1: a is evicted
        after = scrape(app)
        assert moved(mid, after, "sqlfleet_pool_evictions_total") == 1
        assert moved(mid, after, "sqlfleet_pool_misses_total") == 1
        query_route = "/v1/tenants/{tenant}/query"
        assert moved(mid, after, "sqlfleet_http_requests_total", route=query_route, status="2xx") == 1
        ok(app.client.post("/v1/tenants/nope/query", json={"sql": "select 1"}, headers=ADMIN), 404)
        now = scrape(app)
        assert moved(after, now, "sqlfleet_http_requests_total", route=query_route, status="4xx") == 1


def test_tenants_by_state_and_bytes_on_disk_follow_create_and_delete(app: InProcess) -> None:
    before = scrape(app)
    active = value(before, "sqlfleet_tenants", state="active")
    app.create("acme")
    after = wait_for(app, "sqlfleet_tenants", active + 1, state="active")
    assert moved(before, after, "sqlfleet_tenant_bytes") >= 4096  # at least one page
    ok(app.client.delete("/v1/admin/tenants/acme", headers=ADMIN), 204)
    gone = wait_for(app, "sqlfleet_tenants", active, state="active")
    assert value(gone, "sqlfleet_tenant_bytes") == value(before, "sqlfleet_tenant_bytes")


def test_shipping_snapshots_failures_retries_and_restores_move(tmp_path: Path) -> None:
    replica = tmp_path / "replica"
    with in_process(tmp_path / "data", replica_url=str(replica), **QUIET) as app:
        assert app.server.backups is not None
        shipper = app.server.backups.shipper
        before = scrape(app)
        app.create("acme")  # its first snapshot waits for the next flush
        ok(app.query("acme", "create table t(x)"))
        ok(app.query("acme", "insert into t values (1)"))
        assert value(scrape(app), "sqlfleet_backup_backlog_bytes") > 0
        assert shipper.flush()
        after = scrape(app)
        assert moved(before, after, "sqlfleet_backup_snapshots_total") == 1
        assert moved(before, after, "sqlfleet_backup_segments_uploaded_total") >= 1
        assert moved(before, after, "sqlfleet_backup_uploaded_bytes_total") > 0
        assert moved(before, after, "sqlfleet_backup_lag_seconds_count") == 2  # two commits
        assert value(after, "sqlfleet_backup_backlog_bytes") == 0

        # the replica goes away (a file where its directory was: unwritable even for root)
        replica.rename(tmp_path / "away")
        replica.write_text("not a directory")
        ok(app.query("acme", "insert into t values (2)"))
        assert not shipper.flush()
        failed = scrape(app)
        assert moved(after, failed, "sqlfleet_backup_upload_errors_total") == 1
        assert value(failed, "sqlfleet_backup_backlog_bytes") > 0
        assert value(failed, "sqlfleet_backup_lag_max_seconds") > 0
        replica.unlink()
        (tmp_path / "away").rename(replica)
        assert shipper.flush()
        back = scrape(app)
        assert moved(failed, back, "sqlfleet_backup_upload_retries_total") == 1
        assert moved(failed, back, "sqlfleet_backup_upload_errors_total") == 0
        assert value(back, "sqlfleet_backup_backlog_bytes") == 0

        body = {"timestamp": "latest", "as": "fork"}
        ok(app.client.post("/v1/admin/tenants/acme/restore", json=body, headers=ADMIN))
        restored = scrape(app)
        assert moved(back, restored, "sqlfleet_restores_total", outcome="ok") == 1
        assert moved(back, restored, "sqlfleet_restore_duration_seconds_count") == 1
        assert moved(back, restored, "sqlfleet_restore_commits_applied_total") == 3
        assert value(restored, "sqlfleet_restores_in_progress") == 0
        too_early = {"timestamp": "1999-01-01T00:00:00Z", "as": "old"}
        ok(app.client.post("/v1/admin/tenants/acme/restore", json=too_early, headers=ADMIN), 404)
        assert moved(restored, scrape(app), "sqlfleet_restores_total", outcome="error") == 1


def test_a_rollout_moves_the_rollout_counters(app: InProcess) -> None:
    group = {"name": "shop", "schema": "CREATE TABLE items(id);"}
    ok(app.client.post("/v1/admin/groups", json=group, headers=ADMIN), 201)
    for tenant in ("a", "b"):
        app.create(tenant, group="shop")
    migration = {"name": "0001_tag", "sql": "ALTER TABLE items ADD COLUMN tag;"}
    ok(app.client.post("/v1/admin/groups/shop/migrations", json=migration, headers=ADMIN), 201)
    before = scrape(app)
    rollout = ok(app.client.post("/v1/admin/groups/shop/rollouts", json={}, headers=ADMIN), 202)["id"]
    for _ in range(500):
        snap = ok(app.client.get(f"/v1/admin/groups/shop/rollouts/{rollout}", headers=ADMIN))
        if snap["state"] != "running":
            break
        time.sleep(0.01)
    assert snap["state"] == "completed", snap
    assert moved(before, scrape(app), "sqlfleet_rollout_tenants_total", outcome="migrated") == 2
