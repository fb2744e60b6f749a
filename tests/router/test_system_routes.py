"""/healthz, /readyz, /metrics and /v1/ping."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.app import ADMIN, InProcess, in_process
from tests.support.http_contract import checking


def _samples(app: InProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = app.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def _requests(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], route: str, status: str
) -> float:
    key = ("sqlfleet_http_requests_total", (("route", route), ("status", status)))
    return samples.get(key, 0.0)


def test_healthz_and_readyz(app: InProcess) -> None:
    assert app.client.get("/healthz").json() == {"status": "ok"}
    r = app.client.get("/readyz")
    assert r.status_code == 200
    body = r.json()
    checks = {"data_dir_lock": True, "accepting": True, "replica": True}
    assert (body["ready"], body["checks"]) == (True, checks)


def test_readyz_is_503_once_the_server_stops_accepting(app: InProcess) -> None:
    app.server.stop_accepting()
    r = app.client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["ready"] is False
    assert app.client.get("/healthz").status_code == 200  # alive, just draining


def test_request_counters_move_by_route_and_status_class(app: InProcess) -> None:
    app.create("acme")
    query = "/v1/tenants/{tenant}/query"
    before = _samples(app)
    assert app.query("acme", "select 1").status_code == 200
    assert app.query("acme", "select 1").status_code == 200
    assert app.query("acme", "selec 1").status_code == 400
    assert app.client.post("/v1/tenants/acme/query", json={"sql": "select 1"}).status_code == 401
    assert app.client.get("/no/such/route/xyz").status_code == 404
    after = _samples(app)
    assert _requests(after, query, "2xx") - _requests(before, query, "2xx") == 2
    assert _requests(after, query, "4xx") - _requests(before, query, "4xx") == 2
    assert _requests(after, "unmatched", "4xx") - _requests(before, "unmatched", "4xx") == 1
    latency = ("sqlfleet_http_request_duration_seconds_count", (("route", query),))
    assert after[latency] - before.get(latency, 0) == 4
    # no per-tenant or per-path labels: bounded cardinality
    text = app.client.get("/metrics").text
    assert "acme" not in text and "xyz" not in text


def test_pool_gauges_follow_a_small_pool(tmp_path: Path) -> None:
    with in_process(tmp_path / "data", pool_capacity=2) as app:
        checking(app.client)
        for i in range(5):
            app.create(f"t{i}")
        before = _samples(app)
        for i in range(5):
            assert app.query(f"t{i}", "select 1").status_code == 200
        assert app.query("t4", "select 1").status_code == 200
        after = _samples(app)

        def delta(name: str) -> float:
            return after[(name, ())] - before.get((name, ()), 0.0)

        assert after[("sqlfleet_pool_capacity", ())] == 2
        assert after[("sqlfleet_pool_open_handles", ())] == 2
        assert delta("sqlfleet_pool_misses_total") == 5
        assert delta("sqlfleet_pool_hits_total") == 1
        assert delta("sqlfleet_pool_evictions_total") == 3
        assert delta("sqlfleet_pool_open_duration_seconds_count") == 5
        assert after[("sqlfleet_tenants", (("state", "active"),))] == 5


def test_ping_is_a_bare_json_endpoint(app: InProcess) -> None:
    assert app.client.get("/v1/ping").json() == {"ok": True}
    assert app.client.post("/v1/ping", headers=ADMIN).json() == {"ok": True}
