"""`sqlfleet bench isolation` tiny: two attackers, phases of a few seconds, a real server."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from ops.bench.attacks import KINDS
from ops.bench.isolation import PHASES, isolation
from tests.support.server import run_bench

LATENCY = {"p50", "p99", "mean", "max"}
PEAKS = {"peak_rss_bytes", "peak_data_bytes", "peak_replica_bytes", "end_data_bytes", "end_replica_bytes"}


def test_tiny_run_reports_the_victim_alone_attacked_and_alone_again(tmp_path: Path) -> None:
    load = "--attackers 2 --seconds 2 --rate 20 --concurrency 4 --slow-bodies 1 --timeout 150"
    proc, r = run_bench(tmp_path, "isolation", *load.split(), timeout=240)
    assert "sqlfleet bench isolation" in proc.stdout
    assert r["bench"] == "isolation" and r["attackers"] == 2 and r["server_exit_code"] == 0
    assert list(r["phases"]) == list(PHASES)
    for name, phase in r["phases"].items():
        # every victim request of every phase was sent and succeeded, the attack's included
        assert phase["complete"], name
        assert (phase["requests"], phase["errors"], phase["statuses"]) == (40, 0, {"200": 40}), name
        assert set(phase["latency_ms"]) == LATENCY and set(phase) >= PEAKS
        assert 10 << 20 < phase["peak_rss_bytes"] < 2 << 30
        assert 0 <= phase["loop_wait_seconds"] < 30  # the event loop's run-queue wait (Linux)
    assert set(r["quiet_latency_ms"]) == LATENCY and r["p99_ratio"] > 0
    rss = r["rss"]
    assert rss["growth_bytes"] == rss["attack_peak_bytes"] - rss["quiet_peak_bytes"]
    disk = r["disk"]
    assert disk["writing_tenants"] == 3 and disk["bound_bytes"] > 3 * disk["bound_per_tenant_bytes"]
    assert disk["growth"]["peak_bytes"] == disk["growth"]["data_bytes"] + disk["growth"]["replica_bytes"]
    # the attackers ran (each starts at another kind) and got no answer the server should not give
    assert r["attacks"] and set(r["attacks"]) <= set(KINDS) | {"slow_body"}
    assert all(a["runs"] >= 1 for a in r["attacks"].values())
    assert r["attack_unexpected_statuses"] == {}
    targets = {"victim p99 attack / quiet", "server peak RSS growth", "disk growth, peak: data + replica"}
    assert targets <= set(r["targets"])


def test_unknown_attack_kind_is_refused() -> None:
    result = CliRunner().invoke(isolation, ["--attacks", "slow_like,nope"])
    assert result.exit_code == 2 and "unknown: nope" in result.output
