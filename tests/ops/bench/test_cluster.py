"""`sqlfleet bench cluster` end to end at a tiny size: one node, then two (three ways of
sending the load), the proxy hop, a join and a drain, all in the report; nothing left behind."""

from __future__ import annotations

from pathlib import Path

from tests.support.server import run_bench

VIAS = ("via_n1", "via_both", "routed")


def test_a_tiny_cluster_run_reports_every_phase(tmp_path: Path) -> None:
    args = ["--tenants", "40", "--hot-tenants", "4", "--phase-seconds", "0.5", "--concurrency", "4"]
    proc, r = run_bench(tmp_path, "cluster", *args, "--timeout", "240", timeout=300)
    assert "sqlfleet bench cluster" in proc.stdout
    assert r["tenants"] == 40 and r["moved_on_join"] == r["drained_tenants"] > 0
    for kind in ("hot", "fleet"):
        assert r["one_node"][kind]["req_per_s"] > 0 and r["one_node"][kind]["errors"] == 0
        for via in VIAS:
            phase = r["two_nodes"][f"{kind}_{via}"]
            assert phase["req_per_s"] > 0 and phase["errors"] == 0, (kind, via, phase)
            assert r["ratios"][f"{kind}_{via}"] > 0
    hop = r["proxy_hop"]
    assert hop["via_n1_ms"]["p50"] > 0 and hop["via_n2_ms"]["p50"] > 0
    assert r["join_settle_s"] > 0 and r["drain_s"] > 0
    assert set(r["targets"]) == {
        f"{kind}: two nodes, {via}" for kind in ("hot", "fleet") for via in ("via both", "routed")
    }


def test_a_tiny_failover_run_reports_the_failover_the_restores_and_the_ack_cost(tmp_path: Path) -> None:
    args = [
        "--failover",
        "--tenants",
        "16",
        "--concurrency",
        "4",
        "--ack-slices",
        "2",
        "--ack-slice-seconds",
        "0.5",
    ]
    proc, r = run_bench(tmp_path, "cluster", *args, "--timeout", "240", timeout=300)
    assert "sqlfleet bench cluster-failover" in proc.stdout and "takeover grace 2 s" in proc.stdout
    assert r["lease_ttl_s"] == 3 and r["takeover_grace_s"] == 2.0 and r["failover_target_s"] == 7.0
    assert 0 < r["failover_s"] < 60
    phases = r["phases"]  # where the failover went: the parts add up to it (each polled or logged)
    assert set(phases) == {"lease_expiry_s", "grace_s", "takeover_s", "claim_s", "first_write_s"}
    assert None not in phases.values() and abs(sum(phases.values()) - r["failover_s"]) < 0.1, phases
    assert phases["grace_s"] > 1.0  # the 2 s grace, less how late the poll saw the lease go
    assert r["probe"]["acked_before_kill"] > 0 <= r["probe"]["lost"] <= r["probe"]["acked_before_kill"]
    assert r["restore"]["tenants"] == 16 and r["restore"]["tenants_per_s"] > 0
    for side in ("local", "replica"):
        assert r["ack"][side]["writes_per_s"] > 0
    assert r["restore"]["failed"] == len(r["restore"]["failures"]) or r["restore"]["failed"] > 5
    assert set(r["targets"]) == {
        "kill -9 of an owner -> first write of its tenant through another node",
        "dead node's tenants not served after it",
    }
